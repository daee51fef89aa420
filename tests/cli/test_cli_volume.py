"""``napari-hrdv2 train --volume`` on a 3D TIFF with 3D labels, and ``segment`` with the volume model."""

from __future__ import annotations

import numpy as np
import tifffile

import napari_hrdv2 as hr
from napari_hrdv2.cli import main


def test_train_and_segment_a_volume(tmp_path, capsys, tiny_backbone):
    rng = np.random.default_rng(0)
    volume = (rng.random((16, 18, 17)) * 200).astype(np.uint8)
    volume[:, :, 9:] += 50  # brighter on one side
    labels = np.zeros(volume.shape, dtype=np.uint8)
    labels[4, 3:15, 2:4] = 1
    labels[:, 9, 13] = 2  # a stroke along z, as painted in an XZ view
    tifffile.imwrite(tmp_path / "vol.tif", volume)
    tifffile.imwrite(tmp_path / "vol_strokes.tif", labels)
    opts = ["--backbone", tiny_backbone, "--device", "cpu", "--shifts", "neumann", "--distances", "3", "--tile-size",
            "none", "--volume", "--spacing", "1.5", "1", "1"]  # fmt: skip
    model = tmp_path / "vol.hrdv2"
    train = ["train", tmp_path / "vol.tif", "--labels", tmp_path / "vol_strokes.tif", "-o", model, *opts]
    assert main([str(a) for a in train]) == 0
    assert "16 labelled plane(s)" in capsys.readouterr().out  # the XY planes 0..15 hold labels
    loaded = hr.LinearSegmenter.load(model)
    assert loaded.feature_config.volume is True
    segment = ["segment", tmp_path / "vol.tif", "--model", model, "-o", tmp_path / "out", "--spacing", "1.5", "1", "1"]
    assert main([str(a) for a in segment]) == 0
    written = tifffile.imread(tmp_path / "out" / "vol_labels.tif")
    expected = hr.predict_stack(loaded, volume, spacing=(1.5, 1, 1))
    assert written.shape == (16, 18, 17)
    np.testing.assert_array_equal(written, expected)
    # Without --volume the model refuses plane-by-plane features.
    flat = ["segment", tmp_path / "vol.tif", "--model", model, "--no-volume", "-o", tmp_path / "flat"]
    assert main([str(a) for a in flat]) == 2
    assert "volume" in capsys.readouterr().err
