"""The task a dask worker runs, run here in-process (mutation testing cannot see code run in worker processes).

``segment_file_task`` must return exactly the report of the single-process batch on its one input, with the
uncertainty map when asked for one.
"""

from __future__ import annotations

import hashlib

import numpy as np
import tifffile

import napari_hrdv2 as hr
from conftest import two_texture_image
from napari_hrdv2.core.scale.distributed import segment_file_task


def test_worker_task_reports_labels_and_uncertainty(tmp_path, tiny_config):
    image, truth = two_texture_image(56)
    tifffile.imwrite(tmp_path / "img.tif", image)
    config = tiny_config.replace(shifts="none")
    labels = np.zeros_like(truth)
    labels[5:-5, 10:13], labels[5:-5, 40:43] = 1, 2
    model = hr.LinearSegmenter().fit(hr.Featurizer(config).encode(image, with_attention=False), labels)
    model_path = model.save(tmp_path / "model.hrdv2")
    model_ref = (hashlib.sha256(model_path.read_bytes()).hexdigest(), str(model_path))
    out = tmp_path / "out"

    report = segment_file_task(str(tmp_path / "img.tif"), str(out), model_ref, config.to_dict(), ".tif", False, True)
    assert report == {
        "written": [str(out / "img_labels.tif")],
        "skipped": [],
        "failed": [],
        "extra": [str(out / "img_uncertainty.tif")],
        "notes": [],
    }
    assert tifffile.imread(out / "img_uncertainty.tif").shape == (56, 56)
    again = segment_file_task(str(tmp_path / "img.tif"), str(out), model_ref, config.to_dict(), ".tif", False, False)
    assert again == {"written": [], "skipped": [str(out / "img_labels.tif")], "failed": [], "extra": [], "notes": []}
