"""Every checkpoint layout loads onto the right transformers model; bad files get errors naming the tensor."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import napari_hrdv2 as hr
from napari_hrdv2.core.backbone.loading import load_backbone
from napari_hrdv2.core.backbone.vit import forward_tokens
from vit_reference import random_timm_tensors, timm_vit_forward


def _timm_folder(path: Path, tensors: dict[str, torch.Tensor], architecture: str, **pretrained) -> Path:
    from safetensors.torch import save_file

    path.mkdir()
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "model.safetensors"))
    config = {"architecture": architecture, "num_classes": 0, "pretrained_cfg": {"tag": "lvd142m", **pretrained}}
    (path / "config.json").write_text(json.dumps(config))
    return path


TIMM_CASES = {
    "dinov2": (dict(patch=14, grid=4), "vit_small_patch14_dinov2", 1e-6),
    "dinov2_reg4": (dict(patch=14, grid=4, registers=4), "vit_small_patch14_reg4_dinov2", 1e-6),
    "dinov2_swiglu_packed": (dict(patch=14, grid=4, swiglu_packed=True), "vit_giant_patch14_dinov2", 1e-6),
    "dinov3": (dict(patch=16, registers=4, dinov3=True), "vit_small_patch16_dinov3_qkvb", 1e-5),
}


@pytest.mark.parametrize("case", list(TIMM_CASES))
def test_timm_safetensors_equal_an_independent_forward_of_their_tensors(case, tmp_path):
    options, architecture, eps = TIMM_CASES[case]
    tensors = random_timm_tensors(**options)
    mean, std = (0.3, 0.4, 0.5), (0.2, 0.25, 0.3)
    folder = _timm_folder(tmp_path / case, tensors, architecture, mean=list(mean), std=list(std))
    backbone = load_backbone(str(folder), cache=False)
    patch = options["patch"]
    assert (backbone.patch_size, backbone.num_registers, backbone.embed_dim) == (
        patch,
        options.get("registers", 0),
        128,
    )
    assert backbone.mean == mean and backbone.std == std  # normalisation from timm's pretrained_cfg
    pixels = torch.randn(1, 3, 4 * patch, 4 * patch, generator=torch.Generator().manual_seed(1))
    strides = [patch, patch // 2] if options.get("dinov3") else [patch]  # RoPE with overlapping patches too
    for stride in strides:
        padded = pixels[..., : patch + 6 * stride, : patch + 5 * stride] if stride != patch else pixels
        with torch.no_grad():
            tokens, attention = forward_tokens(backbone, padded, stride=stride)
        expected_tokens, expected_attention = timm_vit_forward(
            tensors, padded, patch=patch, heads=2, eps=eps, stride=stride
        )
        assert tokens.shape == expected_tokens.shape
        np.testing.assert_allclose(tokens.numpy(), expected_tokens.numpy(), atol=2e-5, rtol=1e-4)
        np.testing.assert_allclose(attention.numpy(), expected_attention.numpy(), atol=1e-6)


def transformers_to_official_dinov3(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers DINOv3 state dict in the official torch.hub layout (test-side writer)."""
    out = {
        "cls_token": state["embeddings.cls_token"], "storage_tokens": state["embeddings.register_tokens"],
        "mask_token": state["embeddings.mask_token"].reshape(1, -1),
        "patch_embed.proj.weight": state["embeddings.patch_embeddings.weight"],
        "patch_embed.proj.bias": state["embeddings.patch_embeddings.bias"],
        "norm.weight": state["norm.weight"], "norm.bias": state["norm.bias"],
        "rope_embed.periods": 100.0 ** (2 * torch.arange(16) / 32),
    }  # fmt: skip
    depth = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("model.layer."))
    for i in range(depth):
        layer, block = f"model.layer.{i}.", f"blocks.{i}."
        attention = layer + "attention."
        out[block + "attn.qkv.weight"] = torch.cat([state[f"{attention}{n}_proj.weight"] for n in "qkv"])
        q_bias, v_bias = state[attention + "q_proj.bias"], state[attention + "v_proj.bias"]
        out[block + "attn.qkv.bias"] = torch.cat([q_bias, torch.full_like(q_bias, 7.0), v_bias])  # masked k bias
        out[block + "attn.qkv.bias_mask"] = torch.cat(
            [torch.ones_like(q_bias), torch.zeros_like(q_bias), torch.ones_like(v_bias)]
        )
        for suffix in ("weight", "bias"):
            out[f"{block}attn.proj.{suffix}"] = state[f"{attention}o_proj.{suffix}"]
            out[f"{block}mlp.fc1.{suffix}"] = state[f"{layer}mlp.up_proj.{suffix}"]
            out[f"{block}mlp.fc2.{suffix}"] = state[f"{layer}mlp.down_proj.{suffix}"]
            for norm in ("norm1", "norm2"):
                out[f"{block}{norm}.{suffix}"] = state[f"{layer}{norm}.{suffix}"]
        out[block + "ls1.gamma"] = state[layer + "layer_scale1.lambda1"]
        out[block + "ls2.gamma"] = state[layer + "layer_scale2.lambda1"]
    return out


def test_official_dinov3_pth_equals_its_transformers_model(tiny_dinov3, tmp_path):
    from transformers import DINOv3ViTModel

    model = DINOv3ViTModel.from_pretrained(tiny_dinov3).eval()
    checkpoint = tmp_path / "dinov3_vits16_pretrain_lvd1689m-tiny.pth"
    torch.save(transformers_to_official_dinov3(model.state_dict()), checkpoint)
    backbone = load_backbone(str(checkpoint), cache=False)
    assert (backbone.family, backbone.patch_size, backbone.num_registers, backbone.num_heads) == ("dinov3", 16, 4, 2)
    pixels = torch.randn(1, 3, 48, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(pixel_values=pixels).last_hidden_state
        loaded = backbone.model(pixel_values=pixels).last_hidden_state
    torch.testing.assert_close(loaded, expected, atol=1e-6, rtol=1e-6)
    for name, value in model.state_dict().items():  # every tensor, not only those the output is sensitive to
        torch.testing.assert_close(backbone.model.state_dict()[name], value, msg=name)


def test_transformers_state_dict_file_loads(tiny_dinov3, tiny_backbone_registers, tmp_path):
    from safetensors.torch import save_file
    from transformers import AutoModel

    for folder in (tiny_dinov3, tiny_backbone_registers):
        model = AutoModel.from_pretrained(folder).eval()
        path = tmp_path / (Path(folder).name + ".safetensors")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        loaded = load_backbone(str(path), cache=False).model
        for name, value in model.state_dict().items():
            torch.testing.assert_close(loaded.state_dict()[name], value, msg=name)


# ---------------------------------------------------------------- bad checkpoints


@pytest.fixture
def official_dinov2(tiny_backbone):
    from transformers import AutoModel

    from references import transformers_to_official

    return transformers_to_official(AutoModel.from_pretrained(tiny_backbone).state_dict())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.pop("blocks.0.attn.qkv.weight"), r"no tensor 'blocks\.0\.attn\.qkv\.weight'"),
        (lambda s: s.pop("blocks.1.ls2.gamma"), r"no tensor 'blocks\.1\.ls2\.gamma'"),
        (lambda s: s.pop("norm.bias"), r"'norm\.bias'"),
        (lambda s: s.__setitem__("blocks.1.attn.proj.weight", torch.zeros(128, 64)), r"'blocks\.1\.attn\.proj\.weight' has shape \(128, 64\)"),
        (lambda s: s.__setitem__("blocks.0.attn.gate.weight", torch.zeros(3)), r"Unexpected tensor 'blocks\.0\.attn\.gate\.weight'"),
        (lambda s: s.__setitem__("pos_embed_extra", torch.zeros(3)), r"Unexpected tensor 'pos_embed_extra'"),
        (lambda s: s.__setitem__("blocks.0.norm1.weight", torch.full((128,), float("nan"))), r"'blocks\.0\.norm1\.weight' holds NaN"),
    ],
    ids=["missing-first-block-qkv", "missing-layer-scale", "missing-final-norm", "wrong-shape", "extra-block-key",
         "extra-top-key", "nan"],
)  # fmt: skip
def test_bad_checkpoint_names_the_tensor(official_dinov2, tmp_path, change, message):
    change(official_dinov2)
    path = tmp_path / "bad.pth"
    torch.save(official_dinov2, path)
    with pytest.raises(hr.InputError, match=message):
        load_backbone(str(path), cache=False)


def test_checkpoint_missing_its_last_block_is_refused(tmp_path):
    """A ViT-S/14 checkpoint whose last block is gone must not load as an 11-block ViT."""
    state = {"cls_token": torch.zeros(1, 1, 384), "pos_embed": torch.zeros(1, 1 + 16, 384),
             "patch_embed.proj.weight": torch.zeros(384, 3, 14, 14)}  # fmt: skip
    roles = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.proj.weight", "ls1.gamma", "norm2.weight",
             "norm2.bias", "ls2.gamma", "mlp.fc1.weight", "mlp.fc2.weight"]  # fmt: skip
    state.update({f"blocks.{i}.{role}": torch.zeros(3) for i in range(11) for role in roles})
    torch.save(state, tmp_path / "dinov2_vits14_pretrain.pth")
    with pytest.raises(hr.InputError, match=r"11 blocks.*has 12: blocks\.11\.\* are missing"):
        load_backbone(str(tmp_path / "dinov2_vits14_pretrain.pth"), cache=False)


def test_folder_with_missing_weights_is_refused(tiny_dinov3, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "partial"
    shutil.copytree(tiny_dinov3, folder)
    tensors = load_file(str(folder / "model.safetensors"))
    tensors.pop(next(k for k in tensors if k.endswith("layer.1.attention.k_proj.weight")))
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(hr.InputError, match=r"missing tensor.*layer\.1\.attention\.k_proj\.weight"):
        load_backbone(str(folder), cache=False)


# ---------------------------------------------------------------- security and names


@pytest.mark.parametrize("model_type", ["evil_model", "dinov2"])
def test_remote_code_folder_is_refused_before_any_code_runs(tmp_path, model_type, monkeypatch):
    folder = tmp_path / "remote-code"
    folder.mkdir()
    marker = tmp_path / "MARKER"
    payload = f"open({str(marker)!r}, 'w').write('code ran')\n"
    (folder / "modeling_evil.py").write_text(payload + "class EvilModel: pass\n")
    (folder / "configuration_evil.py").write_text(payload + "class EvilConfig: pass\n")
    config = {"model_type": model_type, "auto_map": {"AutoConfig": "configuration_evil.EvilConfig",
                                                     "AutoModel": "modeling_evil.EvilModel"}}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    torch.save({"x": torch.zeros(1)}, folder / "pytorch_model.bin")
    monkeypatch.setattr("builtins.input", lambda *a: pytest.fail("transformers asked a question"))
    with pytest.raises(hr.InputError, match="never runs code"):
        load_backbone(str(folder), cache=False)
    with pytest.raises(hr.InputError, match="never runs code"):
        hr.Featurizer(hr.FeatureConfig(backbone=str(folder), device="cpu")).encode(np.zeros((32, 32), np.float32))
    assert not marker.exists()


def test_other_model_types_are_refused_by_name(tmp_path):
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(hr.InputError, match="'bert' model"):
        load_backbone(str(tmp_path / "bert"), cache=False)


def test_a_preset_name_wins_over_a_folder_of_that_name(tiny_backbone, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_backbone, tmp_path / "small")
    with pytest.raises(hr.WeightsNotFoundError, match="facebook/dinov2-small"):  # the preset, not ./small
        load_backbone("small", cache=False)
    assert load_backbone("./small", cache=False).embed_dim == 128  # a path that looks like one


class _Payload:
    """Unpickling this object would create the marker file (what a malicious .pth does)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_payload_checkpoint_runs_no_code(tmp_path):
    import pickle

    marker = tmp_path / "MARKER"
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    with open(path, "wb") as handle:
        pickle.dump({"cls_token": _Payload(str(marker))}, handle)
    torch.save({"cls_token": _Payload(str(marker))}, tmp_path / "zip.pth")
    for candidate in (path, tmp_path / "zip.pth"):
        with pytest.raises(hr.WeightsNotFoundError, match="state dict"):
            load_backbone(str(candidate), cache=False)
    assert not marker.exists()
