"""Known answers for the clean-up settings a trained LinearSegmenter applies in ``predict`` (core.segmenter)."""

from __future__ import annotations

import numpy as np

import napari_hrdv2 as hr
from napari_hrdv2.core.segmentation.labels import clean_labels


def _speck_features() -> tuple[np.ndarray, np.ndarray]:
    """(2, 9, 9) features whose raw prediction is class 1 with one class-2 pixel at (4, 4), and those labels."""
    truth = np.ones((9, 9), dtype=np.uint8)
    truth[4, 4] = 2
    features = np.stack([truth == 1, truth == 2]).astype(np.float32)
    return features, truth


def test_predict_applies_each_majority_size():
    """majority_size 2 (a 2x2 window) already outvotes a single pixel; 0 and 1 leave the speck."""
    features, truth = _speck_features()
    model = hr.LinearSegmenter(l2=1e-3).fit(features, truth)
    np.testing.assert_array_equal(model.predict(features), truth)  # no clean-up: the speck stays
    for size in (0, 1, 2):
        model.majority_size = size  # a setting of predict only; the weights stay
        expected = clean_labels(truth, majority_size=size)
        np.testing.assert_array_equal(model.predict(features), expected)
    assert expected[4, 4] == 1  # size 2: the speck is gone
