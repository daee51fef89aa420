"""Lazy inputs: which array of a Zarr folder is the image (OME-Zarr metadata, one array, one group, "0")."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from napari_hrdv2.core.errors import InputError
from napari_hrdv2.core.files.lazy import open_lazy


def _ramp(shape: tuple[int, ...], offset: int = 0) -> np.ndarray:
    return (np.arange(np.prod(shape)).reshape(shape) + offset).astype(np.uint16)


def test_a_group_holding_one_plain_array_is_that_array(tmp_path):
    """No OME metadata and one array not named "0": it is the image."""
    group = zarr.open_group(str(tmp_path / "one.zarr"), mode="w")
    group.create_array("data", shape=(6, 5), dtype="uint16")[:] = _ramp((6, 5))
    np.testing.assert_array_equal(np.asarray(open_lazy(tmp_path / "one.zarr")[:]), _ramp((6, 5)))


def test_a_group_holding_one_group_is_read_through_it(tmp_path):
    group = zarr.open_group(str(tmp_path / "nested.zarr"), mode="w")
    group.create_group("inner").create_array("data", shape=(4, 3), dtype="uint16")[:] = _ramp((4, 3), 7)
    np.testing.assert_array_equal(np.asarray(open_lazy(tmp_path / "nested.zarr")[:]), _ramp((4, 3), 7))


def test_of_several_plain_arrays_the_one_named_0_is_the_image(tmp_path):
    group = zarr.open_group(str(tmp_path / "levels.zarr"), mode="w")
    group.create_array("1", shape=(2, 2), dtype="uint16")[:] = _ramp((2, 2), 100)
    group.create_array("0", shape=(4, 4), dtype="uint16")[:] = _ramp((4, 4))
    np.testing.assert_array_equal(np.asarray(open_lazy(tmp_path / "levels.zarr")[:]), _ramp((4, 4)))


def test_several_plain_arrays_without_0_are_refused_with_the_way_out(tmp_path):
    group = zarr.open_group(str(tmp_path / "two.zarr"), mode="w")
    group.create_array("a", shape=(2, 2), dtype="uint16")
    group.create_array("b", shape=(2, 2), dtype="uint16")
    with pytest.raises(InputError, match=r"2 arrays and no OME-Zarr metadata: give the path of one array"):
        open_lazy(tmp_path / "two.zarr")
