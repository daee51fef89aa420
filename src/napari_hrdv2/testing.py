"""Random-init backbones for tests, benchmarks and docs (no network, no real weights).

The models are saved with ``save_pretrained`` into a folder, which is then passed as
``FeatureConfig(backbone=folder)`` exactly like a user's local weights, so everything after this
point runs the user's code path. Random weights give the speed and memory of the real model shape,
never DINOv2 feature quality. torch and transformers are imported only when a model is built.
"""

from __future__ import annotations

from pathlib import Path


def save_random_dinov2(
    folder: str | Path,
    *,
    hidden: int = 128,
    layers: int = 2,
    heads: int = 2,
    mlp_ratio: int = 2,
    registers: int = 0,
    image_size: int = 224,
    seed: int = 0,
    perturb: bool = True,
) -> Path:
    """Save a random-init DINOv2 (patch 14; with ``registers`` register tokens) into ``folder``.

    ``perturb=True`` moves the parameters that random init leaves at a trivial value (final layer
    norm at identity, CLS token) so that tests see them; benchmarks keep the plain init. The
    defaults are the tiny test model (128 dims, 2 layers, 2 heads of 64); :func:`save_random_vits14`
    is the DINOv2 ViT-S/14 shape. The same arguments always give the same weights.
    """
    import torch
    from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    torch.manual_seed(seed)
    common = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, mlp_ratio=mlp_ratio,
                  patch_size=14, image_size=image_size)  # fmt: skip
    if registers:
        model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(num_register_tokens=registers, **common))
    else:
        model = Dinov2Model(Dinov2Config(**common))
    if perturb:
        with torch.no_grad():
            model.layernorm.weight.uniform_(0.5, 1.5)
            model.layernorm.bias.normal_(0, 0.1)
            model.embeddings.cls_token.normal_(0, 0.5)
    model.eval().save_pretrained(folder)
    return Path(folder)


def save_random_vits14(folder: str | Path, *, seed: int = 0) -> Path:
    """Save a random-init DINOv2 ViT-S/14 (384 dims, 12 blocks, 6 heads, 518 px native grid), unperturbed."""
    return save_random_dinov2(
        folder, hidden=384, layers=12, heads=6, mlp_ratio=4, image_size=518, seed=seed, perturb=False
    )


def save_random_dinov3(
    folder: str | Path,
    *,
    hidden: int = 128,
    layers: int = 2,
    heads: int = 2,
    intermediate: int | None = None,
    registers: int = 4,
    gated: bool = False,
    seed: int = 1,
    perturb: bool = True,
) -> Path:
    """Save a random-init DINOv3 ViT (patch 16, RoPE, ``registers`` register tokens) into ``folder``.

    ``perturb=True`` adds noise to every parameter (random init leaves norms at identity, layer
    scale at 1 and biases at 0, which would hide mistakes in their handling); benchmarks keep the
    plain init. :func:`save_random_vits16` is the DINOv3 ViT-S/16 shape.
    """
    import torch
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    torch.manual_seed(seed)
    config = DINOv3ViTConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                             intermediate_size=intermediate or 2 * hidden, num_register_tokens=registers,
                             patch_size=16, image_size=224, use_gated_mlp=gated)  # fmt: skip
    model = DINOv3ViTModel(config)
    if perturb:
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "mask_token" not in name:
                    parameter.add_(0.2 * torch.randn_like(parameter))
    model.eval().save_pretrained(folder)
    return Path(folder)


def save_random_vits16(folder: str | Path, *, seed: int = 1) -> Path:
    """Save a random-init DINOv3 ViT-S/16 (384 dims, 12 blocks, 6 heads, 4 registers), unperturbed."""
    return save_random_dinov3(folder, hidden=384, layers=12, heads=6, intermediate=1536, seed=seed, perturb=False)
