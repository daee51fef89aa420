"""Independent reference computations shared by tests in several folders (no product code is reused here).

- :func:`reference_hrdv2`: the HR-Dv2 definition, literally, with full-resolution maps;
- :func:`smooth_noise`: a textured test image where every patch is distinctive;
- :func:`transformers_to_official`: a transformers DINOv2 state dict in the official torch.hub layout.
"""

from __future__ import annotations

import numpy as np
import torch

import napari_hrdv2 as hr
from napari_hrdv2.core.backbone.vit import forward_tokens
from napari_hrdv2.core.features.encoding import pad_to_grid
from napari_hrdv2.core.features.preprocess import to_rgb01


def interp_axis(values: np.ndarray, centres: np.ndarray, n_pixels: int, axis: int, nearest: bool) -> np.ndarray:
    """Independent 1D resize: linear interpolation between token centres (edges clamped) via np.interp."""
    pixels = np.arange(n_pixels, dtype=np.float64)
    moved = np.moveaxis(values, axis, -1)
    if nearest:
        spacing = centres[1] - centres[0] if len(centres) > 1 else 1.0
        index = np.clip(np.floor((pixels - centres[0]) / spacing + 0.5), 0, len(centres) - 1).astype(int)
        out = moved[..., index]
    else:
        flat = moved.reshape(-1, moved.shape[-1])
        out = np.stack([np.interp(pixels, centres, row) for row in flat]).reshape(*moved.shape[:-1], n_pixels)
    return np.moveaxis(out, -1, axis)


def reference_hrdv2(featurizer: hr.Featurizer, image: np.ndarray, *, attention: bool = False) -> np.ndarray:
    """The issue's definition, literally: mean over T of T^-1(resize(features(T(x)))), full-res maps."""
    config = featurizer.config
    backbone = featurizer.backbone
    patch, stride = backbone.patch_size, featurizer.stride
    rgb = torch.from_numpy(to_rgb01(image, normalize=config.normalize))
    pixels = (rgb.permute(2, 0, 1) - torch.tensor(backbone.mean).view(3, 1, 1)) / torch.tensor(backbone.std).view(
        3, 1, 1
    )
    total = 0.0
    for transform in config.transforms:
        copy = transform.apply(pixels)
        height, width = copy.shape[-2:]  # W x H for 90/270-degree rotations
        padded = pad_to_grid(copy, patch_size=patch, stride=stride)
        with torch.no_grad():
            tokens, cls_attention = forward_tokens(backbone, padded[None], stride=stride)
        low = (cls_attention if attention else tokens)[0].double().numpy()
        rows = np.arange(low.shape[1]) * stride + (patch - 1) / 2
        cols = np.arange(low.shape[2]) * stride + (patch - 1) / 2
        nearest = config.resize == "nearest"
        full = interp_axis(interp_axis(low, rows, height, 1, nearest), cols, width, 2, nearest)
        total = total + transform.invert(torch.from_numpy(full)).numpy()
    return (total / len(config.transforms)).astype(np.float32)


def smooth_noise(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A textured image with structure at every position (so each patch is distinctive)."""
    from scipy import ndimage

    image = ndimage.gaussian_filter(np.random.default_rng(seed).random(shape), 1.5)
    return np.round((image - image.min()) / (image.max() - image.min()) * 255).astype(np.uint8)


def transformers_to_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Write a transformers DINOv2 state dict in the official torch.hub layout (test-only inverse)."""
    out = {
        "cls_token": state["embeddings.cls_token"],
        "pos_embed": state["embeddings.position_embeddings"],
        "mask_token": state["embeddings.mask_token"],
        "patch_embed.proj.weight": state["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": state["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": state["layernorm.weight"],
        "norm.bias": state["layernorm.bias"],
    }
    if "embeddings.register_tokens" in state:
        out["register_tokens"] = state["embeddings.register_tokens"]
    depth = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.layer."))
    for i in range(depth):
        layer, block = f"encoder.layer.{i}.", f"blocks.{i}."
        for suffix in ("weight", "bias"):
            out[f"{block}attn.qkv.{suffix}"] = torch.cat(
                [state[f"{layer}attention.{n}_proj.{suffix}"] for n in ("q", "k", "v")]
            )
            out[f"{block}attn.proj.{suffix}"] = state[f"{layer}attention.o_proj.{suffix}"]
            for part in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                out[f"{block}{part}.{suffix}"] = state[f"{layer}{part}.{suffix}"]
        out[f"{block}ls1.gamma"] = state[f"{layer}layer_scale1.lambda1"]
        out[f"{block}ls2.gamma"] = state[f"{layer}layer_scale2.lambda1"]
    out["head.weight"] = torch.zeros(3)  # extra keys in real checkpoints are ignored
    return out
