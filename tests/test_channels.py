"""Choosing the channels of multichannel images: ``read_image(channels=)`` and ``--channels``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from safetensors import safe_open

import napari_hrdv2 as hr
from conftest import two_texture_image
from napari_hrdv2.cli import main
from napari_hrdv2.core.errors import InputError
from napari_hrdv2.core.io import parse_channels, read_image


@pytest.fixture
def five(tmp_path) -> tuple[str, np.ndarray]:
    """A 5-channel (H, W, 5) TIFF whose channel c holds (10 * c + column) (known values per channel)."""
    columns = np.arange(40, dtype=np.uint8)[None, :].repeat(30, axis=0)
    data = np.dstack([columns + 10 * c for c in range(5)]).astype(np.uint8)
    path = tmp_path / "five.tif"
    tifffile.imwrite(path, data, photometric="minisblack", planarconfig="contig")
    return str(path), data


def test_one_two_or_three_channels_are_chosen_in_order(five):
    path, data = five
    with pytest.warns(UserWarning, match=r"using channel 2 of 5 \(S axis\) as grey"):
        grey = read_image(path, channels=2)
    np.testing.assert_array_equal(grey, data[..., 2])
    with pytest.warns(UserWarning, match="using channels 0, 3 of 5 .* as red and green"):
        two = read_image(path, channels="0,3")
    np.testing.assert_array_equal(two[..., :2], data[..., [0, 3]])
    np.testing.assert_array_equal(two[..., 2], data[..., 0])  # blue empty: the lowest of the two
    with pytest.warns(UserWarning, match="using channels 4, 1, 0 of 5 .* as RGB"):
        rgb = read_image(path, channels=[4, 1, 0])
    np.testing.assert_array_equal(rgb, data[..., [4, 1, 0]])


def test_channel_errors_are_clear(five, tmp_path):
    path, _ = five
    with pytest.raises(InputError, match=r"Channel 7 is out of range: 'five.tif' has 5 channels .* 0\.\.4"):
        read_image(path, channels=[0, 7])
    with pytest.raises(InputError, match="--channels 0,2"):
        read_image(path)  # 5 channels and no choice: the message names the option
    tifffile.imwrite(tmp_path / "grey.tif", np.zeros((20, 20), np.uint8))
    with pytest.raises(InputError, match="has one channel"):
        read_image(tmp_path / "grey.tif", channels=1)
    assert read_image(tmp_path / "grey.tif", channels=0).shape == (20, 20)
    for bad in ("a", "", "0,1,2,3", "-1", 1.5, [0, None]):
        with pytest.raises(InputError):
            parse_channels(bad)
    assert parse_channels(" 2, 0 ") == (2, 0) and parse_channels(None) is None


@pytest.fixture(scope="module")
def opts(tiny_backbone) -> list[str]:
    return ["--backbone", tiny_backbone, "--device", "cpu", "--shifts", "none", "--tile-size", "none", "-q"]


def test_cli_features_use_the_chosen_channels(five, tmp_path, opts, tiny_config, capsys):
    path, data = five
    assert main(["features", path, "-o", str(tmp_path / "f.npy"), "--channels", "1", *opts]) == 0
    assert "using channel 1 of 5" in capsys.readouterr().err  # says which channels were used
    expected = hr.Featurizer(tiny_config.replace(shifts="none")).encode(data[..., 1], with_attention=False)
    np.testing.assert_allclose(np.load(tmp_path / "f.npy"), expected.features(), atol=1e-5)
    assert main(["features", path, "-o", str(tmp_path / "g.npy"), "--channels", "9", *opts]) == 2
    assert "Channel 9 is out of range" in capsys.readouterr().err
    assert main(["features", path, "-o", str(tmp_path / "g.npy"), "--channels", "x", *opts]) == 2
    assert "whole numbers such as 0 or 0,2" in capsys.readouterr().err


def test_a_model_remembers_its_channels(tmp_path, opts, capsys):
    image, truth = two_texture_image(56)
    noise = np.random.default_rng(0).integers(0, 255, image.shape, dtype=np.uint8)
    stack = np.dstack([noise, image, noise, noise]).astype(np.uint8)  # the texture is channel 1 of 4
    tifffile.imwrite(tmp_path / "img.tif", stack, photometric="minisblack", planarconfig="contig")
    strokes = np.zeros_like(truth)
    strokes[5:-5, 14:16], strokes[5:-5, 42:44] = 1, 2
    tifffile.imwrite(tmp_path / "strokes.tif", strokes)
    model = tmp_path / "m.hrdv2"
    img = str(tmp_path / "img.tif")
    assert main(["train", img, "--labels", str(tmp_path / "strokes.tif"), "-o", str(model), "--channels", "1",
                 *opts]) == 0  # fmt: skip
    with safe_open(str(model), framework="numpy") as handle:
        assert json.loads(handle.metadata()["channels"]) == [1]
    assert hr.LinearSegmenter.load(model).channels == (1,)
    capsys.readouterr()
    # segment reads the inputs with the model's channels without being told...
    assert main(["segment", img, "--model", str(model), "-o", str(tmp_path / "out"), "-q"]) == 0
    labels = tifffile.imread(tmp_path / "out" / "img_labels.tif")
    assert labels.shape == truth.shape and (labels == truth).mean() > 0.8
    capsys.readouterr()
    # ... and refuses other channels, naming the model's.
    assert main(["segment", img, "--model", str(model), "-o", str(tmp_path / "o2"), "--channels", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "trained on channels 1" in err[0]
