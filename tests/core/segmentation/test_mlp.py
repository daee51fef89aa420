"""MLPSegmenter: exact hidden maps from the low-res path, a nonlinear known answer, determinism, files, hybrid,
tile-by-tile segmentation, bad options."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from safetensors import safe_open

import napari_hrdv2 as hr
from conftest import two_texture_image
from napari_hrdv2.core.errors import InputError, ModelFileError
from napari_hrdv2.core.segmentation import mlp
from napari_hrdv2.core.segmentation.model_file import read_model_file


def strokes(truth: np.ndarray) -> np.ndarray:
    size = truth.shape[1]
    labels = np.zeros(truth.shape, dtype=np.uint8)
    labels[10:-10, size // 4 : size // 4 + 3] = 1
    labels[10:-10, 3 * size // 4 : 3 * size // 4 + 3] = 2
    return labels


@pytest.fixture(scope="module")
def tiled_config(tiny_backbone) -> hr.FeatureConfig:
    """Several overlapping tiles and shifted transforms, float32 everywhere (exact comparisons)."""
    return hr.FeatureConfig(
        backbone=tiny_backbone, device="cpu", dtype="float32", storage_dtype="float32", shifts="neumann",
        shift_distances=(3,), tile_size=112, tile_overlap=28,
    )  # fmt: skip


@pytest.fixture(scope="module")
def encoded(tiled_config):
    image, truth = two_texture_image(160)
    return hr.Featurizer(tiled_config).encode(image), truth


@pytest.fixture(scope="module")
def model(encoded) -> hr.MLPSegmenter:
    encoding, truth = encoded
    return hr.MLPSegmenter(hidden=16, seed=0).fit(encoding, strokes(truth))


def relative_error(found: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(found - expected).max() / np.abs(expected).max())


def xor_problem(size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dense features (4, size, size): class 1 where f0 * f1 > 0, else 2 (no linear separation); sparse labels."""
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((4, size, size)).astype(np.float32)
    truth = np.where(features[0] * features[1] > 0, 1, 2).astype(np.uint8)
    labels = np.where(rng.random((size, size)) < 0.3, truth, 0).astype(np.uint8)
    return features, labels, truth


def test_hidden_maps_from_low_res_equal_materialised_features(encoded, model):
    """The first layer projected on the low-res maps equals W1 @ Encoding.features() + b1 (rel. err <= 1e-5)."""
    encoding, _ = encoded
    assert len(encoding.tiles) > 1 and encoding.n_transforms > 1
    weight, bias = model.first_layer()
    assert weight.shape == (16, encoding.n_features) and bias.shape == (16,)
    dense = encoding.features()
    expected = np.einsum("oc,chw->ohw", weight.astype(np.float64), dense.astype(np.float64)) + bias[:, None, None]
    assert relative_error(model.first_layer_maps(encoding), expected) <= 1e-5
    activations = model.hidden_activations(encoding)
    assert activations.shape == (16, *encoding.shape) and activations.min() >= 0  # ReLU
    assert relative_error(activations, np.maximum(expected, 0)) <= 1e-5
    np.testing.assert_allclose(model.decision_function(encoding), model.decision_function(dense), rtol=1e-5, atol=1e-5)


def test_hidden_units_in_groups_equal_all_at_once(encoded, model, monkeypatch):
    encoding, _ = encoded
    whole = model.decision_function(encoding)
    monkeypatch.setattr(mlp, "HIDDEN_MAP_BYTES", 5 * 4 * encoding.shape[0] * encoding.shape[1])  # 5 units a group
    np.testing.assert_allclose(model.decision_function(encoding), whole, rtol=1e-5, atol=1e-5)


def test_two_textures_segmented(encoded, model):
    encoding, truth = encoded
    assert model.classes_.tolist() == [1, 2] and model.output_weight_.shape == (2, 16)
    assert np.mean(model.predict(encoding) == truth) >= 0.9
    proba = model.predict_proba(encoding)
    np.testing.assert_allclose(proba.sum(axis=0), 1.0, atol=1e-5)
    uncertainty = model.uncertainty(encoding)
    assert uncertainty.shape == truth.shape and uncertainty.min() >= 0 and uncertainty.max() <= 1


def test_xor_known_answer_mlp_separates_what_linear_cannot():
    features, labels, truth = xor_problem()
    linear = hr.LinearSegmenter().fit(features, labels)
    mlp_model = hr.MLPSegmenter(hidden=32, seed=0).fit(features, labels)
    assert np.mean(linear.predict(features) == truth) < 0.65
    assert np.mean(mlp_model.predict(features) == truth) >= 0.95
    gelu = hr.MLPSegmenter(hidden=32, activation="gelu", seed=0).fit(features, labels)
    assert np.mean(gelu.predict(features) == truth) >= 0.95


def test_deterministic_given_seed():
    features, labels, _ = xor_problem(48)
    first = hr.MLPSegmenter(hidden=8, seed=3).fit(features, labels)
    second = hr.MLPSegmenter(hidden=8, seed=3).fit(features, labels)
    other = hr.MLPSegmenter(hidden=8, seed=4).fit(features, labels)
    for name in ("coef_", "intercept_", "output_weight_", "output_bias_"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))
    assert not np.array_equal(first.coef_, other.coef_)
    np.testing.assert_array_equal(first.predict(features), second.predict(features))


def test_warm_start_continues_from_the_previous_solution():
    features, labels, _ = xor_problem(48)
    model = hr.MLPSegmenter(hidden=8, warm_start=True).fit(features, labels)
    cold_iterations = model.summary_.iterations
    model.fit(features, labels)  # same labels: starts at the optimum
    assert model.summary_.iterations < cold_iterations


def test_save_load_round_trip_and_file_kinds(tmp_path, encoded, model):
    encoding, truth = encoded
    path = model.save(tmp_path / "mlp.hrdv2")
    loaded = hr.MLPSegmenter.load(path)
    assert loaded.get_params() == model.get_params() and repr(loaded) == repr(model)
    np.testing.assert_array_equal(loaded.predict(encoding), model.predict(encoding))
    np.testing.assert_array_equal(loaded.predict_proba(encoding), model.predict_proba(encoding))
    either = hr.load_segmenter(path)
    assert type(either) is hr.MLPSegmenter
    record, tensors, _ = read_model_file(path)
    assert record.head == "mlp" and {"output_weight", "output_bias"} <= set(tensors)
    with pytest.raises(ModelFileError, match="holds a mlp model.*MLPSegmenter.load"):
        hr.LinearSegmenter.load(path)
    linear_path = hr.LinearSegmenter().fit(encoding, strokes(truth)).save(tmp_path / "linear.hrdv2")
    for file, head in ((path, "mlp"), (linear_path, None)):  # linear files have no head entry
        with safe_open(str(file), framework="numpy") as handle:
            meta = handle.metadata()
        assert meta["format_version"] == "2" and meta.get("head") == head
    assert type(hr.load_segmenter(linear_path)) is hr.LinearSegmenter
    with pytest.raises(ModelFileError, match="holds a linear model.*LinearSegmenter.load"):
        hr.MLPSegmenter.load(linear_path)


def test_damaged_output_layer_is_refused(model):
    record = model.to_record()
    record.output_weight = record.output_weight[:, :-1]
    with pytest.raises(ModelFileError, match="inconsistent array shapes"):
        hr.MLPSegmenter.from_record(record)
    record = model.to_record()
    record.output_bias = np.full_like(record.output_bias, np.nan)
    with pytest.raises(ModelFileError, match="NaN"):
        hr.MLPSegmenter.from_record(record)
    record = model.to_record()
    record.params = {**record.params, "hidden": 8}
    with pytest.raises(ModelFileError, match="hidden layer has 16 units"):
        hr.MLPSegmenter.from_record(record)


def test_hybrid_mlp_is_exact_and_accurate(encoded):
    encoding, truth = encoded
    model = hr.MLPSegmenter(hidden=8, hybrid=True, classical_sigmas=(1.0, 2.0)).fit(encoding, strokes(truth))
    assert model.coef_.shape == (8, encoding.n_features + 13)
    dense = model.dense_features(encoding)
    np.testing.assert_allclose(model.decision_function(encoding), model.decision_function(dense), rtol=1e-4, atol=1e-4)
    assert np.mean(model.predict(encoding) == truth) >= 0.9


def test_tile_by_tile_segmentation_equals_in_memory(tiled_config, encoded, model):
    from napari_hrdv2.core.scale import streaming

    encoding, _ = encoded
    image = encoding.image
    whole = streaming.segment_region(model, image, featurizer=hr.Featurizer(tiled_config),
                                     outputs=("labels", "probabilities"))  # fmt: skip
    np.testing.assert_array_equal(whole["labels"], model.predict(encoding))
    np.testing.assert_allclose(whole["probabilities"], model.predict_proba(encoding), atol=1e-5)
    part = streaming.segment_region(model, image, (40, 130), (20, 150), featurizer=hr.Featurizer(tiled_config))
    np.testing.assert_array_equal(part["labels"], whole["labels"][40:130, 20:150])
    linear = hr.LinearSegmenter().fit(encoding, strokes(encoded[1]))
    assert streaming.model_digest(model) != streaming.model_digest(linear)
    other = hr.MLPSegmenter.from_record(model.to_record())
    other.output_bias_ = other.output_bias_ + 1
    assert streaming.model_digest(other) != streaming.model_digest(model)


def test_streamed_zarr_and_batch_folder_equal_in_memory(tmp_path, tiled_config, encoded, model, monkeypatch):
    import tifffile
    import zarr

    from napari_hrdv2.core.scale import streaming

    encoding, _ = encoded
    featurizer = hr.Featurizer(tiled_config)
    expected = model.predict(encoding)
    out = tmp_path / "streamed_labels.zarr"
    hr.stream_segment(model, encoding.image, {"labels": out}, featurizer=featurizer, chunk=64)
    np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")["0"][:], expected)
    tifffile.imwrite(tmp_path / "small.tif", encoding.image)
    report = hr.segment_files([tmp_path / "small.tif"], tmp_path / "memory", model, featurizer)  # in memory
    assert report.ok
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "memory" / "small_labels.tif"), expected)
    monkeypatch.setattr(streaming, "STREAM_PIXELS", 100 * 100)  # the batch streams it tile by tile
    report = hr.segment_files([tmp_path / "small.tif"], tmp_path / "streamed", model, featurizer)
    assert report.ok
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "streamed" / "small_labels.tif"), expected)


def test_dask_worker_loads_an_mlp_model(tmp_path, model):
    from napari_hrdv2.core.scale import distributed

    data = model.save(tmp_path / "m.hrdv2").read_bytes()
    loaded = distributed._model_on_worker((hashlib.sha256(data).hexdigest(), data))
    assert type(loaded) is hr.MLPSegmenter
    np.testing.assert_array_equal(loaded.output_weight_, model.output_weight_)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"hidden": 0}, "hidden"),
        ({"hidden": 2.5}, "hidden"),
        ({"hidden": True}, "hidden"),
        ({"activation": "tanh"}, "activation"),
        ({"l2": -1.0}, "l2"),
        ({"max_iter": 0}, "max_iter"),
    ],
)
def test_bad_options(options, match):
    with pytest.raises(InputError, match=match):
        hr.MLPSegmenter(**options)


def test_bad_training_data():
    features, labels, _ = xor_problem(32)
    with pytest.raises(InputError, match="two classes|one class"):
        hr.MLPSegmenter().fit(features, np.where(labels == 1, 1, 0).astype(np.uint8))
    with pytest.raises(InputError, match="[Nn]o pixels|labelled"):
        hr.MLPSegmenter().fit(features, np.zeros_like(labels))
    with pytest.raises(InputError, match="not trained"):
        hr.MLPSegmenter().predict(features)
    with pytest.raises(InputError, match="head must be one of"):
        from napari_hrdv2.core.segmentation.heads import new_segmenter

        new_segmenter("forest")
