"""Checkpoint reading rules on small state dicts: wrappers and prefixes, layouts, tensor checks, splits, the
architecture read from a tiny official DINOv2 checkpoint, and the messages for unreadable files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from napari_hrdv2.core.backbone import checkpoints
from napari_hrdv2.core.backbone.checkpoints import (
    FLOAT_DTYPES,
    IGNORED_PREFIXES,
    check_weight_tensor,
    detect_layout,
    infer_architecture,
    read_state_dict,
    to_canonical,
    unreadable_weights_message,
)
from napari_hrdv2.core.errors import InputError, WeightsNotFoundError


def message(call, *args, error=InputError, **kwargs) -> str:
    with pytest.raises(error) as caught:
        call(*args, **kwargs)
    return str(caught.value)


def test_weight_tensors_must_be_finite_floats():
    assert (torch.float32, torch.float16, torch.bfloat16, torch.float64) == FLOAT_DTYPES
    for dtype in FLOAT_DTYPES:
        check_weight_tensor("w", torch.zeros(2, dtype=dtype))
    assert message(check_weight_tensor, "blocks.0.w", torch.zeros(2, dtype=torch.int8)) == (
        "Tensor 'blocks.0.w' has dtype int8: napari-hrdv2 reads float weights (float32, float16, bfloat16); "
        "quantised or integer checkpoints are not supported. Use the original float weights."
    )
    assert message(check_weight_tensor, "w", torch.tensor([1.0, float("inf")])) == (
        "Tensor 'w' holds NaN or infinite values: the weights are damaged. Download or copy them again."
    )


def test_unreadable_files_say_how_to_get_them_again(tmp_path):
    plain = unreadable_weights_message(tmp_path / "w.pth", ValueError("x" * 300))
    assert plain.startswith(f"Could not read '{tmp_path / 'w.pth'}' (ValueError: {'x' * 200}): the file is truncated")
    assert "x" * 201 not in plain and plain.endswith("Copy or download it again.")
    cached = tmp_path / "models--facebook--dinov2-small" / "snapshots" / "abc" / "model.safetensors"
    text = unreadable_weights_message(cached, OSError("short"))
    assert text == (
        f"'{cached}' in the Hugging Face cache is truncated or damaged (OSError: short): most likely a partial "
        "download. Download it again with `hf download facebook/dinov2-small --force-download`."
    )


def test_state_dicts_are_unwrapped_and_unprefixed(tmp_path):
    tensor = torch.ones(2)
    for wrapper in ("model", "state_dict", "teacher"):
        torch.save({wrapper: {"module.cls_token": tensor}}, tmp_path / "w.pth")
        assert list(read_state_dict(tmp_path / "w.pth")) == ["cls_token"], wrapper
    torch.save({"backbone.a": tensor, "teacher.backbone.b": tensor, "c": tensor}, tmp_path / "w.pth")
    assert sorted(read_state_dict(tmp_path / "w.pth")) == ["a", "b", "c"]
    from safetensors.torch import save_file

    save_file({"backbone.x": tensor}, str(tmp_path / "w.safetensors"))
    assert list(read_state_dict(tmp_path / "w.safetensors")) == ["x"]
    torch.save({"a": 1}, tmp_path / "numbers.pth")
    assert message(read_state_dict, tmp_path / "numbers.pth", error=WeightsNotFoundError) == (
        f"'{tmp_path / 'numbers.pth'}' does not hold a flat state dict of tensors."
    )
    torch.save({}, tmp_path / "empty.pth")
    assert "does not hold a flat state dict" in message(
        read_state_dict, tmp_path / "empty.pth", error=WeightsNotFoundError
    )
    (tmp_path / "junk.pth").write_bytes(b"junk")
    assert message(read_state_dict, tmp_path / "junk.pth", error=WeightsNotFoundError).startswith(
        f"Could not read '{tmp_path / 'junk.pth'}' as a PyTorch state dict ("
    )
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    assert "the file is truncated or damaged" in message(
        read_state_dict, tmp_path / "junk.safetensors", error=WeightsNotFoundError
    )


def test_layouts_are_told_apart_by_their_tensor_names():
    t = torch.zeros(1)
    assert detect_layout({"embeddings.cls_token": t}) == "transformers"
    assert detect_layout({"model.layer.0.x": t}) == "transformers"
    assert detect_layout({"dinov2_with_registers.x": t}) == "transformers"
    assert detect_layout({"storage_tokens": t, "pos_embed": t}) == "dinov3"
    assert detect_layout({"blocks.0.attn.qkv.bias_mask": t}) == "dinov3"
    assert detect_layout({"blocks.0.gamma_1": t}) == "timm-dinov3"
    assert detect_layout({"blocks.0.attn.q_bias": t}) == "timm-dinov3"
    assert detect_layout({"pos_embed": t}) == "dinov2" and detect_layout({"blocks.3.norm1.weight": t}) == "dinov2"
    assert message(detect_layout, {"f": t, "e": t, "d": t, "c": t, "b": t, "a": t}) == (
        "This file is not a DINOv2 or DINOv3 checkpoint (no cls_token, pos_embed or blocks.* tensors); first "
        "tensors: ['a', 'b', 'c', 'd', 'e']."
    )
    assert "head." in IGNORED_PREFIXES and "dino_head." in IGNORED_PREFIXES


def test_split_parts_and_its_message():
    value = torch.arange(6.0)
    assert checkpoints._split(value, None, "x") is value
    assert checkpoints._split(value, (1, 3), "x").tolist() == [2.0, 3.0]
    assert message(checkpoints._split, torch.zeros(4, 2), (0, 3), "qkv") == (
        "Tensor 'qkv' of shape (4, 2) cannot be split into 3 equal parts."
    )


@pytest.fixture(scope="module")
def official(tiny_backbone):
    from transformers import AutoModel

    from references import transformers_to_official

    return transformers_to_official(AutoModel.from_pretrained(tiny_backbone).state_dict())


def test_architecture_of_a_tiny_official_checkpoint(official, tiny_backbone):
    import json

    config = json.loads((Path(tiny_backbone) / "config.json").read_text())
    canonical = to_canonical(official)
    assert canonical.layout == "dinov2" and canonical.family == "dinov2"
    arch = infer_architecture(canonical)
    assert arch.family == "dinov2" and arch.embed_dim == config["hidden_size"]
    assert arch.depth == config["num_hidden_layers"] and arch.patch_size == config["patch_size"] == 14
    assert (
        arch.num_registers == 0 and not arch.swiglu and arch.mlp_hidden == config["hidden_size"] * config["mlp_ratio"]
    )
    assert arch.num_heads == max(1, config["hidden_size"] // 64)  # default head width 64
    assert infer_architecture(canonical, heads=config["num_attention_heads"]).num_heads == config["num_attention_heads"]
    assert arch.position_grid**2 + 1 == official["pos_embed"].shape[1]
    assert arch.query_bias and arch.key_bias and arch.value_bias and arch.rope_theta == 100.0
    assert message(infer_architecture, canonical, heads=3 if config["hidden_size"] % 3 else 7).startswith("Width ")
    broken = dict(official)
    broken["pos_embed"] = broken["pos_embed"][:, :-2]  # neither 1 + g * g rows nor g * g (timm)
    assert message(infer_architecture, to_canonical(broken)).endswith("rows: not 1 + a square grid.")
    timm_table = dict(official)  # timm's no_embed_class: g * g rows, the CLS position lives in cls_token
    timm_table["pos_embed"] = official["pos_embed"][:, 1:]
    table = to_canonical(timm_table).tensors["pos_embed"]
    assert table.shape == official["pos_embed"].shape and not table[:, 0].any()
    assert torch.equal(table[:, 1:], official["pos_embed"][:, 1:])
    no_blocks = {k: v for k, v in official.items() if not k.startswith("blocks.")}
    assert message(infer_architecture, to_canonical(no_blocks)) == (
        "The checkpoint has no transformer blocks (blocks.0.* tensors)."
    )
    bad_patch = dict(official)
    bad_patch["patch_embed.proj.weight"] = bad_patch["patch_embed.proj.weight"][..., :-1]
    assert "is not a square patch convolution" in message(infer_architecture, to_canonical(bad_patch))
