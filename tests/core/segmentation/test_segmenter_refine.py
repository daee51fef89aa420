"""LinearSegmenter(refine=...): per-call override, the image it needs, outputs in one pass, model files v1/v2."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

import napari_hrdv2 as hr
from napari_hrdv2.core.errors import InputError, ModelFileError
from napari_hrdv2.core.files.checksums import contents_sha256
from napari_hrdv2.core.segmentation.model_file import CHECKSUM_KEY, FORMAT_VERSION
from napari_hrdv2.core.segmentation.refine import RefineSettings, guide_image, refine_probabilities
from napari_hrdv2.core.segmentation.segmenter import LinearSegmenter


def dense_problem(seed: int = 0):
    """Dense features of a noisy two-region image, its scribbles and the image."""
    rng = np.random.default_rng(seed)
    image = np.zeros((24, 32), np.float32)
    image[:, 14:] = 1.0
    features = np.stack([image + rng.normal(scale=0.6, size=image.shape), rng.normal(size=image.shape)])
    labels = np.zeros(image.shape, np.uint8)
    labels[:, :3], labels[:, -3:] = 1, 2
    return features.astype(np.float32), labels, (image * 200).astype(np.uint8)


@pytest.fixture(scope="module")
def fitted():
    features, labels, image = dense_problem()
    return LinearSegmenter().fit(features, labels), features, image


def test_refine_is_kept_in_the_model_and_its_params():
    model = LinearSegmenter(refine="crf", refine_options={"iterations": 2})
    assert model.refine == "crf"
    assert model.get_params()["refine"] == "crf"
    assert model.get_params()["refine_options"]["iterations"] == 2
    assert LinearSegmenter(**model.get_params()).refine_settings == model.refine_settings
    model.refine = "guided"
    assert model.refine_settings == RefineSettings.create("guided")


@pytest.mark.parametrize(("refine", "options"), [("blur", None), ("crf", {"eps": 1.0}), ("guided", {"radius": 0})])
def test_bad_refine_options_raise_input_error(refine, options):
    with pytest.raises(InputError, match="refine"):
        LinearSegmenter(refine=refine, refine_options=options)


@pytest.mark.parametrize("method", ["crf", "guided"])
def test_predict_refine_overrides_the_models_choice_for_one_call(fitted, method):
    model, features, image = fitted
    assert model.refine == "none"
    raw = model.predict_proba(features)
    settings = RefineSettings.create(method)
    expected = refine_probabilities(raw, guide_image(image), settings)
    np.testing.assert_allclose(model.predict_proba(features, refine=method, image=image), expected, atol=1e-6)
    labels = model.predict(features, refine=method, image=image)
    np.testing.assert_array_equal(labels, model.classes_[np.argmax(expected, axis=0)])
    entropy = model.uncertainty(features, refine=method, image=image)
    assert entropy.shape == image.shape and not np.allclose(entropy, model.uncertainty(features))
    assert model.refine == "none"  # unchanged by the calls
    np.testing.assert_array_equal(model.predict(features), model.classes_[np.argmax(raw, axis=0)])


def test_models_refinement_is_used_and_none_overrides_it(fitted):
    model, features, image = fitted
    refined = LinearSegmenter(refine="crf")
    refined.__dict__.update({k: v for k, v in model.__dict__.items() if k != "refine_settings"})
    np.testing.assert_array_equal(
        refined.predict_proba(features, image=image), model.predict_proba(features, refine="crf", image=image)
    )
    np.testing.assert_array_equal(refined.predict(features, refine="none"), model.predict(features))


def test_refinement_without_an_image_is_a_clear_error(fitted):
    model, features, _ = fitted
    with pytest.raises(InputError, match="needs the image"):
        model.predict(features, refine="crf")
    with pytest.raises(InputError, match="does not match"):
        model.predict(features, refine="crf", image=np.arange(25, dtype=np.uint8).reshape(5, 5))


def test_outputs_equal_predict_proba_and_uncertainty(fitted):
    model, features, image = fitted
    out = model.outputs(features, ("labels", "uncertainty", "probabilities"), refine="guided", image=image)
    np.testing.assert_array_equal(out["labels"], model.predict(features, refine="guided", image=image))
    np.testing.assert_array_equal(out["probabilities"], model.predict_proba(features, refine="guided", image=image))
    np.testing.assert_array_equal(out["uncertainty"], model.uncertainty(features, refine="guided", image=image))
    np.testing.assert_array_equal(model.outputs(features)["labels"], model.predict(features))


def test_an_encoding_gives_the_image(tiny_config, two_textures):
    image, truth = two_textures
    encoding = hr.Featurizer(tiny_config).encode(image, with_attention=False)
    labels = np.zeros_like(truth)
    labels[10:100, 10:14], labels[10:100, 90:94] = 1, 2
    model = LinearSegmenter(refine="guided").fit(encoding, labels)
    expected = refine_probabilities(
        model.predict_proba(encoding, refine="none"), guide_image(image), RefineSettings.create("guided")
    )
    np.testing.assert_allclose(model.predict_proba(encoding), expected, atol=1e-6)


# ---------------------------------------------------------------------------------------------- model files
def test_refinement_round_trips_through_the_model_file(tmp_path, fitted):
    model, features, image = fitted
    model = LinearSegmenter(**{**model.get_params(), "refine": "crf", "refine_options": {"weight": 2.0}}).fit(
        features, dense_problem()[1]
    )
    loaded = LinearSegmenter.load(model.save(tmp_path / "m.hrdv2"))
    assert loaded.refine_settings == model.refine_settings == RefineSettings.create("crf", weight=2.0)
    with safe_open(str(tmp_path / "m.hrdv2"), framework="numpy") as handle:
        assert handle.metadata()["format_version"] == str(FORMAT_VERSION) == "2"
    np.testing.assert_array_equal(loaded.predict(features, image=image), model.predict(features, image=image))


def contents_of(model: LinearSegmenter, tmp_path):
    path = model.save(tmp_path / "src.hrdv2", overwrite=True)
    with safe_open(str(path), framework="numpy") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}, dict(handle.metadata())  # noqa: SIM118


def write_file(tmp_path, tensors, meta, name="x.hrdv2"):
    meta = dict(meta)
    meta[CHECKSUM_KEY] = contents_sha256(tensors, meta, skip=CHECKSUM_KEY)  # a consistent file, as if so written
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp_path / name), metadata=meta)
    return tmp_path / name


def test_version_1_files_load_without_refinement(tmp_path, fitted):
    """A file in the pre-refinement layout (version 1, no refine in params) loads as refine="none"."""
    model, features, _ = fitted
    tensors, meta = contents_of(LinearSegmenter(refine="crf").fit(features, dense_problem()[1]), tmp_path)
    params = json.loads(meta["params"])
    del params["refine"], params["refine_options"]
    v1 = write_file(tmp_path, tensors, {**meta, "format_version": "1", "params": json.dumps(params)})
    loaded = LinearSegmenter.load(v1)
    assert loaded.refine == "none"
    np.testing.assert_array_equal(loaded.predict(features), model.predict(features))
    # even a version-1 file that happens to name a refinement was written before refinement existed
    v1_named = write_file(tmp_path, tensors, {**meta, "format_version": "1"}, name="y.hrdv2")
    assert LinearSegmenter.load(v1_named).refine == "none"


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"refine": "blur"}, "invalid refinement"),
        ({"refine": 3}, "invalid refinement"),
        ({"refine_options": {"radius": -1}}, "invalid refinement"),
        ({"refine_options": ["radius"]}, "invalid refinement"),
        ({"refine": None, "drop": True}, "missing entry: params.refine"),
    ],
)
def test_bad_refinement_in_a_file_is_a_model_file_error(tmp_path, fitted, change, match):
    model, _, _ = fitted
    tensors, meta = contents_of(LinearSegmenter(refine="guided").fit(*dense_problem()[:2]), tmp_path)
    params = json.loads(meta["params"])
    if change.pop("drop", False):
        del params["refine"]
    else:
        params.update(change)
    path = write_file(tmp_path, tensors, {**meta, "params": json.dumps(params)})
    with pytest.raises(ModelFileError, match=match):
        LinearSegmenter.load(path)


def test_edited_refinement_fails_the_integrity_check(tmp_path):
    tensors, meta = contents_of(LinearSegmenter(refine="guided").fit(*dense_problem()[:2]), tmp_path)
    params = json.loads(meta["params"])
    params["refine"] = "crf"
    params["refine_options"] = RefineSettings.create("crf").options()
    path = tmp_path / "edited.hrdv2"
    save_file(dict(tensors), str(path), metadata={**meta, "params": json.dumps(params)})  # checksum left stale
    with pytest.raises(ModelFileError, match="integrity check"):
        LinearSegmenter.load(path)
