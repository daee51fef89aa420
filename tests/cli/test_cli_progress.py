"""The CLI's progress bars count whole items and give a readable pace (no raw floats)."""

from __future__ import annotations

import argparse
import io
import re

import pytest

from napari_hrdv2.cli.common import format_count, format_duration, format_pace, plural, progress_bar, status


@pytest.mark.parametrize(
    ("done", "total", "unit", "text"),
    [
        (4 / 3, 2, "image", "1/2 images"),
        (0.9999, 1, "image", "0/1 image"),
        (2.0000000001, 2.0, "image", "2/2 images"),
        (3, 9, "pass", "3/9 passes"),
        (5.5, None, "image", "5 images"),
        (7, 5, "image", "5/5 images"),
    ],
)
def test_counts_are_whole_numbers(done, total, unit, text):
    assert format_count(done, total, unit) == text


def test_durations_and_paces_are_in_sensible_units():
    assert format_duration(0.42) == "0.4 s"
    assert format_duration(12.4) == "12 s"
    assert format_duration(114.38) == "1 min 54 s"
    assert format_duration(2 * 3600 + 5 * 60 + 7) == "2 h 05 min"
    assert format_pace(1 / 114.38, "image") == "1 min 54 s/image"
    assert format_pace(3.21, "pass") == "3.2 passes/s"
    assert format_pace(None, "image") == "" and format_pace(0.0, "image") == ""
    assert plural("pass", 1) == "pass" and plural("image", 0) == "images"


def test_progress_bar_shows_no_raw_floats(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    args = argparse.Namespace(quiet=False, progress=True)
    bar = progress_bar(args, total=2, unit="image", desc="a.tif", mininterval=0)
    bar.update(4 / 3)
    line = str(bar)
    bar.close()
    assert "1/2 images" in line and "a.tif" in line
    assert not re.search(r"\d\.\d{3,}", line), line  # no 1.3333333333333333 nor 114.38s/image
    with status(args, "matching patches"):
        pass
    assert "matching patches..." in stream.getvalue()


def test_hidden_when_quiet(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    bar = progress_bar(argparse.Namespace(quiet=True, progress=True), total=3, unit="image")
    bar.update(1)
    bar.close()
    assert stream.getvalue() == ""
