"""Label files written and read back, input folders expanded, stacks told from planes: defaults and messages."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_hrdv2.core.errors import InputError
from napari_hrdv2.core.files.images import expand_inputs, is_stack, planes, read_labels, write_labels


def message(call, *args, **kwargs) -> str:
    with pytest.raises(InputError) as caught:
        call(*args, **kwargs)
    return str(caught.value)


def test_written_labels_read_back_and_refusals_name_the_format(tmp_path):
    labels = np.array([[0, 1], [2, 300]], dtype=np.int64)
    png = write_labels(tmp_path / "a.png", labels)  # int64 within 0..65535: stored as uint16
    assert read_labels(png).tolist() == labels.tolist() and read_labels(png).dtype == np.uint16
    stack = np.arange(12, dtype=np.uint8).reshape(3, 2, 2)
    np.testing.assert_array_equal(read_labels(write_labels(tmp_path / "s.TIFF", stack)), stack)
    single = write_labels(tmp_path / "one.tif", stack[:1])  # a stack of one page reads as the plane
    assert read_labels(single).shape == (2, 2)
    assert message(write_labels, tmp_path / "a.png", labels) == (
        f"'{tmp_path / 'a.png'}' already exists; pass overwrite=True (--overwrite) to replace it."
    )
    write_labels(tmp_path / "a.png", labels + 1, overwrite=True)
    assert read_labels(png).tolist() == (labels + 1).tolist()
    assert (
        message(write_labels, tmp_path / "f.tif", labels.astype(float)) == "Label images must be integers, got float64."
    )
    assert message(write_labels, tmp_path / "s.png", stack) == (
        "PNG holds one plane; write stacks as TIFF or one PNG per plane."
    )
    assert (
        message(write_labels, tmp_path / "n.png", labels - 1)
        == "PNG label images hold values 0..65535; write this one as TIFF."
    )
    assert message(write_labels, tmp_path / "a.jpg", labels) == "Unsupported label format '.jpg'; use .tif or .png."
    with pytest.raises(InputError, match="^The label image '.*' is a folder"):
        write_labels(tmp_path, labels)


def test_read_labels_refuses_colour_empty_and_unknown_files(tmp_path):
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((8, 9, 3), dtype=np.uint8), photometric="rgb")
    assert message(read_labels, tmp_path / "rgb.tif") == (
        "Labels 'rgb.tif' have 3 channels; a label image holds one class value per pixel (0 = unlabelled, 1, 2, "
        "...), e.g. a napari Labels layer saved as TIFF."
    )
    (tmp_path / "empty.png").write_bytes(b"")
    assert (
        message(read_labels, tmp_path / "empty.png") == f"Could not read '{tmp_path / 'empty.png'}': the file is empty."
    )
    (tmp_path / "l.npz").write_bytes(b"x")
    assert message(read_labels, tmp_path / "l.npz") == (
        "'l.npz' is not a supported image (.tif, .tiff, .png, .jpg, .jpeg, .bmp)."
    )
    (tmp_path / "broken.tif").write_bytes(b"not a TIFF file at all")
    assert message(read_labels, tmp_path / "broken.tif").startswith(
        f"Could not read '{tmp_path / 'broken.tif'}' as TIFF (damaged, truncated or another format): "
    )


def test_expand_inputs_lists_folder_images_sorted_once(tmp_path):
    for name in ("b.tif", "a.PNG", "c.txt", "d.npy"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "e.tif").write_bytes(b"x")
    (tmp_path / "img.zarr").mkdir()
    assert expand_inputs([tmp_path, tmp_path / "b.tif", tmp_path / "img.zarr", tmp_path / "d.npy"]) == [
        tmp_path / "a.PNG", tmp_path / "b.tif", tmp_path / "img.zarr", tmp_path / "d.npy"
    ]  # fmt: skip
    with pytest.raises(InputError, match="^The input path"):
        expand_inputs(["x" * 300])


def test_stacks_and_planes_by_channel_count():
    assert not is_stack(np.zeros((20, 30))) and not is_stack(np.zeros((20, 30, 4)))
    assert is_stack(np.zeros((5, 20, 30))) and is_stack(np.zeros((2, 20, 30, 3)))
    assert not is_stack(np.zeros((20, 30, 13)), separate=True)  # narrower than any patch: channels
    assert is_stack(np.zeros((20, 30, 14)), separate=True) and is_stack(np.zeros((2, 20, 30, 5)), separate=True)
    assert planes(np.zeros((20, 30, 3))).shape == (1, 20, 30, 3)
    assert planes(np.zeros((20, 30, 5))).shape == (20, 30, 5)  # 20 planes of (30, 5) without separate
    assert planes(np.zeros((20, 30, 5)), separate=True).shape == (1, 20, 30, 5)
