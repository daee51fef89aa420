"""core/atomic.py: outputs appear complete or not at all; a previous file survives a failed replacement."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_hrdv2.core.errors import InputError, OutputError
from napari_hrdv2.core.files import atomic


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(atomic.PART_SUFFIX))


def test_failure_inside_the_block_keeps_the_previous_file(tmp_path):
    target = tmp_path / "out.bin"
    atomic.write_bytes(target, b"good")
    with pytest.raises(RuntimeError, match="boom"), atomic.atomic_path(target, overwrite=True) as temporary:
        temporary.write_bytes(b"half")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"good"
    assert leftovers(tmp_path) == []


def test_existing_file_needs_overwrite_and_folder_is_refused(tmp_path):
    target = atomic.write_json(tmp_path / "a.json", {"x": 1})
    with pytest.raises(InputError, match="already exists"):
        atomic.write_json(target, {"x": 2})
    for write in (atomic.write_text, atomic.write_bytes):  # every writer refuses by default
        with pytest.raises(InputError, match="already exists"):
            write(target, "y" if write is atomic.write_text else b"y")
    with pytest.raises(InputError, match="already exists"):
        atomic.write_npy(target, np.zeros(2))
    with pytest.raises(InputError, match="already exists"):
        atomic.write_tif(target, np.zeros((2, 2), np.uint8))
    atomic.write_json(target, {"x": 2}, overwrite=True)
    assert '"x": 2' in target.read_text()
    with pytest.raises(InputError, match="is a folder"):
        atomic.write_bytes(tmp_path, b"", overwrite=True)


def test_full_disk_is_an_output_error_and_keeps_the_previous_file(tmp_path, monkeypatch):
    target = atomic.write_npy(tmp_path / "f.npy", np.arange(3))

    def no_space(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "save", no_space)
    with pytest.raises(OutputError, match="No space left"):
        atomic.write_npy(target, np.arange(5), overwrite=True)
    monkeypatch.undo()
    np.testing.assert_array_equal(np.load(target), np.arange(3))
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("suffix", [".npy", ".tif"])
def test_stream_writer_round_trip_and_incomplete_is_refused(tmp_path, suffix):
    data = np.random.default_rng(0).random((2, 3, 5, 7)).astype(np.float32)
    target = tmp_path / f"features{suffix}"
    with atomic.ArrayStreamWriter(target, data.shape, np.float32) as out:
        for plane in data:
            out.write(plane[:2])
            out.write(plane[2:])
        out.commit()
    read = np.load(target) if suffix == ".npy" else tifffile.imread(target)
    np.testing.assert_array_equal(read, data)
    with atomic.ArrayStreamWriter(target, data.shape, np.float32, overwrite=True) as out:
        out.write(data[0])
        with pytest.raises(OutputError, match="only"):
            out.commit()
    read = np.load(target) if suffix == ".npy" else tifffile.imread(target)
    np.testing.assert_array_equal(read, data)  # the incomplete array never replaced the good one
    assert leftovers(tmp_path) == []


class FullDisk:
    """A file handle whose writes fail as on a full disk."""

    closed = False

    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    def close(self):
        self.closed = True


def test_stream_writer_full_disk_is_an_error_not_sigbus(tmp_path):
    out = atomic.ArrayStreamWriter(tmp_path / "f.npy", (4, 4), np.float32)
    out._handle.close()
    out._handle = FullDisk()
    with pytest.raises(OutputError, match="No space left"):
        out.write(np.zeros((4, 4)))
    assert not (tmp_path / "f.npy").exists()
    assert leftovers(tmp_path) == []


def test_stream_writer_refuses_too_much_and_too_little_data(tmp_path):
    """Known answers: 6 values fit a (2, 3) array, a 7th is refused by name; 3 of 6 values never become a file."""
    with atomic.ArrayStreamWriter(tmp_path / "f.npy", (2, 3), np.float32) as out:
        out.write(np.zeros((1, 3)))
        with pytest.raises(ValueError, match=r"^Too much data for an array of shape \(2, 3\)\.$"):
            out.write(np.zeros(4))
        with pytest.raises(OutputError, match="only 12 of 24 bytes were produced"):
            out.commit()
    assert not (tmp_path / "f.npy").exists() and leftovers(tmp_path) == []


def test_check_output_folder(tmp_path, monkeypatch):
    assert atomic.check_output_folder(tmp_path / "new" / "sub").is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        atomic.check_output_folder(tmp_path / "file")
    with pytest.raises(OutputError, match="Not enough room"):
        atomic.check_output_folder(tmp_path, needed_bytes=1 << 62)
    real_open = open

    def read_only(path, mode="r", *args, **kwargs):
        if "x" in mode and str(path).startswith(str(tmp_path)):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", read_only)
    with pytest.raises(OutputError, match="read-only"):
        atomic.check_output_folder(tmp_path)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".part")]


# A process that is killed (SIGKILL, nothing runs after it) in the middle of writing a file.
_KILLED_WRITER = """
import os, signal, sys
from napari_hrdv2.core.files import atomic
with atomic.atomic_path(sys.argv[1]) as temporary:
    temporary.write_bytes(b"half of a result")
    print(temporary, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_temporaries_of_killed_processes_are_removed_by_the_next_write(tmp_path):
    import signal
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(tmp_path / "result.bin")],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == -signal.SIGKILL, done.stderr
    left = Path(done.stdout.strip())
    assert left.exists() and not (tmp_path / "result.bin").exists()
    assert f".{atomic._host_tag()}." in left.name  # the owner: this computer ...
    pid = int(left.name.split(".")[-3])  # ... and the dead writer's process id
    # What must survive the clean-up: a temporary of this (live) process, one of another computer,
    # files that only look similar, and a resumable streaming output folder.
    ours = atomic.temporary_name(tmp_path / "mine.bin")
    ours.write_bytes(b"being written")
    other_host = tmp_path / f".x.bin.some-other-host.{pid}.0123abcd.part"
    unrelated = [tmp_path / ".x.bin.0123abcd.part", tmp_path / "notes.part", tmp_path / f".x.{pid}.part"]
    dead_folder = tmp_path / f".y.bin.{atomic._host_tag()}.{pid}.0123abcd.part"  # a folder: not ours to delete
    partial = tmp_path / "cells_labels.zarr.partial"
    for path in [other_host, *unrelated]:
        path.write_bytes(b"keep")
    dead_folder.mkdir()
    partial.mkdir()
    atomic.write_bytes(tmp_path / "next.bin", b"next run")
    assert not left.exists()
    survivors = [ours, other_host, *unrelated, dead_folder, partial, tmp_path / "next.bin"]
    assert all(path.exists() for path in survivors)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in survivors)


def test_temporary_names_of_long_names_stay_within_the_name_limit(tmp_path):
    long_name = "x" * 250 + ".tif"
    temporary = atomic.temporary_name(tmp_path / long_name)
    assert len(temporary.name.encode()) <= 255
    assert atomic._TEMPORARY_PATTERN.match(temporary.name)
    temporary.write_bytes(b"ok")  # the file system accepts it


def test_temporary_name_shortens_only_names_that_do_not_fit(tmp_path):
    """Known answer: a name that just fits the 255-byte limit is kept whole; one byte more loses its last character."""
    tail_bytes = len(atomic.temporary_name(tmp_path / "x").name.encode()) - len(".x")  # ".<host>.<pid>.<hex>.part"
    fits = "y" * (255 - len(".") - tail_bytes)
    kept = atomic.temporary_name(tmp_path / fits)
    assert kept.name.startswith(f".{fits}.") and len(kept.name.encode()) == 255
    shortened = atomic.temporary_name(tmp_path / (fits + "z"))
    assert shortened.name.startswith(f".{fits}.") and len(shortened.name.encode()) == 255


def test_sizes_in_messages_are_exact(tmp_path, monkeypatch):
    expected = {0: "0 bytes", 1023: "1023 bytes", 1024: "1.0 KiB", 1536: "1.5 KiB", 5 * 1024**2: "5.0 MiB",
                5 * 1024**3: "5.0 GiB", 3 * 1024**4: "3072.0 GiB"}  # fmt: skip
    assert {n: atomic._size(n) for n in expected} == expected
    real = atomic.shutil.disk_usage
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda path: real(path)._replace(free=1024))
    with pytest.raises(OutputError, match=r"need about 3\.0 MiB but only 1\.0 KiB is free"):
        atomic.check_output_folder(tmp_path, 3 * 1024**2)


def test_json_text_and_npy_without_pickle(tmp_path):
    path = atomic.write_json(tmp_path / "a.json", {"a": [1]})
    assert path.read_text() == '{\n  "a": [\n    1\n  ]\n}\n'  # indent 2, one final newline
    with pytest.raises(ValueError, match="allow_pickle"):  # object arrays would need pickle: never written
        atomic.write_npy(tmp_path / "o.npy", np.array([{"x": 1}], dtype=object))
    assert leftovers(tmp_path) == [] and not (tmp_path / "o.npy").exists()


def test_an_output_never_resolves_to_an_input(tmp_path):
    source = tmp_path / "in.tif"
    source.write_bytes(b"x")
    os.link(source, tmp_path / "hard.tif")
    (tmp_path / "soft.tif").symlink_to(source)
    (tmp_path / "in.zarr").mkdir()
    for output in (source, tmp_path / "hard.tif", tmp_path / "soft.tif", tmp_path / "sub" / ".." / "in.tif"):
        with pytest.raises(InputError, match="destroy"):
            atomic.check_not_an_input(output, [source])
    with pytest.raises(InputError, match="inside it"):
        atomic.check_not_an_input(tmp_path / "in.zarr" / "labels.zarr", [tmp_path / "in.zarr"])
    atomic.check_not_an_input(tmp_path / "in_labels.tif", [source, tmp_path / "in.zarr"])  # a neighbour is fine


def test_outputs_of_other_inputs_are_not_inputs(tmp_path):
    from napari_hrdv2.core.files.outputs import PCA_TAG, without_outputs

    paths = [tmp_path / "x.png", tmp_path / "x_pca.png", tmp_path / "y_pca.png"]
    names = [(PCA_TAG, ".png")]
    assert without_outputs(paths, None, names) == [tmp_path / "x.png", tmp_path / "y_pca.png"]
    assert without_outputs(paths, tmp_path / "elsewhere", names) == paths


def test_check_output_folder_names_the_reason_a_folder_cannot_be_made(tmp_path):
    """A folder below a file cannot be made (ENOTDIR): the message gives the system's reason in words, without
    Python's ``[Errno 20] ...: 'path'`` form, and names the folder once.

    Mutation killed: ``err.strerror or err`` -> ``err.strerror and err`` (the raw exception text).
    """
    (tmp_path / "file").write_text("x")
    folder = tmp_path / "file" / "out"
    with pytest.raises(OutputError) as caught:
        atomic.check_output_folder(folder)
    assert str(caught.value) == f"Cannot create the output folder '{folder}': {os.strerror(errno.ENOTDIR)}."
