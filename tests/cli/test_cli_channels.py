"""``--channel-mode separate`` on the command line: a multichannel, multi-plane OME-TIFF trained and segmented."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

import napari_hrdv2 as hr
from channel_images import five_channel_image, mirrored, strokes
from napari_hrdv2.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def opts(tiny_backbone) -> list[str]:
    return ["--backbone", tiny_backbone, "--device", "cpu", "--shifts", "neumann", "--distances", "3"]


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_separate_channels_train_and_segment_a_multichannel_stack(tmp_path, capsys, opts):
    image, truth = five_channel_image()
    other, other_truth = mirrored(image, truth)
    stack = np.stack([image, other])  # (Z, Y, X, C)
    tifffile.imwrite(tmp_path / "cells.ome.tif", np.moveaxis(stack, -1, 1), ome=True, metadata={"axes": "ZCYX"})
    labels = np.zeros((2, *truth.shape), dtype=np.uint8)
    labels[0] = strokes(truth)  # only the first plane is labelled
    tifffile.imwrite(tmp_path / "labels.tif", labels)
    model = tmp_path / "m.hrdv2"
    args = ["train", tmp_path / "cells.ome.tif", "--labels", tmp_path / "labels.tif", "-o", model, *opts]
    code, _, err = run(capsys, *args, "--tile-size", "none")
    assert code == 2 and "channel-mode separate" in err  # 5 channels: joint mode refuses and names the option
    code, stdout, _ = run(capsys, *args, "--tile-size", "none", "--channel-mode", "separate")
    assert code == 0 and "1 labelled plane" in stdout
    loaded = hr.LinearSegmenter.load(model)
    assert loaded.feature_config.channel_mode == "separate" and loaded.coef_.shape[1] == 5 * 128
    code, _, _ = run(capsys, "segment", tmp_path / "cells.ome.tif", "--model", model, "-o", tmp_path / "out")
    assert code == 0
    predicted = tifffile.imread(tmp_path / "out" / "cells.ome_labels.tif")
    assert predicted.shape == (2, 112, 112)
    assert (predicted[0] == truth).mean() > 0.95 and (predicted[1] == other_truth).mean() > 0.95
    # A subset of channels, in that order, is read the same way; a model refuses another channel count.
    tifffile.imwrite(tmp_path / "three.ome.tif", np.moveaxis(image[..., :3], -1, 0), ome=True, metadata={"axes": "CYX"})
    code, _, err = run(capsys, "segment", tmp_path / "three.ome.tif", "--model", model, "-o", tmp_path / "out")
    assert "trained on 5 channels separately; the image has 3" in err
    code, _, err = run(
        capsys, "segment", tmp_path / "cells.ome.tif", "--model", model, "-o", tmp_path / "sub", "--channels", "4,0"
    )
    assert "trained on 5 channels separately; the image has 2" in err
