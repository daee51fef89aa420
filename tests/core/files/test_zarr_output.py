"""Resumable Zarr outputs: chunk data reaches the disk before its done-marker, and a resume checks the
chunks it trusts (a torn chunk is computed again instead of being reported complete)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_hrdv2.core.files import lazy
from napari_hrdv2.core.files.lazy import ZarrOutput

JOB = {"model_sha256": "abc", "input": "x.tif"}


def output(tmp_path) -> ZarrOutput:
    return ZarrOutput(tmp_path / "x_labels.zarr", (1, 40, 50), "uint8", chunks=16, job=JOB, single=True)


def test_chunks_are_fsynced_before_their_marker(tmp_path, monkeypatch):
    events = []
    monkeypatch.setattr(lazy, "fsync_file", lambda path: events.append(("fsync", path.name)))
    real_write_text = lazy.write_text
    monkeypatch.setattr(
        lazy, "write_text", lambda path, *a, **k: (events.append(("marker", path.name)), real_write_text(path, *a, **k))
    )
    out = output(tmp_path).open()
    events.clear()
    out.write_rows(0, 0, np.ones((16, 50), np.uint8))
    assert [e for e in events if e[0] == "fsync"] == [("fsync", f"0.{c}") for c in range(4)]
    assert events[-1] == ("marker", "0_0")


@pytest.mark.parametrize("tear", ["truncate", "garbage"])
def test_a_torn_chunk_is_not_trusted_on_resume(tmp_path, tear):
    out = output(tmp_path).open()
    out.write_rows(0, 0, np.full((32, 50), 3, np.uint8))
    assert out.done_rows(0) == {0, 1}
    chunk = out.partial / "0" / "1.2"
    data = chunk.read_bytes()
    chunk.write_bytes(data[: len(data) // 2] if tear == "truncate" else bytes(len(data)))
    resumed = output(tmp_path).open()
    assert resumed.done_rows(0) == {0}  # chunk row 1 is computed again
    resumed.write_rows(0, 16, np.full((16, 50), 3, np.uint8))
    assert resumed.done_rows(0) == {0, 1}


def test_markers_of_older_versions_are_still_trusted(tmp_path):
    out = output(tmp_path).open()
    out.write_rows(0, 0, np.ones((16, 50), np.uint8))
    (out.partial / ".hrdv2_state" / "done" / "0_0").write_text("")
    assert output(tmp_path).open().done_rows(0) == {0}


def test_a_second_run_on_the_same_output_is_refused_while_the_first_runs(tmp_path, monkeypatch):
    import json
    import socket

    from napari_hrdv2.core.errors import InputError

    out = output(tmp_path).open()
    lock = out.partial / ".hrdv2_state" / lazy.LOCK_NAME
    assert output(tmp_path).open() is not None  # the same process: resumes
    lock.write_text(json.dumps({"pid": 4242, "host": socket.gethostname()}))
    monkeypatch.setattr(lazy, "process_alive", lambda pid: True)
    with pytest.raises(InputError, match="being written by another run"):
        output(tmp_path).open()
    assert out.partial.exists()
    monkeypatch.setattr(lazy, "process_alive", lambda pid: False)  # that run has ended: taken over
    output(tmp_path).open()
    assert json.loads(lock.read_text())["pid"] != 4242


@pytest.mark.parametrize(
    ("shape", "single", "channel_axis", "chunks"),
    [
        ((2, 20, 50), False, False, (1, 20, 32)),  # a stack of wide planes: rows clipped to the height
        ((2, 50, 20), False, False, (1, 32, 20)),  # tall planes: columns clipped to the width
        ((2, 3, 50, 20), False, True, (1, 3, 32, 20)),  # probabilities: the class axis whole
        ((1, 20, 50), True, False, (20, 32)),  # one image: no plane axis
    ],
)
def test_chunks_are_square_tiles_clipped_to_each_side_of_the_plane(tmp_path, shape, single, channel_axis, chunks):
    import zarr

    out = ZarrOutput(
        tmp_path / "x.zarr", shape, "uint8", chunks=32, job=JOB, single=single, channel_axis=channel_axis
    ).open()
    array = zarr.open_array(str(out.partial / "0"), mode="r")
    assert array.shape == (shape[1:] if single else shape) and array.chunks == chunks
