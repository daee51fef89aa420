"""LinearSegmenter on hand-made (C, H, W) arrays with exact answers: defaults, label dtypes, softmax / entropy
values, outputs in the order asked, training-set rules and every message; refinement settings and guides."""

from __future__ import annotations

import numpy as np
import pytest

from napari_hrdv2.core.errors import InputError, ModelFileError
from napari_hrdv2.core.segmentation.heads import (
    HEADS,
    SEGMENTER_CLASSES,
    load_segmenter,
    new_segmenter,
    segmenter_class,
)
from napari_hrdv2.core.segmentation.mlp import MLPSegmenter
from napari_hrdv2.core.segmentation.refine import (
    BAND_VALUES,
    METHOD_DEFAULTS,
    MIN_PROBABILITY,
    REFINE_METHODS,
    RefineSettings,
    guide_image,
    guide_of,
    halo,
    refine_probabilities,
)
from napari_hrdv2.core.segmentation.segmenter import LinearSegmenter, normalized_entropy, softmax_inplace


def message(call, *args, error=InputError, **kwargs) -> str:
    with pytest.raises(error) as caught:
        call(*args, **kwargs)
    return str(caught.value)


def halves(width: int = 8, height: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """(3, H, W) features: channel 0 is +1 on the left half and -1 on the right, channels 1-2 small noise;
    labels: a stroke of class 3 on the left and of class 7 on the right."""
    rng = np.random.default_rng(0)
    features = 0.05 * rng.standard_normal((3, height, width)).astype(np.float32)
    features[0, :, : width // 2] += 1.0
    features[0, :, width // 2 :] -= 1.0
    labels = np.zeros((height, width), np.int64)
    labels[1:-1, 0] = 3
    labels[1:-1, -1] = 7
    return features, labels


def test_defaults_params_and_repr():
    model = LinearSegmenter()
    assert model.get_params() == {
        "l2": 1e-3,
        "class_balanced": True,
        "hybrid": False,
        "classical_sigmas": list(model.classical_sigmas),
        "max_pixels_per_class": 5000,
        "max_iter": 100,
        "majority_size": 0,
        "min_object_size": 0,
        "refine": "none",
        "refine_options": {},
        "warm_start": False,
        "seed": 0,
    }
    assert repr(model) == "LinearSegmenter(not fitted)" and not model.is_fitted and model.n_classes == 0
    assert model.n_classical == 0 and model.class_names == {} and model.channels is None
    assert LinearSegmenter.HEAD == "linear" and MLPSegmenter.HEAD == "mlp"
    hybrid = LinearSegmenter(hybrid=True, classical_sigmas=(1.0,))
    assert repr(hybrid) == "LinearSegmenter(hybrid, not fitted)" and hybrid.n_classical > 0
    crf = LinearSegmenter(refine="crf", refine_options={"iterations": 2})
    assert crf.get_params()["refine_options"] == {**METHOD_DEFAULTS["crf"], "iterations": 2}
    crf.refine = "guided"
    assert crf.refine == "guided" and crf.refine_settings.options() == {"radius": 8, "eps": 1e-3}


@pytest.mark.parametrize(
    ("options", "text"),
    [
        ({"l2": -1.0}, "l2 must be a non-negative number, got -1.0."),
        ({"l2": float("nan")}, "l2 must be a non-negative number, got nan."),
        ({"l2": float("inf")}, "l2 must be a non-negative number, got inf."),
        ({"max_iter": 0}, "max_pixels_per_class and max_iter must be at least 1."),
        ({"max_pixels_per_class": 0}, "max_pixels_per_class and max_iter must be at least 1."),
        ({"majority_size": -1}, "majority_size and min_object_size must be >= 0."),
        ({"min_object_size": -1}, "majority_size and min_object_size must be >= 0."),
        ({"refine_options": [1]}, "refine_options must be a dict of options, got list."),
        ({"refine": "blur"}, "refine='blur' is not one of 'none', 'crf', 'guided'."),
    ],
)
def test_constructor_refuses_bad_options_with_their_value(options, text):
    assert message(LinearSegmenter, **options) == text


def test_fit_on_dense_halves_predicts_the_halves_with_class_values():
    features, labels = halves()
    model = LinearSegmenter().fit(features, labels)
    np.testing.assert_array_equal(model.classes_, [3, 7])
    assert model.classes_.dtype == np.int64 and model.coef_.shape == (2, 3) and model.intercept_.shape == (2,)
    assert model.coef_.dtype == np.float32 and model.n_hr_features_ == 3 and model.feature_config is None
    assert repr(model) == "LinearSegmenter(classes=[3, 7])" and model.n_classes == 2
    predicted = model.predict(features)
    assert predicted.dtype == np.uint8
    expected = np.where(np.arange(8) < 4, 3, 7)[None, :].repeat(6, axis=0)
    np.testing.assert_array_equal(predicted, expected)
    summary = model.summary_
    assert summary.n_images == 1 and summary.pixels_per_class == {3: 4, 7: 4} and summary.pixels_used == 8
    assert summary.training_accuracy == 1.0 and 1 <= summary.iterations <= 100
    assert model.backbone_fingerprint_ is None and model.backbone_family_ is None
    logits = model.decision_function(features)
    assert logits.shape == (2, 6, 8) and logits.dtype == np.float32
    np.testing.assert_allclose(
        logits, np.einsum("oc,chw->ohw", model.coef_, features) + model.intercept_[:, None, None], rtol=1e-5, atol=1e-5
    )
    first = model.first_layer()
    assert first[0] is model.coef_ and first[1] is model.intercept_ and model.head_arrays() == ()
    np.testing.assert_array_equal(model.first_layer_maps(features), logits)
    big = LinearSegmenter().fit(features, np.where(labels == 7, 300, labels))
    assert big.predict(features).dtype == np.uint16 and set(np.unique(big.predict(features))) == {3, 300}


def test_outputs_follow_the_kinds_asked_and_equal_the_single_calls():
    features, labels = halves()
    model = LinearSegmenter().fit(features, labels)
    outputs = model.outputs(features, ("uncertainty", "labels", "probabilities"))
    assert list(outputs) == ["uncertainty", "labels", "probabilities"]
    assert list(model.outputs(features)) == ["labels"]
    np.testing.assert_array_equal(outputs["labels"], model.predict(features))
    np.testing.assert_allclose(outputs["probabilities"], model.predict_proba(features), atol=1e-7)
    np.testing.assert_allclose(outputs["uncertainty"], model.uncertainty(features), atol=1e-7)
    np.testing.assert_allclose(outputs["probabilities"].sum(axis=0), 1.0, atol=1e-6)
    refined = model.outputs(features, ("labels",), refine="guided", image=np.zeros((6, 8), np.float32))
    assert refined["labels"].shape == (6, 8)


def test_softmax_and_entropy_exact_values():
    logits = np.array([[[0.0, 100.0]], [[np.log(3.0), 100.0]]], np.float32)
    out = softmax_inplace(logits)
    assert out is logits
    np.testing.assert_allclose(out[:, 0, 0], [0.25, 0.75], rtol=1e-6)
    np.testing.assert_allclose(out[:, 0, 1], [0.5, 0.5])  # large logits do not overflow
    entropy = normalized_entropy(out)
    assert entropy.dtype == np.float32
    expected = -(0.25 * np.log(0.25) + 0.75 * np.log(0.75)) / np.log(2)
    np.testing.assert_allclose(entropy[0], [expected, 1.0], rtol=1e-5)
    np.testing.assert_allclose(normalized_entropy(np.array([[[1.0, 0.0]], [[0.0, 1.0]]])), 0.0, atol=1e-9)
    three = np.full((3, 1, 1), 1 / 3)
    np.testing.assert_allclose(normalized_entropy(three), 1.0, rtol=1e-6)
    np.testing.assert_allclose(normalized_entropy(np.ones((1, 1, 2))), 0.0, atol=1e-9)  # one class: certain


def test_training_and_prediction_messages():
    features, labels = halves()
    model = LinearSegmenter()
    assert message(model.fit, [features, features], [labels]) == (
        "Got 2 images but 1 label images; give one per image."
    )
    assert message(model.fit, [], []) == "Nothing to train on: give at least one image and its labels."
    assert message(model.fit, [features, features[:2]], [labels, labels]) == (
        "The images have different numbers of features [2, 3]."
    )
    other_size, other_labels = halves(10, 4)  # a list of dense images of different sizes trains on all of them
    both = LinearSegmenter().fit([features, other_size], (labels, other_labels))
    assert both.summary_.n_images == 2 and both.summary_.pixels_per_class == {3: 6, 7: 6}
    np.testing.assert_array_equal(both.predict(other_size)[:, [0, -1]], [[3, 7]] * 4)
    bad = features.copy()
    bad[0, 1, 0] = np.nan
    assert message(model.fit, bad, labels) == (
        "The features of image 1 contain NaN or infinite values; check the image and the backbone."
    )
    fitted = LinearSegmenter().fit(features, labels)
    assert message(fitted.predict, bad) == "The features contain NaN or infinite values."
    assert message(fitted.predict, features[:2]) == (
        "The features have 2 channels but the model expects 3 (3 HR-Dv2 + 0 classical): wrong backbone or feature "
        "setting?"
    )
    assert (
        message(fitted.featurizer) == "This model was trained on dense arrays and does not know its feature pipeline."
    )
    assert "not fitted" in message(LinearSegmenter().predict, features).lower() or "train" in message(
        LinearSegmenter().predict, features
    )
    text = message(fitted.predict, features, refine="crf")
    assert text.startswith("Refining the probabilities (refine='crf' or 'guided') needs the image: pass an Encoding")
    assert message(fitted.predict, features, refine="crf", image=np.zeros((5, 8))) == (
        "The image (5, 8) does not match the features (6, 8): pass the same image."
    )


def test_subsampling_keeps_at_most_max_pixels_per_class_and_is_seeded():
    features, labels = halves(16, 12)
    labels[:, :3] = 3
    model = LinearSegmenter(max_pixels_per_class=5).fit(features, labels)
    # each pixel of a class of n pixels is kept with probability min(1, 5 / n), seeded (seed 0), row-major
    rows, cols = np.nonzero(labels)
    fraction = np.where(labels[rows, cols] == 3, 5 / 36, 5 / 10)
    kept = int(np.count_nonzero(np.random.default_rng(0).random(rows.size) < fraction))
    assert model.summary_.pixels_per_class == {3: 36, 7: 10} and model.summary_.pixels_used == kept < 46
    again = LinearSegmenter(max_pixels_per_class=5).fit(features, labels)
    np.testing.assert_array_equal(again.coef_, model.coef_)
    other_seed = LinearSegmenter(max_pixels_per_class=5, seed=1).fit(features, labels)
    assert not np.array_equal(other_seed.coef_, model.coef_)


def test_refinement_choice_per_call():
    model = LinearSegmenter(refine="crf")
    assert model.refinement() is model.refine_settings
    assert model.refinement("crf") is model.refine_settings
    assert model.refinement("guided") == RefineSettings.create("guided")
    assert model.refinement("none").active is False
    mine = RefineSettings.create("guided", radius=2)
    assert model.refinement(mine) is mine


def test_refine_settings_defaults_validation_and_halo():
    assert REFINE_METHODS == ("none", "crf", "guided") and MIN_PROBABILITY == 1e-6 and BAND_VALUES == 2**25
    assert METHOD_DEFAULTS["crf"] == {
        "iterations": 5,
        "radius": 3,
        "spatial_sigma": 3.0,
        "intensity_sigma": 0.1,
        "weight": 10.0,
    }
    assert METHOD_DEFAULTS["guided"] == {"radius": 8, "eps": 1e-3}
    none = RefineSettings.create()
    assert none == RefineSettings() and not none.active and none.to_dict() == {"method": "none"}
    assert none.describe() == "none" and halo(none) == 0
    crf = RefineSettings.create("crf", iterations=2, radius=4)
    assert crf.active and halo(crf) == 8 and crf.iterations == 2 and isinstance(crf.radius, int)
    assert crf.describe() == "crf (iterations=2, radius=4, spatial_sigma=3, intensity_sigma=0.1, weight=10)"
    assert halo(RefineSettings.create("guided", radius=5)) == 10
    assert RefineSettings.from_dict(None) == none and RefineSettings.from_dict("guided") == RefineSettings.create(
        "guided"
    )
    assert RefineSettings.from_dict(crf.to_dict()) == crf
    assert RefineSettings.from_dict({"radius": 3, "method": "guided"}).radius == 3
    assert message(RefineSettings.from_dict, 3) == "refine settings must be a method name or a dict, got int."
    assert message(RefineSettings.create, "crf", eps=1) == (
        "refine='crf' takes no option eps (options: iterations, radius, spatial_sigma, intensity_sigma, weight)."
    )
    assert message(RefineSettings.create, "none", radius=1) == "refine='none' takes no option radius (options: none)."
    assert message(RefineSettings.create, "crf", iterations=1.5) == (
        "refine option iterations=1.5 must be a whole number > 0."
    )
    assert message(RefineSettings.create, "guided", eps=0) == "refine option eps=0 must be a number > 0."
    assert message(RefineSettings.create, "guided", eps=True) == "refine option eps=True must be a number > 0."
    assert message(RefineSettings.create, "guided", eps="x") == "refine option eps='x' must be a number > 0."
    assert message(RefineSettings.create, "crf", radius=33) == (
        "refine option radius=33 is too large for the CRF window (<= 32)."
    )
    assert RefineSettings.create("crf", radius=32).radius == 32
    assert message(RefineSettings.create, 3) == "refine=3 is not one of 'none', 'crf', 'guided'."


def test_guides_and_refinement_inputs():
    image = np.array([[0, 50], [100, 200]], np.uint8)
    np.testing.assert_allclose(guide_image(image), [[0, 0.25], [0.5, 1.0]])  # default minmax
    assert guide_image(image).dtype == np.float32
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0] = image
    assert guide_image(rgba).shape == (2, 2, 3)  # alpha dropped
    separate = guide_image(np.stack([image, image * 0 + 7], axis=-1).astype(np.float32), separate=True)
    assert separate.shape == (2, 2, 2)
    assert (
        message(guide_image, np.array([[np.nan, 1.0]]), separate=True) == "The image contains NaN or infinite values."
    )
    features = np.zeros((3, 2, 2), np.float32)
    np.testing.assert_allclose(guide_of(features, image), guide_image(image))
    probabilities = np.full((2, 2, 2), 0.5, np.float32)
    assert message(refine_probabilities, probabilities, image, "crf") == "settings must be a RefineSettings, got str."
    assert message(refine_probabilities, probabilities[0], image, RefineSettings.create("crf")) == (
        "probabilities must be (n_classes, H, W), got shape (2, 2)."
    )
    assert message(refine_probabilities, probabilities, np.zeros((3, 2)), RefineSettings.create("crf")) == (
        "The guide image (3, 2) does not match the probabilities (2, 2, 2): pass the (H, W) or (H, W, C) image the "
        "probabilities were predicted on."
    )
    same = refine_probabilities(probabilities.astype(np.float64), image, RefineSettings())
    assert same.dtype == np.float32
    np.testing.assert_array_equal(same, probabilities)
    for method in ("crf", "guided"):
        refined = refine_probabilities(probabilities, guide_image(image), RefineSettings.create(method))
        np.testing.assert_allclose(refined, 0.5, atol=1e-6)  # uniform stays uniform


def test_heads_name_their_classes_and_refuse_others(tmp_path):
    assert HEADS == ("linear", "mlp") and {"linear": LinearSegmenter, "mlp": MLPSegmenter} == SEGMENTER_CLASSES
    assert segmenter_class("mlp") is MLPSegmenter
    assert message(segmenter_class, "forest") == "head must be one of linear, mlp, got 'forest'."
    assert type(new_segmenter()) is LinearSegmenter
    assert new_segmenter("linear", l2=0.5).l2 == 0.5
    features, labels = halves()
    path = LinearSegmenter().fit(features, labels).save(tmp_path / "m.hrdv2")
    loaded = load_segmenter(path)
    assert type(loaded) is LinearSegmenter and loaded.classes_.tolist() == [3, 7]
    np.testing.assert_array_equal(loaded.predict(features), LinearSegmenter.load(path).predict(features))
    with pytest.raises(ModelFileError):
        MLPSegmenter.load(path)
    with pytest.raises(ModelFileError):
        load_segmenter(tmp_path / "missing.hrdv2")
