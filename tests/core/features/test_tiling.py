"""Tiles blend without seams and tiling is a no-op when one tile covers the image."""

from __future__ import annotations

import numpy as np
import pytest

import napari_hrdv2 as hr
from napari_hrdv2.core.features.tiling import plan_tiles


@pytest.mark.parametrize(
    ("height", "width", "tile", "overlap"), [(1000, 700, 518, 84), (300, 90, 100, 30), (50, 50, 518, 84)]
)
def test_tile_windows_are_a_partition_of_unity(height, width, tile, overlap):
    total = np.zeros((height, width))
    tiles = plan_tiles(height, width, tile_size=tile, overlap=overlap)
    for t in tiles:
        assert t.height <= max(tile, height) and t.width <= max(tile, width)
        total[t.rows, t.cols] += np.outer(t.row_weights, t.col_weights)
    np.testing.assert_allclose(total, 1.0, atol=1e-6)


def test_tile_positions_and_ramps_have_known_answers():
    # 300 rows in tiles of 100 overlapping by 30: ceil(270 / 70) = 4 tiles, starts round(linspace(0, 200, 4)).
    tiles = plan_tiles(300, 90, tile_size=100, overlap=30)
    assert [(t.top, t.left, t.height, t.width) for t in tiles] == [(0, 0, 100, 90), (67, 0, 100, 90),
                                                                   (133, 0, 100, 90), (200, 0, 100, 90)]  # fmt: skip
    first = tiles[0].row_weights
    np.testing.assert_array_equal(first[:67], 1.0)  # alone until the next tile starts
    # Then a linear ramp over the 33-row overlap, sampled at pixel centres: (99.5 - row) / 33.
    np.testing.assert_allclose(first[67:], (99.5 - np.arange(67, 100)) / 33, rtol=1e-6)
    np.testing.assert_array_equal(tiles[0].col_weights, 1.0)
    # No tiling, or one tile as large as the image: one tile, weights 1.
    for size in (None, 300, 518):
        (whole,) = plan_tiles(300, 90, tile_size=size, overlap=30)
        assert (whole.top, whole.left, whole.height, whole.width) == (0, 0, 300, 90)
        np.testing.assert_array_equal(whole.row_weights, 1.0)


def test_single_tile_equals_untiled(tiny_backbone):
    image = np.random.default_rng(0).random((60, 70)).astype(np.float32)
    base = dict(backbone=tiny_backbone, device="cpu", shift_distances=(2,))
    untiled = hr.Featurizer(hr.FeatureConfig(tile_size=None, **base)).encode(image).features()
    one_tile = hr.Featurizer(hr.FeatureConfig(tile_size=518, **base)).encode(image)
    assert len(one_tile.tiles) == 1
    np.testing.assert_allclose(one_tile.features(), untiled, atol=1e-6)


def test_tiled_features_have_no_seams(tiny_backbone):
    """Neighbouring-pixel differences across tile borders are no larger than elsewhere."""
    rng = np.random.default_rng(1)
    image = rng.random((168, 168)).astype(np.float32) * 0.2 + np.linspace(0, 0.8, 168)[None, :]
    config = hr.FeatureConfig(backbone=tiny_backbone, device="cpu", shift_distances=(3,), tile_size=84, tile_overlap=28)
    encoding = hr.Featurizer(config).encode(image)
    assert len(encoding.tiles) > 1
    features = encoding.features()
    rng_idx = rng.integers(0, 168, 2000), rng.integers(0, 168, 2000)
    np.testing.assert_allclose(encoding.sample(*rng_idx), features[:, rng_idx[0], rng_idx[1]].T, atol=1e-5)
    step = np.linalg.norm(np.diff(features, axis=2), axis=0)  # (H, W-1) horizontal neighbour differences
    borders = sorted({t.tile.left for t in encoding.tiles if t.tile.left > 0})
    border_cols = [c - 1 for c in borders if 0 < c < 168]
    at_borders = step[:, border_cols].mean()
    assert at_borders <= 1.1 * np.percentile(step.mean(axis=0), 90)
    hard = hr.Featurizer(config.replace(tile_overlap=0)).encode(image)  # the test can fail: no blending, seams
    hard_step = np.linalg.norm(np.diff(hard.features(), axis=2), axis=0)
    hard_cols = [t.tile.left - 1 for t in hard.tiles if t.tile.left > 0]
    assert hard_step[:, hard_cols].mean() > 1.1 * np.percentile(hard_step.mean(axis=0), 90)
