"""Known-answer tests for bugs that used to survive the whole suite (issue 13, "Tests that catch bugs").

Each test states the answer it expects from first principles (not from the implementation), and was
checked to FAIL under the mutation named in its docstring (see /work/notes/cleanup.md for the runs).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import napari_hrdv2 as hr
from napari_hrdv2.core.features.cache import EncodingCache
from napari_hrdv2.core.features.encoding import pad_to_grid
from napari_hrdv2.core.features.tiling import plan_tiles
from napari_hrdv2.core.segmentation.solver import class_weights, fold_scaler, standardize


@pytest.fixture(scope="module")
def exact_config(tiny_backbone):
    """No shifts (no periodic roll), float32 maps, fixed 8-bit scaling: crops and paddings compare exactly."""
    return hr.FeatureConfig(
        backbone=tiny_backbone, device="cpu", shifts="none", tile_size=None, storage_dtype="float32", normalize="dtype"
    )


# ---------------------------------------------------------------------------------------------- encoding
def test_tiles_blend_with_both_row_and_column_windows(exact_config):
    """Tiled features = sum over tiles of outer(row window, column window) * (features of that tile alone).

    Mutation killed: dropping a tile's row (or column) blending weights; the old seam test looked at columns only.
    """
    image = (np.random.default_rng(3).random((70, 63)) * 255).astype(np.uint8)
    tiled = hr.Featurizer(exact_config.replace(tile_size=42, tile_overlap=14)).encode(image)
    tiles = plan_tiles(70, 63, tile_size=42, overlap=14)
    assert len({t.top for t in tiles}) > 1 and len({t.left for t in tiles}) > 1  # overlaps along both axes
    alone = hr.Featurizer(exact_config)
    expected = np.zeros((tiled.n_features, 70, 63), dtype=np.float64)
    for tile in tiles:
        window = np.outer(tile.row_weights, tile.col_weights)
        expected[:, tile.rows, tile.cols] += window * alone.encode(image[tile.rows, tile.cols]).features()
    np.testing.assert_allclose(tiled.features(), expected, atol=2e-5)


def test_padding_goes_to_the_bottom_and_right():
    """The image stays at the top-left of the padded grid; the padding reflects its last rows and columns.

    Mutation killed: padding on the top/left (the outputs still have the right size).
    """
    pixels = torch.arange(3 * 15 * 17, dtype=torch.float32).reshape(3, 15, 17)
    padded = pad_to_grid(pixels, patch_size=14, stride=14)
    assert padded.shape == (3, 28, 28)
    torch.testing.assert_close(padded[:, :15, :17], pixels)
    torch.testing.assert_close(padded[:, 15, :17], pixels[:, 13, :])  # reflection about the last row
    torch.testing.assert_close(padded[:, :15, 17], pixels[:, :, 15])


@pytest.mark.parametrize("shape", [(15, 29), (57, 30), (100, 14)])
def test_features_of_any_size_align_with_the_pixels(exact_config, shape):
    """An image whose sides are not multiples of 14 has the features of its reflection-padded version, cropped.

    Padding at the bottom/right leaves every pixel where it was, so the features (and attention) of pixel
    (r, c) are those of the same pixel in the image extended by the same reflection to whole patches.
    Mutation killed: padding on the top/left; a resize that does not crop at the top-left.
    """
    height, width = shape
    image = (np.random.default_rng(1).random(shape) * 255).astype(np.uint8)
    grid_h, grid_w = -(-height // 14) * 14, -(-width // 14) * 14
    extended = np.pad(image, ((0, grid_h - height), (0, grid_w - width)), mode="reflect")
    featurizer = hr.Featurizer(exact_config)
    encoding, whole = featurizer.encode(image), featurizer.encode(extended)
    np.testing.assert_allclose(encoding.features(), whole.features()[:, :height, :width], atol=1e-5)
    np.testing.assert_allclose(encoding.attention(), whole.attention()[:, :height, :width], atol=1e-6)


def test_cache_key_includes_the_feature_settings(tiny_backbone):
    """One plane encoded with two configs gives two encodings; the same config is a cache hit.

    Mutation killed: an encoding cache whose key ignores the config (the second config got the first's maps).
    """
    plane = (np.random.default_rng(2).random((28, 42)) * 255).astype(np.uint8)
    none = hr.FeatureConfig(backbone=tiny_backbone, device="cpu", shifts="none", tile_size=None)
    neumann = none.replace(shifts="neumann", shift_distances=(2,))
    cache = EncodingCache()
    first = hr.core.progress.run_steps(cache.iter_encode(plane, none))
    second = hr.core.progress.run_steps(cache.iter_encode(plane, neumann))
    assert (first.n_transforms, second.n_transforms) == (1, 5)
    assert second.config == neumann and len(cache) == 2
    assert hr.core.progress.run_steps(cache.iter_encode(plane.copy(), none)) is first  # content, not identity


# ---------------------------------------------------------------------------------------------- segmenter
def _gaussian_quantiles(n: int, mean: float) -> np.ndarray:
    """``n`` evenly spaced quantiles of N(mean, 1): a deterministic 'sample' with exactly that mean."""
    from statistics import NormalDist

    return mean + np.array([NormalDist().inv_cdf((i + 0.5) / n) for i in range(n)])


def test_class_balancing_moves_the_boundary_to_the_midpoint():
    """1000 pixels of class 1 ~ N(0, 1), 10 of class 2 ~ N(2, 1), one feature.

    Balanced, both classes weigh the same: the boundary is the midpoint 1, so x = 1.6 is class 2.
    Unbalanced, the 100:1 prior moves it to about 1 + ln(100) / 2 = 3.3, so x = 1.6 is class 1.
    Mutation killed: skipping class balancing.
    """
    values = np.concatenate([_gaussian_quantiles(1000, 0.0), _gaussian_quantiles(10, 2.0)])
    features = values[None, None, :].astype(np.float32)  # (C=1, H=1, W=1010)
    labels = np.concatenate([np.full(1000, 1), np.full(10, 2)])[None, :]
    probe = np.array([[[1.6, 0.4]]], dtype=np.float32)
    balanced = hr.LinearSegmenter(l2=0.0).fit(features, labels)
    assert balanced.predict(probe).tolist() == [[2, 1]]
    assert hr.LinearSegmenter(l2=0.0, class_balanced=False).fit(features, labels).predict(probe).tolist() == [[1, 1]]
    weights = class_weights(torch.tensor([0, 0, 0, 1]), 2, balanced=True)
    torch.testing.assert_close(weights, torch.tensor([1 / 6, 1 / 6, 1 / 6, 1 / 2]))


def test_folded_scaler_predicts_like_the_standardised_model():
    """W (x - m) / s + b = (W / s) x + (b - (W / s) m), on features far from zero mean and unit scale.

    Mutation killed: folding the scaler with the wrong sign (or multiplying by the scale).
    """
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(50.0, 10.0, (200, 4)))
    z, mean, std = standardize(x)
    torch.testing.assert_close(z.mean(0), torch.zeros(4, dtype=z.dtype), atol=1e-9, rtol=0)
    weight, bias = torch.from_numpy(rng.normal(size=(3, 4))), torch.from_numpy(rng.normal(size=3))
    coef, intercept = fold_scaler(weight, bias, mean, std)
    torch.testing.assert_close(x @ coef.T + intercept, z @ weight.T + bias)

    # End to end: two separable clusters around 100 (scale 10) are predicted perfectly from the raw features.
    labels = np.repeat([[1, 2]], 50, axis=0)  # (50, 2): left column class 1, right column class 2
    features = np.stack([100 + 10 * rng.random((50, 2)) - 20 * (labels == 1), 3 * rng.random((50, 2))])
    seg = hr.LinearSegmenter().fit(features.astype(np.float32), labels)
    np.testing.assert_array_equal(seg.predict(features.astype(np.float32)), labels)


def test_warm_start_continues_from_the_previous_solution():
    """Refitting the same data with warm_start from the optimum stays at the optimum, even with one iteration.

    A cold fit with one iteration stays far from it. Mutation killed: a warm_start that ignores the previous solution.
    """
    rng = np.random.default_rng(4)
    labels = rng.integers(1, 4, (30, 30))
    features = (rng.normal(size=(6, 30, 30)) + labels[None] * np.arange(1, 7)[:, None, None] * 0.3).astype(np.float32)
    seg = hr.LinearSegmenter(warm_start=True, max_iter=200).fit(features, labels)
    optimum, coef = seg.summary_.final_loss, seg.coef_.copy()
    seg.max_iter = 1
    seg.fit(features, labels)
    assert seg.summary_.final_loss == pytest.approx(optimum, rel=1e-4)
    np.testing.assert_allclose(seg.coef_, coef, rtol=1e-2, atol=1e-3)
    cold = hr.LinearSegmenter(max_iter=1).fit(features, labels)
    assert cold.summary_.final_loss > optimum * 1.05


# ---------------------------------------------------------------------------------------------- model file
#: A value other than the default for every FeatureConfig field (the test fails when a field is added without one).
NON_DEFAULT_CONFIG = {
    "backbone": "dinov2_vitb14_reg",
    "shifts": "neumann",
    "shift_distances": (2, 7),
    "flips": True,
    "rotations": True,
    "stride": 7,
    "resize": "nearest",
    "normalize": "percentile",
    "facet": "key",
    "layer": -2,
    "tile_size": 224,
    "tile_overlap": 28,
    "device": "cpu",
    "dtype": "float32",
    "storage_dtype": "bfloat16",
    "batch_size": 3,
    "weights_sha256": "ab" * 32,
    "channel_mode": "separate",
    "volume": True,
    "runtime": "openvino",
}
#: Fields that cannot all be away from their defaults in one config (volumes of separate channels are refused):
#: the round trip is checked once with each of them at its default.
EXCLUSIVE_FIELDS = ("channel_mode", "volume")
NON_DEFAULT_PARAMS = {
    "l2": 0.5,
    "class_balanced": False,
    "hybrid": True,
    "classical_sigmas": [1.5, 3.0],
    "max_pixels_per_class": 77,
    "max_iter": 12,
    "majority_size": 5,
    "min_object_size": 9,
    "refine": "crf",
    "refine_options": {"iterations": 2, "radius": 4, "spatial_sigma": 2.0, "intensity_sigma": 0.2, "weight": 3.0},
    "warm_start": True,
    "seed": 42,
}


def test_model_file_round_trip_keeps_every_non_default_setting(tmp_path):
    """Every FeatureConfig field and every hyper-parameter, each set away from its default, comes back.

    Mutation killed: losing ``resize`` (or any other field) between save and load.
    """
    config_fields = {f.name: f.default for f in dataclasses.fields(hr.FeatureConfig)}
    assert set(NON_DEFAULT_CONFIG) == set(config_fields), "give the new FeatureConfig field a non-default value here"
    assert all(NON_DEFAULT_CONFIG[name] != default for name, default in config_fields.items())
    assert set(NON_DEFAULT_PARAMS) == set(hr.LinearSegmenter().get_params())
    assert all(value != hr.LinearSegmenter().get_params()[name] for name, value in NON_DEFAULT_PARAMS.items())

    for field in EXCLUSIVE_FIELDS:
        config = hr.FeatureConfig(**{**NON_DEFAULT_CONFIG, field: config_fields[field]})
        round_trip(config, tmp_path / f"without_{field}.hrdv2")


def round_trip(config: hr.FeatureConfig, path) -> None:
    seg = hr.LinearSegmenter(**NON_DEFAULT_PARAMS)
    n_features = 8 + seg.n_classical
    seg.feature_config = config
    seg.classes_ = np.array([2, 5, 300])
    seg.coef_ = np.arange(3 * n_features, dtype=np.float32).reshape(3, n_features) / 7
    seg.intercept_ = np.array([0.5, -1.0, 2.0], dtype=np.float32)
    seg.n_hr_features_ = 8
    loaded = hr.LinearSegmenter.load(seg.save(path))
    assert loaded.feature_config == seg.feature_config
    assert loaded.get_params() == NON_DEFAULT_PARAMS
    np.testing.assert_array_equal(loaded.classes_, [2, 5, 300])
    np.testing.assert_array_equal(loaded.coef_, seg.coef_)
    np.testing.assert_array_equal(loaded.intercept_, seg.intercept_)
    assert loaded.n_hr_features_ == 8
