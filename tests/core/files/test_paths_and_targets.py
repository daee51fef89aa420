"""User paths and output targets: the default wording and error class, and the messages of every refusal."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from napari_hrdv2.core.errors import InputError, OutputError
from napari_hrdv2.core.files.atomic import check_not_an_input, check_target, resolves_to_input, same_file
from napari_hrdv2.core.files.lazy import is_lazy_path
from napari_hrdv2.core.files.paths import NAME_MAX, PATH_MAX, check_path


def test_check_path_names_the_part_no_file_system_can_hold():
    assert check_path("a/b.tif") == Path("a/b.tif")
    with pytest.raises(InputError) as caught:
        check_path("a\0b.tif")
    assert str(caught.value) == "The path 'a\\x00b.tif' contains a NUL character; no file can have that name."
    long_name = "n" * (NAME_MAX + 1)
    with pytest.raises(OutputError) as caught:
        check_path(f"out/{long_name}.tif", "label image", error=OutputError)
    assert str(caught.value) == (
        f"The label image path 'out/{'n' * 56}...{'n' * 26}.tif' has a name of {NAME_MAX + 5} bytes "
        f"('{'n' * 20}...{'n' * 6}.tif'); file systems allow at most {NAME_MAX} bytes per file or folder name. "
        "Use a shorter name."
    )
    check_path("é" * (NAME_MAX // 2))  # 254 bytes: fits
    with pytest.raises(InputError, match=f"has a name of {NAME_MAX + 1} bytes"):
        check_path("é" * (NAME_MAX // 2) + "x" * 2)  # counted in bytes, not characters
    deep = "/".join(["d" * 200] * (PATH_MAX // 200 + 1))
    with pytest.raises(InputError) as caught:
        check_path(deep, "image")
    assert str(caught.value) == (
        f"The image path '{deep[:60]}...{deep[-30:]}' is {len(deep)} bytes long; paths may have at most "
        f"{PATH_MAX} bytes."
    )


def test_check_target_refuses_folders_and_existing_files_unless_overwritten(tmp_path):
    target = tmp_path / "out.tif"
    assert check_target(str(target)) == target
    target.write_bytes(b"x")
    with pytest.raises(InputError) as caught:
        check_target(target)
    assert str(caught.value) == f"'{target}' already exists; pass overwrite=True (--overwrite) to replace it."
    assert check_target(target, overwrite=True) == target
    with pytest.raises(InputError) as caught:
        check_target(tmp_path, overwrite=True)
    assert str(caught.value) == f"The output '{tmp_path}' is a folder; give a file name."
    with pytest.raises(InputError, match="^The model file '.*' is a folder"):
        check_target(tmp_path, what="model file")
    with pytest.raises(InputError, match="^The model file path"):
        check_target(tmp_path / ("m" * 300), what="model file")


def test_outputs_that_would_alter_an_input(tmp_path):
    source = tmp_path / "in.tif"
    source.write_bytes(b"x")
    link = tmp_path / "link.tif"
    os.symlink(source, link)
    hard = tmp_path / "hard.tif"
    os.link(source, hard)
    assert same_file(link, source) and same_file(hard, source) and same_file(tmp_path / "x" / ".." / "in.tif", source)
    assert not same_file(tmp_path / "other.tif", source)
    folder = tmp_path / "in.zarr"
    assert resolves_to_input(folder / "0" / "labels.tif", folder)  # inside an input folder
    assert resolves_to_input(tmp_path, source)  # a folder output holding the input
    assert not resolves_to_input(tmp_path / "in_labels.tif", source)
    with pytest.raises(InputError) as caught:
        check_not_an_input(hard, [tmp_path / "a.tif", source])
    assert str(caught.value) == (
        f"-o '{hard}' is the input '{source}' (or inside it, or a link to it); writing there would destroy it "
        "(also with --overwrite). Choose another output file."
    )
    with pytest.raises(InputError, match="^--output '"):
        check_not_an_input(link, [source], option="--output")


def test_lazy_inputs_are_zarr_folders_and_npy_files():
    assert is_lazy_path("a.zarr") and is_lazy_path(Path("x/A.ZARR")) and is_lazy_path("f.NPY")
    assert not any(is_lazy_path(p) for p in ("a.tif", "a.tiff", "zarr", "a.zarr.tif", "a.npz"))
