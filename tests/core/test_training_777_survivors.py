"""Tests for the survivors of a training mutation sample (seed 777, drawn at f698c51; not a held-out sample)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import tifffile

from napari_hrdv2.core.files import atomic
from napari_hrdv2.core.scale import streaming
from napari_hrdv2.core.scale.plan import LABELS_COMPRESSED_FRACTION, estimate_output_bytes


def test_stale_temporaries_of_ended_processes_are_removed_and_the_rest_kept(tmp_path):
    ended = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                               text=True).stdout)  # fmt: skip
    stale = tmp_path / atomic.temporary_name(tmp_path / "a.tif").name.replace(f".{os.getpid()}.", f".{ended}.")
    live = atomic.temporary_name(tmp_path / "b.tif")  # this process: still being written
    other_host = tmp_path / stale.name.replace(f".{atomic._host_tag()}.", ".elsewhere.")
    folder_named_so = tmp_path / stale.name.replace(".a.tif.", ".c.tif.")
    plain = tmp_path / "a.tif"
    for path in (stale, live, other_host, plain):
        path.write_bytes(b"x")
    folder_named_so.mkdir()
    assert atomic.remove_stale_temporaries(tmp_path) == [stale]
    assert not stale.exists() and all(p.exists() for p in (live, other_host, plain, folder_named_so))
    assert atomic.remove_stale_temporaries(tmp_path / "missing") == []


def test_only_images_above_the_streaming_size_count_their_output_twice(tmp_path, monkeypatch):
    path = tmp_path / "x.tif"
    tifffile.imwrite(path, np.zeros((32, 64), np.uint8))
    once = int(np.ceil(32 * 64 * LABELS_COMPRESSED_FRACTION))
    monkeypatch.setattr(streaming, "STREAM_PIXELS", 32 * 64)  # exactly at the limit: segmented in memory
    (only,) = estimate_output_bytes([path], tmp_path / "out", ".tif").values()
    monkeypatch.setattr(streaming, "STREAM_PIXELS", 32 * 64 - 1)  # above it: a Zarr, then the TIFF
    (streamed,) = estimate_output_bytes([path], tmp_path / "out", ".tif").values()
    assert (only, streamed) == (once, 2 * once)
    (zarr_output,) = estimate_output_bytes([path], tmp_path / "out", ".zarr").values()
    assert zarr_output == once
