"""The sparse reconstruction in channel blocks, with buffers reused across blocks and tiles."""

from __future__ import annotations

import numpy as np

import napari_hrdv2 as hr
import napari_hrdv2.core.features.encoding as encoding_module


def test_uneven_channel_blocks_over_several_tiles_equal_exact_samples(tiny_backbone, monkeypatch):
    """Blocks of 43, 43 and 42 channels on 4 tiles give the features that sample() reads from taps."""
    rng = np.random.default_rng(3)
    image = (rng.random((120, 130)) * 255).astype(np.uint8)
    config = hr.FeatureConfig(
        backbone=tiny_backbone, device="cpu", shifts="neumann", shift_distances=(2,), tile_size=84, tile_overlap=28
    )
    encoding = hr.Featurizer(config).encode(image, with_attention=True)
    assert len(encoding.tiles) == 4  # one scratch buffer serves every tile and block
    one_block = encoding.features()
    weight = rng.standard_normal((3, encoding.n_features)).astype(np.float32)
    projected, attention = encoding.project(weight), encoding.attention()

    tile = encoding.tiles[0]
    plan, grid_h = tile.reconstruction_plan(), tile.maps.shape[2]
    n_groups, n_taps = len(plan.groups), plan.row_index.shape[1]
    per_channel = n_groups * grid_h * tile.tile.width + 2 * tile.tile.height * n_taps
    per_channel += max(grid_h * tile.tile.width, tile.tile.height * tile.tile.width)
    monkeypatch.setattr(encoding_module, "_BLOCK_ELEMENTS", 50 * per_channel)  # 128 channels -> 3 blocks
    blocked = encoding.features()

    rows, cols = rng.integers(0, 120, 3000), rng.integers(0, 130, 3000)
    np.testing.assert_allclose(blocked[:, rows, cols].T, encoding.sample(rows, cols), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(blocked, one_block, atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(encoding.project(weight), projected, atol=1e-5)
    np.testing.assert_allclose(encoding.attention(), attention, atol=1e-6)
    np.testing.assert_allclose(
        encoding.features([5, 100, 7]), blocked[[5, 100, 7]], atol=1e-6
    )  # an index channel selection, converted from the float16 storage
