"""Tests for the survivors of the training mutation sample (seed 555 at a48f1ef, benchmarks/README.md).

Each asserts documented behaviour that a surviving mutant broke: a streamed probabilities output keeps its
class axis, a whole-image encode reports what it is doing, and a missing input file is named as a file.
"""

from __future__ import annotations

import numpy as np
import pytest
import zarr

import napari_hrdv2 as hr
from napari_hrdv2.core.errors import InputError
from napari_hrdv2.core.files.paths import check_input_file
from napari_hrdv2.core.progress import Progress


def test_streamed_probabilities_keep_their_class_axis(tmp_path, tiny_backbone):
    rng = np.random.default_rng(0)
    image = (rng.random((70, 60)) * 255).astype(np.uint8)
    image[:, 30:] //= 4
    config = hr.FeatureConfig(backbone=tiny_backbone, shifts="none", dtype="float32", tile_size=56, tile_overlap=14)
    featurizer = hr.Featurizer(config)
    encoding = featurizer.encode(image, with_attention=False)
    labels = np.zeros(image.shape, np.uint8)
    labels[:, :5], labels[:, -5:] = 1, 2
    model = hr.LinearSegmenter().fit(encoding, labels)
    out = tmp_path / "p.zarr"
    hr.stream_segment(model, image, {"probabilities": out}, featurizer=featurizer, chunk=32)
    group = zarr.open_group(str(out), mode="r")
    stored = group["0"][:]
    assert stored.shape == (2, 70, 60) and stored.dtype == np.float32
    np.testing.assert_allclose(stored, model.predict_proba(encoding), rtol=1e-4, atol=1e-5)
    axes = [axis["name"] for axis in group.attrs["multiscales"][0]["axes"]]
    assert axes == ["c", "y", "x"]


def test_a_whole_image_encode_says_it_is_encoding(tiny_backbone):
    config = hr.FeatureConfig(backbone=tiny_backbone, shifts="none", dtype="float32")
    steps = hr.Featurizer(config).iter_encode(np.zeros((28, 28), np.uint8) + np.arange(28, dtype=np.uint8))
    first = next(steps)
    steps.close()
    assert isinstance(first, Progress) and first.message == "encoding" and first.done == 0


def test_a_missing_input_file_is_named_a_file_by_default(tmp_path):
    with pytest.raises(InputError, match=r"^file '.*missing\.tif' does not exist\.$"):
        check_input_file(tmp_path / "missing.tif")
