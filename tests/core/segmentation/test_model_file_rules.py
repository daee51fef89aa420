"""Model files, entry by entry: what a record writes, how each damaged or foreign entry is named, the refinement
of old and new format versions, and the shape / dtype / value rules of a loadable model."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from napari_hrdv2.core.config import FeatureConfig
from napari_hrdv2.core.errors import ModelFileError
from napari_hrdv2.core.segmentation.model_file import (
    CHECKSUM_KEY,
    FORMAT_NAME,
    FORMAT_VERSION,
    HEAD_KINDS,
    REFINE_VERSION,
    ModelRecord,
    check_head,
    check_record,
    integrity_problem,
    read_model_file,
    record_from_contents,
    record_to_contents,
    refine_params,
    write_model_file,
)
from napari_hrdv2.core.segmentation.segmenter import LinearSegmenter


def message(call, *args, **kwargs) -> str:
    with pytest.raises(ModelFileError) as caught:
        call(*args, **kwargs)
    return str(caught.value)


def record(**changes) -> ModelRecord:
    base = ModelRecord(
        params=LinearSegmenter().get_params(),
        coef=np.arange(6, dtype=np.float32).reshape(2, 3),
        intercept=np.array([0.5, -0.5], np.float32),
        classes=np.array([1, 4]),
        n_hr_features=3,
    )
    return dataclasses.replace(base, **changes)


def test_constants():
    assert (FORMAT_VERSION, REFINE_VERSION, FORMAT_NAME) == (2, 2, "napari-hrdv2-linear-segmenter")
    assert HEAD_KINDS == ("linear", "mlp") and CHECKSUM_KEY == "checksum"


def test_contents_of_a_plain_record_and_back():
    tensors, meta = record_to_contents(record())
    assert sorted(tensors) == ["classes", "coef", "intercept"]
    assert tensors["classes"].dtype == np.int64 and tensors["coef"].dtype == np.float32
    assert meta["format"] == FORMAT_NAME and meta["format_version"] == "2" and meta["n_hr_features"] == "3"
    assert json.loads(meta["feature_config"]) is None and json.loads(meta["summary"]) is None
    assert "class_names" not in meta and "head" not in meta and "channels" not in meta
    assert "backbone_family" not in meta and "backbone_weights" not in meta and len(meta[CHECKSUM_KEY]) == 64
    back = record_from_contents(tensors, meta, name="m")
    assert back.head == "linear" and back.integrity_error is None and back.class_names == {}
    assert back.channels is None and back.backbone_family is None and back.summary is None
    np.testing.assert_array_equal(back.coef, record().coef)
    assert integrity_problem(tensors, meta) is None
    full = record(
        class_names={4: "cell"}, channels=(0, 2), backbone_family="dinov2", feature_config=FeatureConfig(shifts="none"),
        summary={"pixels_per_class": {1: 3, 4: 5}, "n_images": 1},
        backbone_fingerprint=np.ones(3, np.float32),
    )  # fmt: skip
    tensors, meta = record_to_contents(full)
    assert json.loads(meta["class_names"]) == {"4": "cell"} and json.loads(meta["channels"]) == [0, 2]
    assert meta["backbone_family"] == "dinov2" and len(meta["backbone_weights"]) > 0
    back = record_from_contents(tensors, meta, name="m")
    assert back.class_names == {4: "cell"} and back.channels == (0, 2) and back.backbone_family == "dinov2"
    assert back.summary["pixels_per_class"] == {1: 3, 4: 5} and back.feature_config == FeatureConfig(shifts="none")


def test_each_foreign_or_damaged_entry_is_named():
    tensors, meta = record_to_contents(record())
    assert message(record_from_contents, tensors, {**meta, "format": "x"}, name="m.hrdv2") == (
        "'m.hrdv2' is a safetensors file but not a napari-hrdv2 segmentation model."
    )
    assert message(record_from_contents, tensors, {**meta, "format_version": "0"}, name="m") == (
        "'m' is damaged: its format version '0' is not a whole number >= 1."
    )
    assert message(record_from_contents, tensors, {**meta, "format_version": "two"}, name="m") == (
        "'m' is damaged: its format version 'two' is not a whole number >= 1."
    )
    assert message(record_from_contents, tensors, {**meta, "format_version": "3"}, name="m") == (
        "'m' was written by a newer napari-hrdv2 (format 3); please upgrade the plugin."
    )
    without = {k: v for k, v in meta.items() if k != "n_hr_features"}
    assert message(record_from_contents, tensors, without, name="m") == (
        "'m' is damaged (missing or invalid entry: 'n_hr_features')."
    )
    assert message(record_from_contents, tensors, {**meta, "params": "[1]"}, name="m") == (
        "'m' is damaged (missing or invalid entry: params must be a JSON object, not list)."
    )
    assert message(record_from_contents, tensors, {**meta, "feature_config": "3"}, name="m") == (
        "'m' is damaged (missing or invalid entry: feature_config must be a JSON object or null, not int)."
    )
    assert "backbone_family 'Bad Family'" in message(
        record_from_contents, tensors, {**meta, "backbone_family": "Bad Family"}, name="m"
    )
    assert "summary.pixels_per_class must be a JSON object" in message(
        record_from_contents, tensors, {**meta, "summary": '{"pixels_per_class": 3}'}, name="m"
    )
    assert "channels:" in message(record_from_contents, tensors, {**meta, "channels": '"x,y"'}, name="m")
    assert message(record_from_contents, tensors, {**meta, "head": "forest"}, name="m") == (
        "'m' holds a 'forest' head, which this napari-hrdv2 does not know (it knows linear, mlp); please upgrade "
        "the plugin."
    )
    assert message(record_from_contents, tensors, {**meta, "head": "mlp"}, name="m") == (
        "'m' is damaged (missing or invalid entry: 'output_weight')."
    )
    edited = record_from_contents(tensors, {**meta, "n_hr_features": "3 "}, name="m")
    assert edited.integrity_error is not None and edited.integrity_error.startswith("checksum ")
    assert integrity_problem(tensors, {k: v for k, v in meta.items() if k != CHECKSUM_KEY}) is None


def test_refinement_entries_by_format_version():
    params = {"l2": 1.0, "refine": "crf", "refine_options": {"radius": 2}}
    assert refine_params(params, version=1, name="m") == {"l2": 1.0, "refine": "none", "refine_options": {}}
    checked = refine_params(params, version=2, name="m")
    assert checked["refine"] == "crf" and checked["refine_options"]["radius"] == 2
    assert checked["refine_options"]["iterations"] == 5  # defaults filled in
    assert refine_params({"refine": "guided", "refine_options": None}, version=2, name="m")["refine_options"] == {
        "radius": 8,
        "eps": 1e-3,
    }
    assert message(refine_params, {"l2": 1.0}, version=2, name="m") == (
        "'m' is damaged (missing entry: params.refine, the refinement of its probabilities)."
    )
    assert message(refine_params, {"refine": "crf", "refine_options": [1]}, version=2, name="m") == (
        "'m' is damaged (invalid refinement: refine_options must be a JSON object, not list)"
    )
    assert message(refine_params, {"refine": "blur"}, version=2, name="m") == (
        "'m' is damaged (invalid refinement: refine='blur' is not one of 'none', 'crf', 'guided'.)"
    )


def check(rec: ModelRecord, n_classical: int = 0, **tensor_changes) -> None:
    tensors = {"coef": rec.coef, "intercept": rec.intercept, "classes": rec.classes, **tensor_changes}
    check_record(rec, tensors, n_classical=n_classical, name="m")


def test_records_that_cannot_predict_valid_labels_are_refused():
    check(record())
    assert message(check, record(), coef=np.zeros((2, 3), np.int32)) == "'m' is damaged: 'coef' has dtype int32."
    assert message(check, record(), classes=np.zeros(2, np.float32)) == "'m' is damaged: 'classes' has dtype float32."
    shapes = "'m' is damaged (inconsistent array shapes)."
    assert message(check, record(intercept=np.zeros(3, np.float32))) == shapes
    assert message(check, record(classes=np.array([1, 2, 3]))) == shapes
    assert message(check, record(n_hr_features=0)) == shapes
    assert message(check, record(n_hr_features=2)) == shapes
    assert message(check, record(), n_classical=1) == shapes
    check(record(n_hr_features=2), n_classical=1)  # 2 backbone + 1 classical features
    assert message(check, record(coef=np.zeros(3, np.float32))) == shapes
    one = record(coef=np.zeros((1, 3), np.float32), intercept=np.zeros(1, np.float32), classes=np.array([1]))
    assert message(check, one) == "'m' is damaged: a model needs at least two classes, it has 1."
    assert message(check, record(intercept=np.array([np.nan, 0], np.float32))) == (
        "'m' is damaged: its weights contain NaN or infinite values."
    )
    assert message(check, record(classes=np.array([0, 1]))) == (
        "'m' is damaged: its class values [0, 1] must lie in 1..65535 (0 is unlabelled)."
    )
    assert "[1, 65536]" in message(check, record(classes=np.array([1, 65536])))
    assert (
        message(check, record(classes=np.array([2, 2]))) == "'m' is damaged: its class values [2, 2] are not distinct."
    )
    bad_print = "'m' is damaged: invalid backbone fingerprint."
    assert message(check, record(backbone_fingerprint=np.ones((2, 2), np.float32))) == bad_print
    assert message(check, record(backbone_fingerprint=np.ones(2, np.int64))) == bad_print
    assert message(check, record(backbone_fingerprint=np.array([np.inf], np.float32))) == bad_print
    kept = record(backbone_fingerprint=np.ones(2, np.float64))
    check(kept)
    assert kept.backbone_fingerprint.dtype == np.float32
    assert message(check, record(integrity_error="checksum x")) == (
        "'m' fails its integrity check (checksum x): its settings or weights were changed after it was saved, or the "
        "file is damaged. Use the original file, or train and save the model again."
    )


def test_mlp_records_need_a_fitting_output_layer_and_heads_are_checked():
    mlp = record(
        head="mlp", classes=np.array([1, 2, 3]), output_weight=np.zeros((3, 2), np.float32),
        output_bias=np.zeros(3, np.float32),
    )  # fmt: skip
    check(mlp, output_weight=mlp.output_weight, output_bias=mlp.output_bias)  # 2 hidden units -> 3 classes
    wrong = dataclasses.replace(mlp, output_weight=np.zeros((3, 4), np.float32))
    assert message(check, wrong, output_weight=wrong.output_weight, output_bias=wrong.output_bias) == (
        "'m' is damaged (inconsistent array shapes)."
    )
    assert message(check, mlp, output_weight=np.zeros((3, 2), np.int8), output_bias=mlp.output_bias) == (
        "'m' is damaged: 'output_weight' has dtype int8."
    )
    check_head(mlp, "mlp", name="m")
    assert message(check_head, mlp, "linear", name="m") == (
        "'m' holds a mlp model, not a linear one: load it with napari_hrdv2.MLPSegmenter.load, or with "
        "napari_hrdv2.load_segmenter (which reads either kind)."
    )
    assert "napari_hrdv2.LinearSegmenter.load" in message(check_head, record(), "mlp", name="m")
    tensors, meta = record_to_contents(mlp)
    assert meta["head"] == "mlp" and tensors["output_weight"].shape == (3, 2)
    back = record_from_contents(tensors, meta, name="m")
    assert back.head == "mlp" and back.output_bias.shape == (3,)


def test_files_are_written_once_and_read_back(tmp_path):
    path = write_model_file(record(), tmp_path / "m.hrdv2")
    rec, tensors, name = read_model_file(path)
    assert name == "m.hrdv2" and sorted(tensors) == ["classes", "coef", "intercept"]
    np.testing.assert_array_equal(rec.classes, [1, 4])
    with pytest.raises(Exception, match="already exists"):
        write_model_file(record(), path)
    write_model_file(record(intercept=np.zeros(2, np.float32)), path, overwrite=True)
    np.testing.assert_array_equal(read_model_file(path)[0].intercept, 0)
    assert (
        message(read_model_file, tmp_path / "none.hrdv2") == f"Model file '{tmp_path / 'none.hrdv2'}' does not exist."
    )
    (tmp_path / "junk.hrdv2").write_bytes(b"junk")
    assert message(read_model_file, tmp_path / "junk.hrdv2").startswith(
        "'junk.hrdv2' is not a napari-hrdv2 model file (or it is corrupt): "
    )
