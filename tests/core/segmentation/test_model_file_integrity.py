"""Model files: crafted metadata types and the integrity checksum (edited files refused, old files load)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

import napari_hrdv2 as hr
from napari_hrdv2.core.errors import ModelFileError
from napari_hrdv2.core.segmentation.model_file import CHECKSUM_KEY
from napari_hrdv2.core.segmentation.segmenter import LinearSegmenter


@pytest.fixture(scope="module")
def contents(tmp_path_factory):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(4, 16, 16)).astype(np.float32)
    labels = np.zeros((16, 16), np.uint8)
    labels[:, :4], labels[:, -4:] = 1, 2
    model = LinearSegmenter().fit(features, labels)
    model.feature_config = hr.FeatureConfig(backbone="some/backbone", shifts="none")
    model.class_names = {1: "cell", 2: "background"}
    path = model.save(tmp_path_factory.mktemp("m") / "m.hrdv2")
    with safe_open(str(path), framework="numpy") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}, dict(handle.metadata())  # noqa: SIM118


def write(tmp_path, contents, *, tensors=None, meta=None, drop=()):
    tensors_, meta_ = dict(contents[0]), dict(contents[1])
    tensors_.update(tensors or {})
    meta_.update(meta or {})
    for key in drop:
        meta_.pop(key, None)
    path = tmp_path / "x.hrdv2"
    save_file({k: np.ascontiguousarray(v) for k, v in tensors_.items()}, str(path), metadata=meta_)
    return path


def test_saved_models_carry_a_checksum_and_load(tmp_path, contents):
    assert len(contents[1][CHECKSUM_KEY]) == 64
    assert LinearSegmenter.load(write(tmp_path, contents)).class_names == {1: "cell", 2: "background"}


def test_edited_feature_settings_fail_the_integrity_check(tmp_path, contents):
    config = json.loads(contents[1]["feature_config"])
    config["shifts"] = "moore"
    with pytest.raises(ModelFileError, match="integrity check"):
        LinearSegmenter.load(write(tmp_path, contents, meta={"feature_config": json.dumps(config)}))


def test_edited_weights_fail_the_integrity_check(tmp_path, contents):
    coef = contents[0]["coef"] * 1.5
    with pytest.raises(ModelFileError, match="integrity check"):
        LinearSegmenter.load(write(tmp_path, contents, tensors={"coef": coef}))


def test_files_without_a_checksum_still_load(tmp_path, contents):
    model = LinearSegmenter.load(write(tmp_path, contents, drop=(CHECKSUM_KEY,)))
    assert model.classes_.tolist() == [1, 2]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("class_names", '["cell", "background"]'),
        ("class_names", '"cell"'),
        ("params", "[1, 2]"),
        ("feature_config", "[1]"),
        ("summary", "[1]"),
        ("summary", '{"pixels_per_class": [1, 2]}'),
    ],
)
def test_metadata_of_the_wrong_json_type_is_a_model_file_error(tmp_path, contents, key, value):
    with pytest.raises(ModelFileError, match="damaged"):
        LinearSegmenter.load(write(tmp_path, contents, meta={key: value}, drop=(CHECKSUM_KEY,)))
