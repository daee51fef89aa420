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
from napari_hrdv2.core.files.images import parse_channels, read_image


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


# ---------------------------------------------------------------------------------------------- tile by tile
@pytest.fixture(scope="module")
def channel_model(tiny_backbone) -> tuple[hr.LinearSegmenter, hr.FeatureConfig]:
    """A model trained on a grey two-texture image; it records that it reads channel 1 of its inputs."""
    config = hr.FeatureConfig(backbone=tiny_backbone, device="cpu", shifts="none", tile_size=56, tile_overlap=14)
    image, truth = two_texture_image(56)
    strokes = np.zeros_like(truth)
    strokes[5:-5, 14:16], strokes[5:-5, 42:44] = 1, 2
    model = hr.LinearSegmenter().fit(hr.Featurizer(config).encode(image, with_attention=False), strokes)
    model.channels = (1,)
    return model, config


def multichannel_files(folder, height: int = 70, width: int = 84) -> tuple[np.ndarray, dict[str, str]]:
    """One 5-channel image (channel 1: two textures; others: noise) as an OME-TIFF (C, Y, X), a .npy (H, W, 5)
    and an OME-Zarr (c, y, x); returns the (H, W, 5) data and the paths."""
    import zarr

    texture, _ = two_texture_image(max(height, width))
    noise = np.random.default_rng(3).integers(0, 255, (height, width, 5), dtype=np.uint8)
    data = noise.copy()
    data[..., 1] = texture[:height, :width]
    folder.mkdir(exist_ok=True)
    paths = {"tif": str(folder / "cells.ome.tif"), "npy": str(folder / "cells_npy.npy"), "zarr": str(folder / "z.zarr")}
    tifffile.imwrite(paths["tif"], np.moveaxis(data, -1, 0), metadata={"axes": "CYX"}, tile=(32, 32))
    np.save(paths["npy"], data)
    group = zarr.open_group(paths["zarr"], mode="w", zarr_format=2)
    group.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": n} for n in "cyx"], "datasets": [{"path": "0"}]}]
    group.create_array("0", shape=(5, height, width), chunks=(1, 32, 32), dtype="uint8")[:] = np.moveaxis(data, -1, 0)
    return data, paths


def test_streamed_inputs_use_the_chosen_channels(tmp_path, channel_model, monkeypatch):
    """OME-TIFF, .npy and OME-Zarr inputs segmented tile by tile (and a small .npy read whole) with the model's
    channel 1, or with --channels 3,1: the labels equal the in-memory run on read_image(channels=)."""
    from napari_hrdv2.core.scale import streaming

    model, config = channel_model
    data, paths = multichannel_files(tmp_path / "in")
    featurizer = hr.Featurizer(config)
    with pytest.warns(UserWarning):
        grey = read_image(paths["tif"], channels=1)
    np.testing.assert_array_equal(grey, data[..., 1])
    expected = model.predict(featurizer.encode(grey, with_attention=False))
    assert 0.1 < expected.mean() - 1 < 0.9  # both classes: a known answer that can fail

    # Zarr outputs: every input is segmented tile by tile, with the model's channels by default.
    with pytest.warns(UserWarning, match=r"using channel 1 of 5 \((C|c|last) axis\) as grey") as caught:
        report = hr.segment_files(list(paths.values()), tmp_path / "z", model, featurizer, suffix=".zarr")
    assert report.ok and len(report.written) == 3, report.summary()
    assert {str(w.message).split("'")[1] for w in caught if "using channel" in str(w.message)} == {
        "cells.ome.tif", "cells_npy.npy", "z.zarr"
    }  # fmt: skip
    import zarr

    for out in report.written:
        np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")["0"][:], expected)

    # A large TIFF segmented tile by tile into a tiled .tif, and a small .npy read whole: the same labels.
    monkeypatch.setattr(streaming, "STREAM_PIXELS", 50 * 50)
    with pytest.warns(UserWarning, match="using channel 1 of 5"):
        report = hr.segment_files([paths["tif"]], tmp_path / "t", model, featurizer)
    assert report.ok and tifffile.TiffFile(report.written[0]).pages[0].is_tiled
    np.testing.assert_array_equal(tifffile.imread(report.written[0]), expected)
    monkeypatch.setattr(streaming, "STREAM_PIXELS", 1 << 25)
    with pytest.warns(UserWarning, match="using channel 1 of 5"):
        report = hr.segment_files([paths["npy"]], tmp_path / "n", model, featurizer)
    assert report.ok
    np.testing.assert_array_equal(tifffile.imread(report.written[0]), expected)

    # Two channels (red, green, blue = the lower): the streamed run equals the in-memory one of read_image.
    model.channels = None
    try:
        with pytest.warns(UserWarning):
            colour = read_image(paths["tif"], channels="3,1")
        expected_colour = model.predict(featurizer.encode(colour, with_attention=False))
        with pytest.warns(UserWarning, match="using channels 3, 1 of 5 .* as red and green"):
            report = hr.segment_files(
                [paths["zarr"]], tmp_path / "c", model, featurizer, suffix=".zarr", channels="3,1"
            )
        np.testing.assert_array_equal(zarr.open_group(str(report.written[0]), mode="r")["0"][:], expected_colour)
        assert not np.array_equal(expected_colour, expected)  # other channels give another answer
    finally:
        model.channels = (1,)


def test_streamed_channel_errors_are_clear(tmp_path, channel_model):
    model, config = channel_model
    _, paths = multichannel_files(tmp_path / "in")
    model.channels = None
    try:
        report = hr.segment_files(list(paths.values()), tmp_path / "o", model, config, suffix=".zarr", channels=7)
        assert [reason.split(":")[0] for _, reason in report.failed] == ["Channel 7 is out of range"] * 3
        assert "has 5 channels" in report.failed[0][1] and not list((tmp_path / "o").iterdir())
        grey = tmp_path / "grey.npy"
        np.save(grey, np.zeros((3, 60, 60), np.uint8))  # a grey stack: channels last would be 60, not 3
        report = hr.segment_files([grey], tmp_path / "o", model, config, suffix=".zarr", channels=1)
        assert "'grey.npy' has one channel" in report.failed[0][1]
        # Without a choice, 5 channels are refused naming the option (not read as 5 planes, or 70 planes of 84x5).
        report = hr.segment_files([paths["npy"], paths["zarr"]], tmp_path / "o", model, config, suffix=".zarr")
        assert "5 channels on its last axis? HR-Dv2 uses grey or RGB images" in report.failed[0][1]
        assert "'z.zarr' has 5 channels (c axis); HR-Dv2 uses grey or RGB images" in report.failed[1][1]
        assert all("--channels 0" in reason for _, reason in report.failed) and not report.written
    finally:
        model.channels = (1,)
    # A partial output made from other channels is not resumed.
    from napari_hrdv2.core.scale.streaming import StreamJob

    outputs = {"labels": tmp_path / "j.zarr"}
    one = StreamJob.create(model, paths["zarr"], outputs, config=config, channels=1)
    two = StreamJob.create(model, paths["zarr"], outputs, config=config, channels=2)
    assert one.job["channels"] == [1] and one.job != two.job
