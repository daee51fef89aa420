"""LinearSegmenter: accuracy from strokes, class values, exact low-res prediction, files, bad input."""

from __future__ import annotations

import numpy as np
import pytest

import napari_hrdv2 as hr
from conftest import two_texture_image
from napari_hrdv2.core.segmentation.labels import check_labels, clean_labels
from napari_hrdv2.core.segmentation.segmenter import normalized_entropy
from napari_hrdv2.core.segmentation.solver import GRADIENT_TOLERANCE


def strokes(truth: np.ndarray, values=(1, 2), width: int = 3) -> np.ndarray:
    """Two vertical brush strokes, one inside each half, painted with ``values``."""
    size = truth.shape[1]
    labels = np.zeros(truth.shape, dtype=np.uint16)
    labels[10:-10, size // 4 : size // 4 + width] = values[0]
    labels[10:-10, 3 * size // 4 : 3 * size // 4 + width] = values[1]
    return labels


@pytest.fixture(scope="module")
def texture_encoding(tiny_backbone):
    image, truth = two_texture_image(112)
    config = hr.FeatureConfig(
        backbone=tiny_backbone, device="cpu", shifts="neumann", shift_distances=(3,), tile_size=None
    )
    return hr.Featurizer(config).encode(image), truth


def test_two_textures_accuracy_and_class_values(texture_encoding):
    encoding, truth = texture_encoding
    labels = strokes(truth, values=(2, 5))
    before = labels.copy()
    seg = hr.LinearSegmenter().fit([encoding], [labels])
    np.testing.assert_array_equal(labels, before)  # the user's labels are untouched
    assert seg.classes_.tolist() == [2, 5]
    predicted = seg.predict(encoding)
    assert predicted.dtype == np.uint8 and predicted.shape == truth.shape
    assert set(np.unique(predicted)) <= {2, 5}
    accuracy = np.mean(predicted == np.where(truth == 1, 2, 5))
    assert accuracy >= 0.9, accuracy


def test_encoding_and_dense_paths_agree(texture_encoding):
    encoding, truth = texture_encoding
    seg = hr.LinearSegmenter().fit([encoding], [strokes(truth)])
    dense = encoding.features()
    np.testing.assert_allclose(seg.decision_function(encoding), seg.decision_function(dense), atol=2e-4, rtol=1e-4)
    np.testing.assert_array_equal(seg.predict(encoding), seg.predict(dense))
    proba = seg.predict_proba(encoding)
    assert proba.shape == (2, *truth.shape) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(axis=0), 1.0, atol=1e-5)
    np.testing.assert_allclose(proba, seg.predict_proba(dense), atol=1e-4)
    uncertainty = seg.uncertainty(encoding)
    assert uncertainty.shape == truth.shape and uncertainty.min() >= 0 and uncertainty.max() <= 1


def test_training_on_dense_features_matches_encoding(texture_encoding):
    encoding, truth = texture_encoding
    labels = strokes(truth)
    from_encoding = hr.LinearSegmenter().fit([encoding], [labels])
    from_dense = hr.LinearSegmenter().fit([encoding.features()], [labels])
    np.testing.assert_allclose(from_encoding.coef_, from_dense.coef_, rtol=1e-3, atol=1e-3)
    assert from_dense.feature_config is None and from_encoding.feature_config == encoding.config


def test_hybrid_features_exact_and_named_channels(texture_encoding):
    encoding, truth = texture_encoding
    seg = hr.LinearSegmenter(hybrid=True, classical_sigmas=(1.0, 2.0)).fit(encoding, strokes(truth))
    assert seg.coef_.shape[1] == encoding.n_features + 13
    dense = seg.dense_features(encoding)
    np.testing.assert_allclose(seg.decision_function(encoding), seg.decision_function(dense), atol=2e-4, rtol=1e-4)
    assert np.mean(seg.predict(encoding) == truth) >= 0.9


def test_multi_image_training_uses_every_labelled_image(tiny_config):
    featurizer = hr.Featurizer(tiny_config)
    first, truth = two_texture_image(84, seed=1)
    second, _ = two_texture_image(84, seed=2)
    only_left = np.zeros_like(truth)
    only_left[20:60, 10:14] = 1
    only_right = np.zeros_like(truth)
    only_right[20:60, 70:74] = 2
    seg = hr.LinearSegmenter().fit([featurizer.encode(first), featurizer.encode(second)], [only_left, only_right])
    assert seg.classes_.tolist() == [1, 2]  # each class comes from a different image
    assert seg.summary_.n_images == 2 and seg.summary_.pixels_per_class == {1: 160, 2: 160}
    assert np.mean(seg.predict(featurizer.encode(first)) == truth) >= 0.9


def test_pixel_budget_subsamples_each_class(texture_encoding):
    encoding, truth = texture_encoding
    seg = hr.LinearSegmenter(max_pixels_per_class=50).fit(encoding, strokes(truth, width=6))
    assert seg.summary_.pixels_used < 150  # ~50 per class (random subset), not the 1104 painted


def test_save_load_round_trip(texture_encoding, tmp_path):
    encoding, truth = texture_encoding
    seg = hr.LinearSegmenter(l2=1e-2, majority_size=3).fit(encoding, strokes(truth, values=(3, 300)))
    path = seg.save(tmp_path / "model.hrdv2")
    loaded = hr.LinearSegmenter.load(path)
    assert loaded.get_params() == seg.get_params()
    assert loaded.feature_config == encoding.config
    assert loaded.summary_ == seg.summary_
    np.testing.assert_array_equal(loaded.classes_, [3, 300])
    predicted = loaded.predict(encoding)
    assert predicted.dtype == np.uint16  # 300 does not fit uint8
    np.testing.assert_array_equal(predicted, seg.predict(encoding))
    with pytest.raises(hr.InputError, match="already exists"):
        seg.save(path)
    seg.save(path, overwrite=True)


def test_model_file_is_not_pickle_and_corruption_is_reported(texture_encoding, tmp_path):
    encoding, truth = texture_encoding
    path = hr.LinearSegmenter().fit(encoding, strokes(truth)).save(tmp_path / "m.hrdv2")
    assert not path.read_bytes().startswith(b"\x80")  # a safetensors header, not a pickle stream
    truncated = tmp_path / "truncated.hrdv2"
    truncated.write_bytes(path.read_bytes()[:100])
    with pytest.raises(hr.ModelFileError, match="corrupt"):
        hr.LinearSegmenter.load(truncated)
    with pytest.raises(hr.ModelFileError, match="does not exist"):
        hr.LinearSegmenter.load(tmp_path / "missing.hrdv2")
    other = tmp_path / "other.safetensors"
    from safetensors.numpy import save_file

    save_file({"x": np.zeros(3, dtype=np.float32)}, str(other))
    with pytest.raises(hr.ModelFileError, match="not a napari-hrdv2"):
        hr.LinearSegmenter.load(other)


def test_model_with_other_feature_settings_is_refused(texture_encoding, tiny_backbone):
    encoding, truth = texture_encoding
    seg = hr.LinearSegmenter().fit(encoding, strokes(truth))
    moore = hr.Featurizer(encoding.config.replace(shifts="moore")).encode(two_texture_image(56)[0])
    with pytest.raises(hr.InputError, match="shifts: model 'neumann' vs image 'moore'"):
        seg.predict(moore)
    with pytest.raises(hr.InputError, match="channels"):
        seg.predict(np.zeros((7, 20, 20), dtype=np.float32))
    featurizer = seg.featurizer(device="cpu", tile_size=224)
    assert featurizer.config.feature_signature() == encoding.config.feature_signature()
    with pytest.raises(hr.InputError, match="not runtime settings"):
        seg.featurizer(shifts="moore")


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.zeros((112, 112), dtype=np.uint8), "No pixels are labelled"),
        (np.ones((112, 112), dtype=np.uint8), "Only one class"),
        (np.zeros((100, 112), dtype=np.uint8), "shape"),
        (np.full((112, 112), np.nan), "NaN"),
        (np.full((112, 112), 1.5), "whole numbers"),
        (np.full((112, 112), -1, dtype=np.int32), "negative"),
        (np.full((112, 112), 70_000, dtype=np.int32), "at most 65535"),
        (np.full((112, 112), "a"), "integer"),
    ],
)
def test_bad_labels_have_clear_errors(texture_encoding, labels, message):
    encoding, _ = texture_encoding
    with pytest.raises(hr.InputError, match=message):
        hr.LinearSegmenter().fit([encoding], [labels])


def test_mismatched_inputs_and_unfitted_model(texture_encoding):
    encoding, truth = texture_encoding
    with pytest.raises(hr.InputError, match="one per image"):
        hr.LinearSegmenter().fit([encoding, encoding], [strokes(truth)])
    with pytest.raises(hr.InputError, match="not trained"):
        hr.LinearSegmenter().predict(encoding)
    with pytest.raises(hr.InputError, match="l2"):
        hr.LinearSegmenter(l2=-1)
    with pytest.raises(hr.InputError, match="NaN"):
        seg = hr.LinearSegmenter().fit([encoding.features()], [strokes(truth)])
        seg.predict(np.full_like(encoding.features(), np.nan))


def test_check_labels_copies_and_drops_singleton_axis():
    labels = np.ones((1, 4, 5), dtype=np.uint8)
    checked = check_labels(labels, (4, 5))
    checked[0, 0] = 9
    assert checked.shape == (4, 5) and labels[0, 0, 0] == 1


def test_clean_labels_majority_and_small_objects():
    labels = np.ones((20, 20), dtype=np.uint8)
    labels[10:, :] = 2
    labels[5, 5] = 2  # an isolated speck inside class 1
    assert clean_labels(labels, majority_size=3)[5, 5] == 1
    assert clean_labels(labels, min_object_size=4)[5, 5] == 1
    np.testing.assert_array_equal(clean_labels(labels, min_object_size=4)[10:], 2)
    np.testing.assert_array_equal(clean_labels(labels), labels)


def test_normalized_entropy_bounds():
    uniform = np.full((4, 3, 3), 0.25, dtype=np.float32)
    certain = np.zeros((4, 3, 3), dtype=np.float32)
    certain[0] = 1
    np.testing.assert_allclose(normalized_entropy(uniform), 1.0, atol=1e-6)
    np.testing.assert_allclose(normalized_entropy(certain), 0.0, atol=1e-6)


@pytest.mark.parametrize("n_pixels", [300, 1300])  # below and above one 512-row gradient block, with a remainder
def test_fit_logistic_reaches_the_minimum_of_its_objective(n_pixels):
    """At the returned solution the autograd gradient of the weighted, L2-penalised cross-entropy vanishes."""
    import torch

    from napari_hrdv2.core.segmentation.solver import fit_logistic

    rng = np.random.default_rng(0)
    z = torch.from_numpy(rng.standard_normal((n_pixels, 7)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 3, n_pixels))
    z[:, 0] += y.float()  # separable enough to be interesting, not so much that the weights run away
    weight = torch.from_numpy(rng.random(n_pixels).astype(np.float32))
    weight /= weight.sum()
    l2 = 1e-2
    coef, bias, iterations, loss = fit_logistic(z, y, weight, l2=l2, max_iter=200)

    params = [coef.clone().requires_grad_(True), bias.clone().requires_grad_(True)]
    logits = z @ params[0].T + params[1]
    objective = (weight * torch.nn.functional.cross_entropy(logits, y, reduction="none")).sum()
    objective = objective + 0.5 * l2 * (params[0] ** 2).sum()
    objective.backward()
    assert 0 < iterations < 200  # stopped by the gradient tolerance, not the iteration cap
    assert abs(objective.detach().item() - loss) < 1e-5
    assert max(float(p.grad.abs().max()) for p in params) <= 1.1 * GRADIENT_TOLERANCE


def _objective_gradient(z, y, weight, l2, coef, bias):
    """Largest autograd gradient entry of the weighted, L2-penalised cross-entropy at (coef, bias)."""
    import torch

    params = [coef.clone().requires_grad_(True), bias.clone().requires_grad_(True)]
    logits = z @ params[0].T + params[1]
    objective = (weight * torch.nn.functional.cross_entropy(logits, y, reduction="none")).sum()
    (objective + 0.5 * l2 * (params[0] ** 2).sum()).backward()
    return max(float(p.grad.abs().max()) for p in params)


def test_coarse_start_reaches_the_same_minimum_in_fewer_full_iterations():
    """A cold fit on more than COARSE_MIN_ROWS rows starts from a subset's solution and ends at the same minimum.

    Mutation killed: a coarse start that is not used as the start (the full phase's halved budget then stops far
    from the minimum), or a coarse phase that replaces the full fit.
    """
    import torch

    from napari_hrdv2.core.segmentation.solver import COARSE_MIN_ROWS, fit_logistic

    rng = np.random.default_rng(1)
    n_rows = COARSE_MIN_ROWS + 808
    y = torch.from_numpy(rng.integers(0, 3, n_rows))
    z = torch.from_numpy(rng.standard_normal((n_rows, 12)).astype(np.float32))
    z[:, :3] += 1.5 * torch.nn.functional.one_hot(y, 3).float()
    z[:, 3] = 0.999 * z[:, 0] + 0.05 * z[:, 3]  # correlated columns: a harder problem for L-BFGS
    weight = torch.from_numpy(rng.random(n_rows).astype(np.float32))
    weight /= weight.sum()
    l2 = 1e-3
    cold = fit_logistic(z, y, weight, l2=l2, max_iter=300, coarse_start=False)
    coarse = fit_logistic(z, y, weight, l2=l2, max_iter=300)
    assert coarse[2] < cold[2]  # fewer iterations on all rows
    assert coarse[2] <= 150  # the full phase gets max_iter // 2
    for coef, bias, _, _ in (cold, coarse):
        assert _objective_gradient(z, y, weight, l2, coef, bias) <= 1.1 * GRADIENT_TOLERANCE
    torch.testing.assert_close(coarse[0], cold[0], rtol=0, atol=2e-2)
    assert abs(coarse[3] - cold[3]) < 1e-6
