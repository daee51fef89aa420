"""The encoding cache keeps one featurizer per feature configuration (core.features.cache)."""

from __future__ import annotations

import napari_hrdv2 as hr
from napari_hrdv2.core.features.cache import EncodingCache


def test_featurizer_is_one_per_config_until_the_cache_is_cleared(tiny_backbone):
    """Two requests with equal configs return the same featurizer (its loaded backbone and batch size are reused);
    another config gets its own; after ``clear()`` a new one is built.

    Mutation killed: ``EncodingCache.featurizer`` that never stores the featurizer (a new one on every call).
    """
    config = hr.FeatureConfig(backbone=tiny_backbone, device="cpu", shifts="none", tile_size=None)
    cache = EncodingCache()
    first = cache.featurizer(config)
    assert cache.featurizer(config) is first
    assert cache.featurizer(config.replace(shifts="none")) is first  # an equal config, not the same object
    other = cache.featurizer(config.replace(shifts="neumann", shift_distances=(2,)))
    assert other is not first and other.config.shifts == "neumann"
    cache.clear()
    assert cache.featurizer(config) is not first
