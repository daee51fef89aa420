"""Public helpers that no other headless test reaches (found from mutmut's map of tests to functions)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import napari_hrdv2 as hr
from napari_hrdv2.core.errors import InputError
from napari_hrdv2.core.features.encoding import Featurizer, encode
from napari_hrdv2.core.files.lazy import process_alive
from napari_hrdv2.core.runtime import memory
from napari_hrdv2.core.transforms import Transform


def test_process_alive_knows_running_ended_and_malformed_process_ids(monkeypatch):
    assert process_alive(os.getpid()) is True
    assert process_alive(str(os.getpid())) is True  # as read back from a JSON lock
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    assert process_alive(int(ended.stdout)) is False
    for malformed in (None, "x", 0, -1, [1]):
        assert process_alive(malformed) is False

    def owned_by_another_user(pid, signal):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "kill", owned_by_another_user)
    assert process_alive(12345) is True  # it exists: its lock must be respected


def test_available_device_bytes_reads_cuda_only_and_never_fails(monkeypatch):
    assert memory.available_device_bytes("cpu") is None
    assert memory.available_device_bytes(torch.device("cpu")) is None
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (3 * 2**30 + 0.5, 8 * 2**30))
    free = memory.available_device_bytes(torch.device("cuda", 1))
    assert free == 3 * 2**30 and isinstance(free, int)
    assert memory.available_device_bytes("cuda") == 3 * 2**30

    def driver_error(device):
        raise RuntimeError("CUDA driver version is insufficient")

    monkeypatch.setattr(torch.cuda, "mem_get_info", driver_error)
    assert memory.available_device_bytes(torch.device("cuda")) is None


def test_encode_is_featurizer_encode(tiny_config, two_textures):
    image, _ = two_textures
    config = tiny_config.replace(dtype="float32")
    one_shot = encode(image, config)
    direct = Featurizer(config).encode(image)
    np.testing.assert_array_equal(one_shot.features(), direct.features())
    assert isinstance(one_shot, hr.Encoding)


def test_encoding_to_moves_every_map_and_returns_itself(tiny_config, two_textures):
    image, _ = two_textures
    encoding = Featurizer(tiny_config.replace(dtype="float32")).encode(image, with_attention=True)
    before = encoding.features()
    assert encoding.to("cpu") is encoding and encoding.to(torch.device("cpu")) is encoding
    assert all(tile.maps.device.type == "cpu" and tile.attention.device.type == "cpu" for tile in encoding.tiles)
    np.testing.assert_array_equal(encoding.features(), before)


def test_channel_encoding_repr_and_to(tiny_config):
    rng = np.random.default_rng(0)
    image = (rng.random((56, 70, 2)) * 255).astype(np.uint8)
    encoding = Featurizer(tiny_config.replace(dtype="float32", channel_mode="separate")).encode(image)
    text = repr(encoding)
    assert text.startswith("ChannelEncoding(56x70, 2 channels x 128 features, ")
    assert f"{encoding.n_transforms} transforms, " in text and text.endswith(" MiB on cpu)")
    assert encoding.to("cpu") is encoding
    assert all(tile.maps.device.type == "cpu" for block in encoding.blocks for tile in block.tiles)


def test_linear_segmenter_check_backbone_refuses_another_width_and_other_weights(
    tiny_config, two_textures, tmp_path
):
    from napari_hrdv2.core.backbone.loading import load_backbone
    from napari_hrdv2.testing import save_random_dinov2

    image, truth = two_textures
    scribbles = np.where(np.isin(np.arange(truth.size).reshape(truth.shape) % 7, [0]), truth, 0)
    config = tiny_config.replace(dtype="float32")
    model = hr.LinearSegmenter().fit(Featurizer(config).encode(image), scribbles)
    model.check_backbone(load_backbone(config.backbone))  # the training backbone: fine

    wider = save_random_dinov2(tmp_path / "wider", hidden=192, heads=3)
    with pytest.raises(InputError) as wrong_width:
        model.check_backbone(load_backbone(str(wider)))
    assert str(wrong_width.value) == (
        f"The backbone '{wider}' gives 192 features per pixel but the model was trained on 128: "
        "use the backbone the model was trained with."
    )
    other = save_random_dinov2(tmp_path / "other", seed=99)
    with pytest.raises(InputError, match=r"^These features come from other backbone weights \(fingerprint "):
        model.check_backbone(load_backbone(str(other)))
    with pytest.raises(InputError, match="not trained|fit"):
        hr.LinearSegmenter().check_backbone(load_backbone(config.backbone))


def test_transform_source_axis_swaps_only_for_quarter_turns():
    for rotation, expected in ((0, (0, 1)), (1, (1, 0)), (2, (0, 1)), (3, (1, 0))):
        transform = Transform(shift=(2, 3), flip="horizontal", rotation=rotation)
        assert (transform.source_axis(0), transform.source_axis(1)) == expected


def test_volume_plane_features_are_the_encoders_plane(tiny_config):
    from napari_hrdv2.core.features.volume import VolumeEncoder

    volume = np.random.default_rng(3).random((14, 16, 15)).astype(np.float32)
    encoder = VolumeEncoder(volume, tiny_config.replace(dtype="float32", normalize="dtype"))
    plane = encoder.plane_source(2)
    np.testing.assert_array_equal(plane.features(), encoder.features(2))
