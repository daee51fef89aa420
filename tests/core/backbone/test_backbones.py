"""Loading backbones from folders, official .pth state dicts, presets; errors when weights are missing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_hrdv2 as hr
from napari_hrdv2.core.backbone.loading import find_spec, load_backbone
from napari_hrdv2.core.files.checksums import file_sha256
from references import transformers_to_official


@pytest.mark.parametrize("fixture", ["tiny_backbone", "tiny_backbone_registers"])
def test_folder_and_official_pth_give_the_same_features(fixture, request, tmp_path):
    from transformers import AutoModel

    folder = request.getfixturevalue(fixture)
    state = AutoModel.from_pretrained(folder).state_dict()
    checkpoint = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(transformers_to_official(state), checkpoint)

    image = np.random.default_rng(0).random((42, 56)).astype(np.float32)
    base = dict(device="cpu", shift_distances=(1,), tile_size=None, storage_dtype="float32")
    from_folder = hr.Featurizer(hr.FeatureConfig(backbone=folder, **base)).encode(image)
    from_pth = hr.Featurizer(hr.FeatureConfig(backbone=str(checkpoint), **base)).encode(image)
    np.testing.assert_allclose(from_pth.features(), from_folder.features(), atol=1e-5)
    np.testing.assert_allclose(from_pth.attention(), from_folder.attention(), atol=1e-6)
    backbone = load_backbone(str(checkpoint))
    assert backbone.num_registers == (4 if "registers" in fixture else 0)
    assert (backbone.embed_dim, backbone.num_heads, backbone.patch_size) == (128, 2, 14)


def test_sha256_is_checked(tiny_backbone, tmp_path):
    from transformers import AutoModel

    checkpoint = tmp_path / "weights.pth"
    torch.save(transformers_to_official(AutoModel.from_pretrained(tiny_backbone).state_dict()), checkpoint)
    good = file_sha256(checkpoint)
    assert load_backbone(str(checkpoint), sha256=good, cache=False).embed_dim == 128
    with pytest.raises(hr.WeightsNotFoundError, match="Checksum mismatch"):
        load_backbone(str(checkpoint), sha256="0" * 64, cache=False)


def test_missing_hub_weights_offline_give_instructions(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(hr.WeightsNotFoundError) as error:
        load_backbone("dinov2_vits14", cache=False)
    message = str(error.value)
    assert "hf download facebook/dinov2-small" in message
    assert "dinov2_vits14_pretrain.pth" in message
    assert "gated" not in message
    with pytest.raises(hr.WeightsNotFoundError) as error:
        load_backbone("dinov3_vits16", cache=False)
    message = str(error.value)
    assert "hf download facebook/dinov3-vits16-pretrain-lvd1689m" in message
    assert "gated behind Meta's DINOv3 licence" in message and "dinov3_vits16_pretrain_lvd1689m-08c60483.pth" in message


def test_bad_backbone_sources(tmp_path):
    with pytest.raises(hr.InputError, match="Unknown backbone"):
        load_backbone("resnet50", cache=False)
    with pytest.raises(hr.WeightsNotFoundError, match="does not exist"):
        load_backbone(str(tmp_path / "missing.pth"), cache=False)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(hr.WeightsNotFoundError, match="state dict"):
        load_backbone(str(corrupt), cache=False)


def test_presets_and_aliases():
    assert find_spec("small").hf_id == "facebook/dinov2-small"
    assert find_spec("facebook/dinov2-with-registers-large").name == "dinov2_vitl14_reg"
    assert find_spec("dinov2_vitg14").embed_dim == 1536
    assert find_spec("dinov2_vitb14_reg").official_filename == "dinov2_vitb14_reg4_pretrain.pth"
    assert find_spec("facebook/dinov3-vitl16-pretrain-sat493m").name == "dinov3_vitl16_sat493m"
    sat, lvd = find_spec("dinov3_vitl16_sat493m"), find_spec("dinov3_vitl16")
    assert sat.mean == (0.430, 0.411, 0.296) and sat.std == (0.213, 0.156, 0.143) and lvd.mean == (0.485, 0.456, 0.406)
    assert {s.patch_size for s in hr.BACKBONES.values() if s.family == "dinov3"} == {16}
    assert find_spec("dinov3_vith16plus").embed_dim == 1280
    assert len(hr.BACKBONES) == 14


def test_cli_lists_every_preset_and_sets_facet_and_layer():
    from napari_hrdv2.cli import build_config, build_parser

    parser = build_parser()
    args = parser.parse_args(["features", "x.tif", "-o", "o.npy", "--facet", "key", "--layer", "-2",
                              "--backbone", "dinov3_vits16"])  # fmt: skip
    config = build_config(args)
    assert (config.facet, config.layer, config.backbone) == ("key", -2, "dinov3_vits16")
    help_text = parser._subparsers._group_actions[0].choices["features"].format_help()
    assert all(name in help_text.replace("\n", " ").replace(" ", "") for name in hr.BACKBONES)


def test_unknown_backbone_names_close_presets_and_stays_one_short_line():
    """A typo of a preset is answered with the preset it resembles; the message no longer lists every preset."""
    from napari_hrdv2.core.backbone.registry import backbone_names

    with pytest.raises(hr.InputError, match="Did you mean 'dinov2_vits14'") as caught:
        hr.load_backbone("dinov2_vits41")
    message = str(caught.value)
    assert sum(name in message for name in backbone_names()) <= 3 and "\n" not in message
