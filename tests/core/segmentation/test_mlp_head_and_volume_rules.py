"""The MLP head with hand-set weights (exact logits for relu and gelu, bands of rows, messages, defaults) and the
pure rules of volume training (which planes are encoded, label checks and messages)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_hrdv2.core.errors import InputError, ModelFileError
from napari_hrdv2.core.segmentation import mlp as mlp_module
from napari_hrdv2.core.segmentation.mlp import (
    ACTIVATIONS,
    BAND_PIXELS,
    DEFAULT_HIDDEN,
    HIDDEN_MAP_BYTES,
    MAX_HIDDEN,
    MLPSegmenter,
)
from napari_hrdv2.core.segmentation.volume import check_volume_labels, planes_through


def message(call, *args, error=InputError, **kwargs) -> str:
    with pytest.raises(error) as caught:
        call(*args, **kwargs)
    return str(caught.value)


def hand_set(activation: str = "relu") -> MLPSegmenter:
    """2 features -> 2 hidden units (x0 and -x0) -> 2 classes (value 5 and 9)."""
    model = MLPSegmenter(hidden=2, activation=activation)
    model.coef_ = np.array([[1.0, 0.0], [-1.0, 0.0]], np.float32)
    model.intercept_ = np.zeros(2, np.float32)
    model.output_weight_ = np.array([[1.0, 0.0], [0.0, 2.0]], np.float32)
    model.output_bias_ = np.array([0.0, 0.5], np.float32)
    model.classes_ = np.array([5, 9])
    model.n_hr_features_ = 2
    return model


def test_defaults_params_and_repr():
    assert (ACTIVATIONS, DEFAULT_HIDDEN, MAX_HIDDEN) == (("relu", "gelu"), 32, 1024)
    assert BAND_PIXELS == 2**18 and HIDDEN_MAP_BYTES == 256 * 2**20
    model = MLPSegmenter()
    params = model.get_params()
    assert (
        params["hidden"] == 32 and params["activation"] == "relu" and params["l2"] == 1e-3 and params["max_iter"] == 100
    )
    assert repr(model) == "MLPSegmenter(hidden=32, relu, not fitted)"
    assert (
        repr(MLPSegmenter(hidden=4, activation="gelu", hybrid=True))
        == "MLPSegmenter(hidden=4, gelu, hybrid, not fitted)"
    )
    assert repr(hand_set()) == "MLPSegmenter(hidden=2, relu, classes=[5, 9])"
    assert MLPSegmenter(hidden=np.int64(3)).hidden == 3 and MLPSegmenter(hidden=1024).hidden == 1024
    for bad in (0, 1025, 2.0, True):
        assert message(MLPSegmenter, hidden=bad) == f"hidden must be a whole number of units in 1..1024, got {bad!r}."
    assert message(MLPSegmenter, activation="tanh") == "activation must be one of relu, gelu, got 'tanh'."


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_hand_set_head_gives_exact_logits_and_labels(activation):
    model = hand_set(activation)
    features = np.zeros((2, 1, 3), np.float32)
    features[0, 0] = [-2.0, 0.0, 3.0]
    act = (lambda v: max(v, 0.0)) if activation == "relu" else (lambda v: 0.5 * v * (1 + math.erf(v / math.sqrt(2))))
    expected = np.array([[[act(x) for x in (-2.0, 0.0, 3.0)]], [[2 * act(-x) + 0.5 for x in (-2.0, 0.0, 3.0)]]])
    logits = model.decision_function(features)
    assert logits.shape == (2, 1, 3) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(model.predict(features), [[9, 9, 5]])
    hidden = model.hidden_activations(features)
    np.testing.assert_allclose(hidden[0, 0], [act(-2.0), act(0.0), act(3.0)], rtol=1e-5, atol=1e-6)
    assert model.head_arrays() == (model.output_weight_, model.output_bias_)
    assert (
        message(model.head_logits, np.zeros((3, 1, 1))) == "The hidden maps must have shape (2, h, w), got (3, 1, 1)."
    )
    assert message(model.head_logits, np.zeros((2, 4))) == "The hidden maps must have shape (2, h, w), got (2, 4)."


def test_bands_and_unit_groups_give_the_same_logits(monkeypatch):
    model = hand_set()
    rng = np.random.default_rng(0)
    features = rng.standard_normal((2, 7, 5)).astype(np.float32)
    whole = model.decision_function(features)
    monkeypatch.setattr(mlp_module, "BAND_PIXELS", 6)  # one row of 5 pixels per band
    np.testing.assert_allclose(model.decision_function(features), whole, atol=1e-6)
    monkeypatch.setattr(mlp_module, "HIDDEN_MAP_BYTES", 4 * 7 * 5)  # one hidden unit at a time
    np.testing.assert_allclose(model.decision_function(features), whole, atol=1e-6)


def test_a_record_whose_hidden_layer_disagrees_with_its_settings_is_refused():
    record = hand_set().to_record()
    assert record.head == "mlp" and record.output_weight.shape == (2, 2)
    back = MLPSegmenter.from_record(record, name="m")
    np.testing.assert_array_equal(back.output_bias_, [0.0, 0.5])
    record.params["hidden"] = 3
    assert message(MLPSegmenter.from_record, record, name="m", error=ModelFileError) == (
        "'m' is damaged: its hidden layer has 2 units, its settings say 3."
    )


def test_planes_through_labelled_voxels_and_label_checks():
    labels = np.zeros((4, 5, 6), np.uint8)
    labels[1, 2, 3] = 1
    labels[1, 4, 0] = 2
    labels[3, 2, 5] = 1
    assert planes_through(labels) == [(0, 1), (0, 3), (1, 2), (1, 4), (2, 0), (2, 3), (2, 5)]
    assert planes_through(np.zeros((2, 2, 2))) == []
    assert check_volume_labels(labels, (4, 5, 6)) is not None
    assert message(check_volume_labels, labels[:3], (4, 5, 6)) == (
        "The labels have shape (3, 5, 6); the volume needs one label per voxel, shape (4, 5, 6) (Z, Y, X), "
        "0 = unlabelled."
    )
