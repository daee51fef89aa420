"""Lazy inputs: what open_lazy accepts, OME-Zarr metadata of every shape, and the messages of every refusal."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr

from napari_hrdv2.core.errors import InputError
from napari_hrdv2.core.files.lazy import LazyPlane, open_channels, open_lazy, planes_of


def message(call, *args, **kwargs) -> str:
    with pytest.raises(InputError) as caught:
        call(*args, **kwargs)
    return str(caught.value)


def ome_group(path, data: np.ndarray, axes=None, datasets=("0",)) -> None:
    group = zarr.open_group(str(path), mode="w")
    group.create_array("0", shape=data.shape, dtype=data.dtype)[...] = data
    scale = {"datasets": [{"path": p} for p in datasets]}
    group.attrs["multiscales"] = [{**scale, **({"axes": axes} if axes is not None else {})}]


def test_open_lazy_takes_array_likes_as_they_are_and_names_missing_or_unknown_inputs(tmp_path):
    array = np.zeros((3, 4))
    assert open_lazy(array) is array
    assert message(open_lazy, [[1, 2]]) == "Expected a path or an array-like, got list."
    assert message(open_lazy, tmp_path / "none.zarr") == f"Zarr input '{tmp_path / 'none.zarr'}' does not exist."
    for name in ("none.npy", "none.TIF"):
        assert message(open_lazy, str(tmp_path / name)) == f"Image file '{tmp_path / name}' does not exist."
    assert message(open_lazy, tmp_path / "a.png") == "'a.png' cannot be read lazily; use .zarr, .tif/.tiff or .npy."
    np.save(tmp_path / "a.npy", np.arange(12, dtype=np.int16).reshape(3, 4))
    mapped = open_lazy(tmp_path / "a.npy")
    assert isinstance(mapped, np.memmap) and mapped[2, 3] == 11
    (tmp_path / "bad.npy").write_bytes(b"not an array")
    assert message(open_lazy, tmp_path / "bad.npy").startswith(f"Could not read '{tmp_path / 'bad.npy'}': ")


def test_ome_zarr_axes_put_y_x_and_colour_last_and_drop_single_axes(tmp_path):
    data = np.arange(2 * 3 * 1 * 5 * 6, dtype=np.uint8).reshape(2, 3, 1, 5, 6)  # t, c, z, y, x
    ome_group(tmp_path / "tczyx.zarr", data, axes=[{"name": "t"}, {"name": "c"}, "z", "y", "x"])
    view = open_lazy(tmp_path / "tczyx.zarr")
    assert view.shape == (2, 5, 6, 3) and view.ndim == 4 and view.dtype == np.uint8
    np.testing.assert_array_equal(view[1], np.moveaxis(data[1, :, 0], 0, -1))
    np.testing.assert_array_equal(view[0, 1:3, 2:4], np.moveaxis(data[0, :, 0, 1:3, 2:4], 0, -1))
    five = np.zeros((5, 4, 6), dtype=np.uint8)  # c, y, x with 5 channels: planes, as napari shows them
    ome_group(tmp_path / "cyx.zarr", five, axes=["c", "y", "x"])
    assert open_lazy(tmp_path / "cyx.zarr").shape == (5, 4, 6)
    ome_group(tmp_path / "bad_axes.zarr", five, axes=["c", "x"])
    assert message(open_lazy, tmp_path / "bad_axes.zarr") == (
        "OME-Zarr axes ['c', 'x'] do not match the array's 3 dimensions with y and x."
    )


def test_damaged_ome_zarr_and_ambiguous_groups_are_explained(tmp_path):
    data = np.zeros((4, 6), dtype=np.uint8)
    ome_group(tmp_path / "empty.zarr", data, datasets=())
    assert (
        message(open_lazy, tmp_path / "empty.zarr")
        == f"'{tmp_path / 'empty.zarr'}' is an OME-Zarr image without datasets."
    )
    ome_group(tmp_path / "moved.zarr", data, datasets=("s0",))
    assert message(open_lazy, tmp_path / "moved.zarr") == (
        f"'{tmp_path / 'moved.zarr'}' is a damaged OME-Zarr image: its metadata names the dataset path 's0', which is "
        "not in the folder (or not an array). Re-export the image, or give the path of one of its arrays."
    )
    group = zarr.open_group(str(tmp_path / "two.zarr"), mode="w")
    for name in ("a", "b"):
        group.create_array(name, shape=(4, 6), dtype=np.uint8)
    assert message(open_lazy, tmp_path / "two.zarr") == (
        f"'{tmp_path / 'two.zarr'}' is a Zarr group with 2 arrays and no OME-Zarr metadata: give the path of one "
        f"array, e.g. '{tmp_path / 'two.zarr'}/<name>'."
    )
    group.create_array("0", shape=(7, 8), dtype=np.uint8)
    assert open_lazy(tmp_path / "two.zarr").shape == (7, 8)  # several arrays, one named "0": that one
    nested = zarr.open_group(str(tmp_path / "nested.zarr"), mode="w")
    nested.create_group("pyramid").create_array("level", shape=(9, 10), dtype=np.uint8)
    assert open_lazy(tmp_path / "nested.zarr").shape == (9, 10)  # one group holding one array


def test_lazy_planes_refuse_what_is_not_an_image():
    assert message(LazyPlane, np.zeros((4, 5, 6))) == "Expected an image (H, W) or (H, W, 3|4), got shape (4, 5, 6)."
    assert LazyPlane(np.zeros((4, 5, 6)), any_channels=True).shape == (4, 5, 6)
    plane = LazyPlane(np.zeros((2, 4, 5, 3)), (1,))
    assert (plane.height, plane.width, plane.shape) == (4, 5, (4, 5, 3))
    assert (
        message(LazyPlane, np.array([["a"]])) == "Image dtype <U1 is not numeric; expected an integer or float array."
    )
    assert LazyPlane(np.ones((2, 3), dtype=bool)).read(slice(None), slice(0, 2)).dtype == np.uint8
    assert message(planes_of, np.zeros(5)) == "Input of shape (5,) is not an image or a stack of images."
    assert (
        message(planes_of, np.zeros((2, 2, 3, 4, 5)))
        == "Input of shape (2, 2, 3, 4, 5) is not an image or a stack of images."
    )
    planes, stack = planes_of(np.zeros((1, 3, 20, 30)))  # a leading single axis is dropped
    assert stack and len(planes) == 3 and planes[2].lead == (0, 2) and planes[2].shape == (20, 30)


def test_open_channels_of_arrays_without_axis_names():
    five = np.stack([np.full((20, 30), 10 * c, dtype=np.uint8) for c in range(5)], axis=-1)
    assert message(open_channels, five) == (
        "'image' has shape (20, 30, 5): 5 channels on its last axis? HR-Dv2 uses grey or RGB images. Choose the "
        "one, two or three to use with channels= (command line: --channels 0 or --channels 0,2)."
    )
    view, note = open_channels(five, "3")
    assert note == "'image': using channel 3 of 5 (last axis) as grey." and view.shape == (20, 30)
    assert np.all(view[2:4, 5:9] == 30)
    view, note = open_channels(five, None, separate=True)
    assert note is None and view.shape == (20, 30, 5)
    stack = np.zeros((6, 20, 30), dtype=np.uint8)  # last axis not narrow: a grey stack, as stored
    assert open_channels(stack) == (stack, None)
    view, note = open_channels(np.stack([five, five]), [4, 0])  # (N, H, W, C)
    assert view.shape == (2, 20, 30, 3) and note.endswith("as red and green (blue empty).")
    assert view[1, 0:1, 0:1].tolist() == [[[40, 0, 0]]]


def test_open_channels_of_ome_zarr_and_tiff_channel_axes(tmp_path):
    data = np.stack([np.full((20, 30), 10 * c + 1, dtype=np.uint8) for c in range(5)])  # c, y, x
    ome_group(tmp_path / "c5.zarr", data, axes=["c", "y", "x"])
    with pytest.raises(InputError, match=r"^'c5\.zarr' has 5 channels \(c axis\); HR-Dv2 uses grey or RGB"):
        open_channels(tmp_path / "c5.zarr")
    view, note = open_channels(tmp_path / "c5.zarr", "1,0,2")
    assert note == "'c5.zarr': using channels 1, 0, 2 of 5 (c axis) as RGB."
    assert view.shape == (20, 30, 3) and view[3:5, 4:6].tolist() == [[[11, 1, 21]] * 2] * 2
    ome_group(tmp_path / "c4.zarr", data[:4], axes=["c", "y", "x"])
    assert open_channels(tmp_path / "c4.zarr")[0].shape == (20, 30, 4)  # 4 channels: colour, as napari shows it
    ome_group(tmp_path / "yx.zarr", data[0], axes=["y", "x"])
    view, note = open_channels(tmp_path / "yx.zarr", 0)
    assert note is None and view.shape == (20, 30) and np.all(view[0:2, 0:2] == 1)
    tifffile.imwrite(tmp_path / "five.tiff", np.moveaxis(data, 0, -1), photometric="minisblack")
    view, note = open_channels(tmp_path / "five.tiff", [2])
    assert note.startswith("'five.tiff': using channel 2 of 5 (") and note.endswith(") as grey.")
    assert view.shape == (20, 30) and np.all(view[0:3, 0:3] == 21)
    assert open_lazy(tmp_path / "five.tiff").shape == (20, 30, 5)


def test_a_group_of_one_group_names_the_path_it_was_given(tmp_path):
    group = zarr.open_group(str(tmp_path / "deep.zarr"), mode="w")
    inner = group.create_group("inner")
    for name in ("a", "b"):
        inner.create_array(name, shape=(4, 6), dtype=np.uint8)
    assert message(open_lazy, tmp_path / "deep.zarr").startswith(
        f"'{tmp_path / 'deep.zarr'}' is a Zarr group with 2 arrays and no OME-Zarr metadata"
    )
