"""Backbone presets and aliases, weight fingerprints with exact values, family names, and the pure rules of
loading (what looks like a path, offline switch, folder configs, normalisation, and each message's facts)."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import torch

from napari_hrdv2.core.backbone import identity, loading
from napari_hrdv2.core.backbone.identity import (
    backbone_family_of,
    backbone_fingerprint,
    family_title,
    fingerprint_hash,
    same_weights,
)
from napari_hrdv2.core.backbone.loading import hub_offline, looks_like_path, read_folder_config, relative_path_hint
from napari_hrdv2.core.backbone.registry import (
    BACKBONES,
    FAMILIES,
    IMAGENET_MEAN,
    SATELLITE_MEAN,
    backbone_family,
    backbone_names,
    find_spec,
)
from napari_hrdv2.core.errors import InputError, WeightsNotFoundError


def message(call, *args, error=InputError, **kwargs) -> str:
    with pytest.raises(error) as caught:
        call(*args, **kwargs)
    return str(caught.value)


def test_presets_their_facts_and_aliases():
    assert backbone_names("dinov2") == ["dinov2_vits14", "dinov2_vitb14", "dinov2_vitl14", "dinov2_vitg14"]
    assert backbone_names("dinov2_reg") == [f"dinov2_vit{s}14_reg" for s in "sblg"]
    assert backbone_names("dinov3") == [
        "dinov3_vits16", "dinov3_vits16plus", "dinov3_vitb16", "dinov3_vitl16", "dinov3_vith16plus",
        "dinov3_vitl16_sat493m",
    ]  # fmt: skip
    assert len(backbone_names()) == len(BACKBONES) == 14 and backbone_names("other") == []
    small = find_spec("dinov2_vits14")
    assert (small.hf_id, small.embed_dim, small.depth, small.num_heads) == ("facebook/dinov2-small", 384, 12, 6)
    assert (small.num_registers, small.patch_size, small.family, small.gated) == (0, 14, "dinov2", False)
    assert small.official_filename == "dinov2_vits14_pretrain.pth" and small.mean == IMAGENET_MEAN
    giant = find_spec("dinov2_vitg14_reg")
    assert (giant.embed_dim, giant.depth, giant.num_heads, giant.num_registers) == (1536, 40, 24, 4)
    assert giant.official_filename == "dinov2_vitg14_reg4_pretrain.pth"
    large3 = find_spec("dinov3_vitl16")
    assert (large3.patch_size, large3.num_registers, large3.gated, large3.hf_id) == (
        16, 4, True, "facebook/dinov3-vitl16-pretrain-lvd1689m",
    )  # fmt: skip
    assert large3.official_filename == "dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth"
    assert find_spec("dinov3_vitl16_sat493m").mean == SATELLITE_MEAN
    assert find_spec("dinov3_vith16plus").embed_dim == 1280
    for alias in ("facebook/dinov2-base", "FACEBOOK/DINOV2-BASE", "dinov2-base", "base", " dinov2_vitb14 "):
        assert find_spec(alias).name == "dinov2_vitb14", alias
    assert find_spec("small_reg").name == "dinov2_vits14_reg"
    assert find_spec("dinov3-vits16-pretrain-lvd1689m").name == "dinov3_vits16"
    assert find_spec("small16") is None and find_spec("") is None
    assert backbone_family("large") == "dinov2" and backbone_family("dinov3_vitb16") == "dinov3"
    assert backbone_family("nothing") is None
    assert FAMILIES["dinov2_reg"].num_registers == 4 and FAMILIES["dinov3"].patch_size == 16
    assert FAMILIES["dinov2"].licence == "Apache-2.0" and FAMILIES["dinov3"].licence == "DINOv3 License"


def test_fingerprint_takes_four_values_of_every_tensor_by_name_and_is_cached():
    module = torch.nn.Module()
    module.b = torch.nn.Parameter(torch.arange(10, dtype=torch.float32))
    module.a = torch.nn.Parameter(torch.tensor([[5.0, 6.0], [7.0, 8.0]]))
    module.empty = torch.nn.Parameter(torch.zeros(0))
    fingerprint = backbone_fingerprint(module)
    assert fingerprint.dtype == np.float32
    # "a" first (sorted names): positions round(linspace(0, 3, 4)) = 0, 1, 2, 3; then "b": 0, 3, 6, 9
    np.testing.assert_array_equal(fingerprint, [5, 6, 7, 8, 0, 3, 6, 9])
    assert backbone_fingerprint(module) is fingerprint
    assert backbone_fingerprint(torch.nn.Module()).shape == (0,)


def test_fingerprint_hash_and_same_weights_tolerate_rounding_only():
    values = np.array([0.123, -4.56, 1000.0], np.float32)
    text = fingerprint_hash(values)
    assert len(text) == 12 and int(text, 16) >= 0
    assert fingerprint_hash(values.astype(np.float16)) == text  # half-precision loading: same hash
    assert fingerprint_hash(np.array([0.124, -4.56, 1000.0])) == text  # 2 significant digits
    assert fingerprint_hash(np.array([0.13, -4.56, 1000.0])) != text
    assert same_weights(None, values) and same_weights(values, None) and same_weights(None, None)
    assert same_weights(values, values * 1.019)
    assert not same_weights(values, values * 1.03)
    assert not same_weights(values, values[:2])
    assert same_weights(np.zeros(2), np.full(2, 1e-6)) and not same_weights(np.zeros(2), np.full(2, 1e-5))


def test_family_of_a_loaded_backbone_and_its_title():
    assert backbone_family_of(types.SimpleNamespace()) == "dinov2"
    assert backbone_family_of(types.SimpleNamespace(family="dinov2", num_registers=4)) == "dinov2_reg"
    assert backbone_family_of(types.SimpleNamespace(family="dinov3", num_registers=4)) == "dinov3"
    assert backbone_family_of(types.SimpleNamespace(family=None, num_registers=0)) == "dinov2"
    assert family_title("dinov2_reg") == "DINOv2 with registers" and family_title("dinov3") == "DINOv3"
    assert family_title(None) == "unknown" and family_title("custom") == "custom"
    for looks in (identity._looks_like_hub_id, loading._looks_like_hub_id):
        assert looks("facebook/dinov2-small") and looks("me/my.model_v2")
        assert not looks("a/b/c") and not looks("./x.pth") and not looks("../x") and not looks("-a/b")


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("/abs/x", True), ("./x", True), ("../x", True), ("~/x", True), ("w.PTH", True), ("w.safetensors", True),
        ("w.bin", True), ("w.pt", True), ("a\\b", True), ("a/b/c", True), ("facebook/dinov2-small", False),
        ("dinov2_vits14", False), (".\\x", True),
    ],
)  # fmt: skip
def test_what_looks_like_a_path(text, path):
    assert looks_like_path(text) is path


def test_offline_switch_values(monkeypatch):
    for value, offline in (("1", True), ("TRUE", True), (" yes ", True), ("on", True), ("0", False), ("", False)):
        monkeypatch.setenv("HF_HUB_OFFLINE", value)
        assert hub_offline() is offline, value
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert hub_offline() is False


def test_download_failures_in_words(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    gated = type("GatedRepoError", (Exception,), {})()
    assert loading._download_failure(gated) == (
        "the repository is gated: accept its licence on huggingface.co and log in with `hf auth login`"
    )
    for name in ("RepositoryNotFoundError", "RevisionNotFoundError"):
        assert loading._download_failure(type(name, (Exception,), {})()) == "no such repository on huggingface.co"
    assert loading._download_failure(OSError()).startswith("the download failed: huggingface.co could not be reached")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert loading._download_failure(gated) == "offline (HF_HUB_OFFLINE is set) and not in the local cache"


def test_missing_weights_messages_name_the_way_to_get_them():
    text = loading._missing_weights_message("dinov2_vits14", None, "offline")
    assert text.startswith("Could not load backbone weights 'dinov2_vits14' (offline).")
    assert "`hf download facebook/dinov2-small`" in text and "dinov2_vits14_pretrain.pth" in text
    assert "https://dl.fbaipublicfiles.com/dinov2/" in text and "DINOv3 weights are gated" not in text
    three = loading._missing_weights_message("dinov3_vits16", None, "x")
    assert "DINOv3 weights are gated" in three and "`hf download facebook/dinov3-vits16-pretrain-lvd1689m`" in three
    assert "The official checkpoint dinov3_vits16_pretrain_lvd1689m-08c60483.pth also works" in three
    other = loading._missing_weights_message("someone/model", None, "x")
    assert "`hf download someone/model`" in other and "official checkpoint" not in other
    assert "DINOv3 weights are gated" in loading._missing_weights_message("me/dinov3-tuned", None, "x")


def test_unknown_and_missing_sources(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    unknown = message(loading._load_uncached, "dinov2_vits15", sha256=None)
    assert unknown.startswith("Unknown backbone 'dinov2_vits15'. Did you mean 'dinov2_vits14'")
    assert "a Hugging Face id such as 'facebook/dinov2-small'" in unknown
    missing = message(loading._load_uncached, "./gone.pth", sha256=None, error=WeightsNotFoundError)
    assert missing.startswith("Backbone weights file or folder './gone.pth' does not exist. Check the path.")
    assert f"relative paths are looked up in the current folder ('{tmp_path}')" in missing
    assert relative_path_hint(str(tmp_path / "x")) == ""
    assert "--backbone-path PATH" in relative_path_hint("weights/x.pth")
    from napari_hrdv2.core.backbone.identity import download_needed

    assert download_needed("./gone.pth") is None and download_needed("../gone") is None  # paths never download


def test_folder_configs_are_checked_before_transformers_reads_them(tmp_path):
    assert "has no config.json: it is not a model folder" in message(
        read_folder_config, tmp_path, error=WeightsNotFoundError
    )
    config = tmp_path / "config.json"
    config.write_text("{not json")
    assert "is not readable JSON" in message(read_folder_config, tmp_path, error=WeightsNotFoundError)
    config.write_text("[1]")
    assert message(read_folder_config, tmp_path) == f"'{config}' does not hold a JSON object."
    config.write_text(json.dumps({"model_type": "dinov2", "auto_map": {}}))
    assert "asks to run its own Python code (config.json has 'auto_map')" in message(read_folder_config, tmp_path)
    config.write_text(json.dumps({"model_type": "bert"}))
    assert message(read_folder_config, tmp_path) == (
        f"'{tmp_path}' holds a 'bert' model; napari-hrdv2 needs a DINOv2 or DINOv3 model (model_type one of "
        "['dinov2', 'dinov2_with_registers', 'dinov3_vit'], or a timm DINOv2/DINOv3 folder)."
    )
    config.write_text(json.dumps({"architecture": "vit_small_patch14_dinov2"}))
    assert read_folder_config(tmp_path) == {"architecture": "vit_small_patch14_dinov2"}
    config.write_text(json.dumps({"model_type": "dinov2_with_registers"}))
    assert read_folder_config(tmp_path)["model_type"] == "dinov2_with_registers"


def test_normalisation_of_a_folder(tmp_path):
    assert loading._folder_mean_std(tmp_path, None) == (IMAGENET_MEAN, loading.IMAGENET_STD)
    sat = find_spec("dinov3_vitl16_sat493m")
    assert loading._folder_mean_std(tmp_path, sat) == (SATELLITE_MEAN, sat.std)
    processor = tmp_path / "preprocessor_config.json"
    processor.write_text(json.dumps({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]}))
    assert loading._folder_mean_std(tmp_path, None) == ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    processor.write_text(json.dumps({"image_mean": [0.5, 0.5, 0.5]}))  # std from the preset / ImageNet
    assert loading._folder_mean_std(tmp_path, None) == ((0.5, 0.5, 0.5), loading.IMAGENET_STD)
    processor.write_text("{broken")
    assert loading._folder_mean_std(tmp_path, None) == (IMAGENET_MEAN, loading.IMAGENET_STD)
    assert message(loading._checked_mean_std, ["a", 1, 2], [1, 1, 1], "p") == (
        "p: mean/std must be three numbers each, got ['a', 1, 2] / [1, 1, 1]."
    )
    assert message(loading._checked_mean_std, [1, 1], [1, 1, 1], "p") == (
        "p: mean/std must be three numbers each (std > 0), got [1, 1] / [1, 1, 1]."
    )
    assert "std > 0" in message(loading._checked_mean_std, [1, 1, 1], [1, 0, 1], "p")
    assert loading._checked_mean_std([0, 0, 0], [1, 2, 3], "p") == ((0.0, 0.0, 0.0), (1.0, 2.0, 3.0))


def test_a_loaded_tiny_backbone_reports_its_facts(tiny_backbone):
    backbone = loading.load_backbone(tiny_backbone, device="cpu", dtype=torch.float32)
    assert backbone.patch_size == 14 and backbone.num_registers == 0 and backbone.family == "dinov2"
    assert backbone.depth == len(backbone.parts.blocks) >= 1
    assert backbone.device == torch.device("cpu") and backbone.dtype == torch.float32
    assert backbone.embed_dim % backbone.num_heads == 0 and backbone.mean == IMAGENET_MEAN
    assert loading.load_backbone(tiny_backbone, device="cpu", dtype=torch.float32) is backbone  # cached
    loading.clear_backbone_cache()
    assert loading.load_backbone(tiny_backbone, device="cpu", dtype=torch.float32) is not backbone
    assert "Checksum mismatch for" in message(
        loading._check_sha256, next(p for p in __import__("pathlib").Path(tiny_backbone).iterdir() if p.is_file()),
        "0" * 64, error=WeightsNotFoundError,
    )  # fmt: skip
