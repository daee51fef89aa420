"""Tiles blend without seams and tiling is a no-op when one tile covers the image."""

from __future__ import annotations

import numpy as np
import pytest

import napari_hrdv2 as hr
from napari_hrdv2.core.features.tiling import plan_cost, plan_tiles


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
    # 300 rows, tiles of at most 100 overlapping by at least 30, patch 14: tiles of 98 px (the largest whole
    # 7-patch grid), inner starts on the 14-px grid, the last flush with the border. 4 tiles would need starts
    # 70 apart (> 98 - 30), so 5. (Before the cost-based planner: 4 tiles of 100 at 0, 67, 133, 200.)
    tiles = plan_tiles(300, 90, tile_size=100, overlap=30)
    assert [(t.top, t.left, t.height, t.width) for t in tiles] == [(0, 0, 98, 90), (56, 0, 98, 90), (98, 0, 98, 90),
                                                                   (154, 0, 98, 90), (202, 0, 98, 90)]  # fmt: skip
    first = tiles[0].row_weights
    np.testing.assert_array_equal(first[:56], 1.0)  # alone until the next tile starts
    # Then a linear ramp over the 42-row overlap, sampled at pixel centres: (97.5 - row) / 42.
    np.testing.assert_allclose(first[56:], (97.5 - np.arange(56, 98)) / 42, rtol=1e-6)
    np.testing.assert_array_equal(tiles[0].col_weights, 1.0)
    # No tiling, or one tile as large as the image: one tile, weights 1.
    for size in (None, 300, 518):
        (whole,) = plan_tiles(300, 90, tile_size=size, overlap=30)
        assert (whole.top, whole.left, whole.height, whole.width) == (0, 0, 300, 90)
        np.testing.assert_array_equal(whole.row_weights, 1.0)


PLANS = [
    (1024, 1024, 896, 84, 14, None),
    (2048, 2048, 896, 84, 14, None),
    (2048, 1500, 518, 84, 14, None),
    (700, 1300, 518, 84, 14, 7),
    (4096, 333, 896, 56, 16, None),
    (518, 518, 518, 84, 14, None),
    (300, 90, 100, 30, 14, None),
    (1000, 700, 518, 84, 14, None),
]


def _tokens(side, patch, stride):
    return 1 if side <= patch else 1 + -(-(side - patch) // stride)


@pytest.mark.parametrize(("height", "width", "bound", "overlap", "patch", "stride"), PLANS)
def test_plan_invariants(height, width, bound, overlap, patch, stride):
    kwargs = dict(tile_size=bound, overlap=overlap, patch_size=patch, stride=stride)
    tiles = plan_tiles(height, width, **kwargs)
    step = stride or patch
    total = np.zeros((height, width))
    for t in tiles:
        assert t.top >= 0 and t.left >= 0 and t.rows.stop <= height and t.cols.stop <= width
        total[t.rows, t.cols] += np.outer(t.row_weights, t.col_weights)
    np.testing.assert_allclose(total, 1.0, atol=1e-6)  # full coverage, weights a partition of unity
    for axis, length in ((0, height), (1, width)):
        spans = sorted({(t.top, t.height) if axis == 0 else (t.left, t.width) for t in tiles})
        sides = {side for _, side in spans}
        assert len(sides) == 1  # evenly sized
        (side,) = sides
        assert side <= max(bound, length if len(spans) == 1 else 0)
        if len(spans) > 1:
            assert (side - patch) % step == 0  # a whole patch grid: no padding
            starts = [start for start, _ in spans]
            assert starts[0] == 0 and starts[-1] + side == length
            assert all(s % step == 0 for s in starts[:-1])  # inner starts on the stride grid
            assert all(b - a <= side - overlap for a, b in zip(starts, starts[1:]))  # the overlap is kept
    again = plan_tiles(height, width, **kwargs)
    assert [(t.top, t.left, t.height, t.width) for t in again] == [(t.top, t.left, t.height, t.width) for t in tiles]
    assert all(np.array_equal(a.row_weights, b.row_weights) for a, b in zip(again, tiles))  # deterministic


def test_cost_model_picks_fewer_tokens():
    # 1024 x 1024 under the default bound: 2 x 2 tiles of 560 (6,400 tokens), not 3 x 3 of 518 (12,996).
    bound = hr.FeatureConfig().tile_size
    tiles = plan_tiles(1024, 1024, tile_size=bound, overlap=84)
    assert [(t.top, t.left, t.height, t.width) for t in tiles] == [(0, 0, 560, 560), (0, 464, 560, 560),
                                                                   (464, 0, 560, 560), (464, 464, 560, 560)]  # fmt: skip
    # Under the old default bound (518), 700 x 700 is 4 tiles of 392 (3,136 tokens), not 4 of 518 (5,476).
    tiles = plan_tiles(700, 700, tile_size=518, overlap=84)
    assert len(tiles) == 4 and {t.height for t in tiles} == {392}
    # 2048 x 2048: fewer tokens and a lower estimated cost than the 5 x 5 tiles of 518 of the old plan.
    old = [plan_tiles(518, 518, tile_size=518, overlap=84)[0]] * 25
    new = plan_tiles(2048, 2048, tile_size=bound, overlap=84)
    old_tokens = sum(_tokens(t.height, 14, 14) * _tokens(t.width, 14, 14) for t in old)
    new_tokens = sum(_tokens(t.height, 14, 14) * _tokens(t.width, 14, 14) for t in new)
    assert old_tokens == 25 * 37 * 37 and new_tokens < 0.8 * old_tokens
    assert plan_cost(new) < 0.85 * plan_cost(old)
    # An image within the bound stays one tile; no bound: always one tile.
    for size in ((518, 518), (300, 700), (896, 896)):
        assert len(plan_tiles(*size, tile_size=bound, overlap=84)) == 1
    assert len(plan_tiles(5000, 5000, tile_size=None, overlap=84)) == 1
    # A wider backbone makes attention relatively cheaper: never more tiles than a narrow one.
    wide = plan_tiles(2048, 2048, tile_size=bound, overlap=84, embed_dim=1024, depth=24)
    assert len(wide) <= len(new)


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


def test_streaming_plans_the_in_memory_tiles(tiny_backbone):
    from napari_hrdv2.core.scale.streaming import TileEncoder

    image = np.random.default_rng(2).random((150, 200)).astype(np.float32)
    config = hr.FeatureConfig(backbone=tiny_backbone, device="cpu", shift_distances=(2,), tile_size=84, tile_overlap=28)
    featurizer = hr.Featurizer(config)
    in_memory = [t.tile for t in featurizer.encode(image).tiles]
    streamed = TileEncoder(featurizer, image).tiles
    assert len(in_memory) > 1
    assert [(t.top, t.left, t.height, t.width) for t in streamed] == [
        (t.top, t.left, t.height, t.width) for t in in_memory
    ]
    assert all(np.array_equal(a.row_weights, b.row_weights) for a, b in zip(streamed, in_memory))
