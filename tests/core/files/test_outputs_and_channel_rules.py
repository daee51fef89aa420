"""Output names, batch reports and the channel rules of the readers: defaults, every message, every branch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_hrdv2.core.errors import InputError
from napari_hrdv2.core.files.images import ChannelChoice, choose_channels, parse_channels
from napari_hrdv2.core.files.outputs import (
    BatchReport,
    label_suffix,
    output_path,
    path_key,
    without_outputs,
)


def test_output_names_default_to_labels_next_to_the_input_and_formats_are_normalised(tmp_path):
    assert output_path("data/cells.ome.tif", None, ".tif") == Path("data/cells.ome_labels.tif")
    assert output_path("data/cells.tif", tmp_path, ".png", "_pca") == tmp_path / "cells_pca.png"
    assert [label_suffix(s) for s in ("tif", ".TIFF", "tiff", "PNG", ".zarr")] == [
        ".tif",
        ".tif",
        ".tif",
        ".png",
        ".zarr",
    ]
    with pytest.raises(InputError) as caught:
        label_suffix("JPG")
    assert str(caught.value) == "Label images are written as .tif or .png or .zarr, not '.jpg'."
    assert path_key(tmp_path / "a" / ".." / "b.tif") == (tmp_path / "b.tif").resolve()


def test_outputs_of_other_inputs_are_left_out_only_where_the_outputs_go(tmp_path):
    paths = [tmp_path / n for n in ("a.tif", "a_labels.tif", "a_uncertainty.tif", "b_labels.tif", "c.png")]
    names = [("_labels", ".tif"), ("_uncertainty", ".tif")]
    assert without_outputs(paths, None, names) == [paths[0], paths[3], paths[4]]  # b.tif is not an input
    assert without_outputs(paths, tmp_path, names) == [paths[0], paths[3], paths[4]]
    assert without_outputs(paths, tmp_path / "out", names) == paths  # outputs elsewhere: all are inputs


def test_batch_report_summary_counts_and_reasons():
    report = BatchReport()
    assert report.ok and report.summary() == "Wrote 0 label image(s)."
    report.written.append(Path("a_labels.tif"))
    report.skipped.append(Path("b_labels.tif"))
    assert report.summary() == "Wrote 1 label image(s), skipped 1 existing (pass overwrite=True to replace them)."
    assert report.summary("tick Overwrite") == "Wrote 1 label image(s), skipped 1 existing (tick Overwrite)."
    report.failed.extend((Path(f"dir/{n}.tif"), f"bad {n}") for n in "cdef")
    assert not report.ok
    assert report.summary() == (
        "Wrote 1 label image(s), skipped 1 existing (pass overwrite=True to replace them), "
        "4 failed (c.tif: bad c; d.tif: bad d; e.tif: bad e...)."
    )
    del report.failed[3:]
    assert report.summary().endswith(", 3 failed (c.tif: bad c; d.tif: bad d; e.tif: bad e).")


def test_parse_channels_takes_at_most_three_by_default():
    assert parse_channels(2) == (2,) and parse_channels(2.0) == (2,) and parse_channels(np.int64(1)) == (1,)
    assert parse_channels("0 2") == (0, 2) and parse_channels([2, 1, 0]) == (2, 1, 0)
    assert parse_channels("0,1,2,3", at_most=None) == (0, 1, 2, 3)
    with pytest.raises(InputError) as caught:
        parse_channels("0,1,2,3")
    assert str(caught.value) == (
        "Choose one channel (grey), two (red and green) or three (RGB), numbered from 0; got '0,1,2,3'. "
        "To use more, encode every channel on its own: channel_mode='separate' (--channel-mode separate)."
    )
    with pytest.raises(InputError, match="at_most|Choose one channel"):
        parse_channels([0, 1], at_most=1)
    with pytest.raises(InputError) as caught:
        parse_channels(1.5)
    assert str(caught.value) == "Channels must be whole numbers such as 0 or 0,2 (0-based), got 1.5."
    with pytest.raises(InputError) as caught:
        parse_channels("-1")
    assert str(caught.value) == "Choose channels numbered from 0, such as 0 or 0,2; got '-1'."
    with pytest.raises(InputError, match="numbered from 0"):
        parse_channels(" , ")


def test_default_channel_rules_and_their_notes():
    assert choose_channels(None, None, False, None, "g.tif") is None  # grey, as stored
    assert choose_channels(1, "C", False, None, "one.tif") == ChannelChoice((0,))
    assert choose_channels(3, "S", False, None, "rgb.png") == ChannelChoice((0, 1, 2))  # RGB samples: no note
    assert choose_channels(3, "C", False, None, "c3.tif") == ChannelChoice(
        (0, 1, 2), "'c3.tif': using its 3 channels (C axis) as RGB."
    )
    assert choose_channels(2, "S", True, None, "ga.png") == ChannelChoice(
        (0,), "'ga.png': dropped the alpha channel; using grey."
    )
    assert choose_channels(4, "S", True, None, "rgba.png") == ChannelChoice(
        (0, 1, 2), "'rgba.png': dropped the alpha channel; using RGB."
    )
    for n in (2, 4, 5):
        with pytest.raises(InputError) as caught:
            choose_channels(n, "C", False, None, "multi.tif")
        assert str(caught.value) == (
            f"'multi.tif' has {n} channels (C axis); HR-Dv2 uses grey or RGB images. Choose the one, two or three "
            "to use with channels= (command line: --channels 0 or --channels 0,2), or encode every channel on its "
            "own: channel_mode='separate' (--channel-mode separate)."
        )


def test_chosen_channels_say_what_is_used_and_refuse_channels_out_of_range():
    assert choose_channels(5, "C", False, "3", "f.tif") == ChannelChoice(
        (3,), "'f.tif': using channel 3 of 5 (C axis) as grey."
    )
    assert choose_channels(5, "C", False, [4, 0], "f.tif").note == (
        "'f.tif': using channels 4, 0 of 5 (C axis) as red and green (blue empty)."
    )
    assert (
        choose_channels(5, "last", False, "0,1,2", "f.npy").note
        == "'f.npy': using channels 0, 1, 2 of 5 (last axis) as RGB."
    )
    assert choose_channels(None, None, False, [0, 0], "g.tif") is None  # channel 0 of a grey image: itself
    with pytest.raises(InputError) as caught:
        choose_channels(5, "C", False, [1, 5], "f.tif")
    assert str(caught.value) == "Channel 5 is out of range: 'f.tif' has 5 channels (C axis), numbered 0..4."
    with pytest.raises(InputError) as caught:
        choose_channels(None, None, False, 1, "g.tif")
    assert str(caught.value) == "Channel 1 is out of range: 'g.tif' has one channel (numbered 0)."
    with pytest.raises(InputError, match="has one channel"):
        choose_channels(1, "C", False, 1, "one.tif")


def test_separate_channels_keep_every_chosen_channel():
    assert choose_channels(6, "C", False, None, "six.tif", separate=True) == ChannelChoice(tuple(range(6)), None, True)
    assert choose_channels(4, "S", True, None, "rgba.png", separate=True) == ChannelChoice(
        (0, 1, 2), "'rgba.png': dropped the alpha channel.", True
    )
    assert choose_channels(6, "C", False, "5,0,1,2", "six.tif", separate=True) == ChannelChoice(
        (5, 0, 1, 2), "'six.tif': encoding channels 5, 0, 1, 2 of 6 (C axis) separately.", True
    )
    assert choose_channels(None, None, False, None, "g.tif", separate=True) is None
    assert choose_channels(None, None, False, 0, "g.tif", separate=True) is None
    assert choose_channels(None, None, False, [0, 0], "g.tif", separate=True) == ChannelChoice((0, 0), None, True)
    with pytest.raises(InputError) as caught:
        choose_channels(6, "C", False, [6], "six.tif", separate=True)
    assert str(caught.value) == "Channel 6 is out of range: 'six.tif' has 6 channel(s) (C axis), numbered 0..5."


def test_channel_choice_shapes():
    data = np.arange(2 * 3 * 5, dtype=np.float32).reshape(2, 3, 5)
    grey = ChannelChoice((4,))
    assert not grey.colour and grey.n_out == 0
    np.testing.assert_array_equal(grey.apply(data), data[..., 4])
    pair = ChannelChoice((3, 1))
    assert pair.colour and pair.n_out == 3
    rgb = pair.apply(data)
    assert rgb.shape == (2, 3, 3) and rgb.flags.c_contiguous
    np.testing.assert_array_equal(rgb[..., :2], data[..., [3, 1]])
    np.testing.assert_array_equal(rgb[..., 2], data[..., 1])  # blue = the lower of the two: min-max unchanged
    kept = ChannelChoice((4, 0, 2, 1), separate=True)
    assert kept.colour and kept.n_out == 4
    np.testing.assert_array_equal(kept.apply(data), data[..., [4, 0, 2, 1]])
    assert ChannelChoice((2,), separate=True).n_out == 0
