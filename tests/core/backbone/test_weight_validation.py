"""Every weights file is validated: float finite tensors, config.json fits the weights, clear lines for
our own files given as a backbone, relative names from elsewhere and partial downloads."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from napari_hrdv2.core.backbone.loading import load_backbone
from napari_hrdv2.core.errors import InputError, WeightsNotFoundError
from napari_hrdv2.core.segmentation.segmenter import LinearSegmenter

KEY = "embeddings.cls_token"


def edited_folder(tiny_backbone, tmp_path, change) -> str:
    folder = tmp_path / "edited"
    shutil.copytree(tiny_backbone, folder)
    state = load_file(str(folder / "model.safetensors"))
    change(state)
    save_file(
        {k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"), metadata={"format": "pt"}
    )
    return str(folder)


def test_nan_in_a_transformers_folder_is_refused(tiny_backbone, tmp_path):
    folder = edited_folder(tiny_backbone, tmp_path, lambda s: s[KEY].fill_(float("nan")))
    with pytest.raises(InputError, match=f"'{KEY}' holds NaN or infinite"):
        load_backbone(folder, cache=False)


def test_int8_in_a_transformers_folder_is_refused(tiny_backbone, tmp_path):
    def to_int8(state):
        state["layernorm.weight"] = state["layernorm.weight"].to(torch.int8)

    with pytest.raises(InputError, match="dtype int8.*float weights"):
        load_backbone(edited_folder(tiny_backbone, tmp_path, to_int8), cache=False)


def test_int8_in_a_checkpoint_file_is_refused(tiny_backbone, tmp_path):
    state = load_file(str(f"{tiny_backbone}/model.safetensors"))
    state["layernorm.weight"] = state["layernorm.weight"].to(torch.int8)
    path = tmp_path / "quantised.safetensors"
    save_file(state, str(path))
    with pytest.raises(InputError, match="dtype int8"):
        load_backbone(str(path), cache=False)


def test_config_that_disagrees_with_the_weights_is_one_line(tiny_backbone, tmp_path, capsys):
    folder = tmp_path / "mixed"
    shutil.copytree(tiny_backbone, folder)
    config = json.loads((folder / "config.json").read_text())
    config["hidden_size"] = 64
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="do not fit its config.json") as info:
        load_backbone(str(folder), cache=False)
    assert "\n" not in str(info.value) and "ignore_mismatched_sizes" not in str(info.value)
    assert "MISMATCH" not in capsys.readouterr().err


def test_a_model_file_given_as_the_backbone_says_so(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.zeros((8, 8), np.uint8)
    labels[:, :3], labels[:, -3:] = 1, 2
    path = LinearSegmenter().fit(rng.normal(size=(3, 8, 8)).astype(np.float32), labels).save(tmp_path / "m.hrdv2")
    with pytest.raises(InputError, match="segmentation model file, not backbone weights") as info:
        load_backbone(str(path), cache=False)
    assert "weights_only" not in str(info.value)


def test_a_relative_backbone_from_elsewhere_hints_at_backbone_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="--backbone-path"):
        load_backbone("tiny", cache=False)
    with pytest.raises(WeightsNotFoundError, match="--backbone-path"):
        load_backbone("../weights/dir/tiny.pth", cache=False)


def test_a_truncated_file_in_the_hugging_face_cache_is_a_partial_download(tiny_backbone, tmp_path):
    snapshot = tmp_path / "hub" / "models--facebook--dinov2-small" / "snapshots" / "0123abcd"
    shutil.copytree(tiny_backbone, snapshot)
    data = (snapshot / "model.safetensors").read_bytes()
    (snapshot / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsNotFoundError, match="partial download.*hf download facebook/dinov2-small --force"):
        load_backbone(str(snapshot), cache=False)
