"""The Features dock's analysis jobs (no Qt): same answers as the core functions they drive."""

from __future__ import annotations

import numpy as np
import pytest

import napari_hrdv2 as hr
from conftest import two_texture_image
from napari_hrdv2._analysis_jobs import match_job, pca_apply_job, pca_fit_job, similarity_search_job
from napari_hrdv2.core.features.cache import EncodingCache
from napari_hrdv2.core.progress import run_steps


@pytest.fixture(scope="module")
def stack():
    return np.stack([two_texture_image(56, seed=1)[0], two_texture_image(56, seed=2)[0].T])


def test_fit_on_all_planes_then_apply_with_fixed_colours(tiny_config, stack):
    cache = EncodingCache()
    updates = []
    basis = run_steps(
        pca_fit_job(stack, [0, 1], tiny_config, cache, is_stack=True, n_components=4), progress=updates.append
    )
    expected = hr.fit_pca(list(stack), config=tiny_config, n_components=4)
    np.testing.assert_allclose(basis.components, expected.components, atol=1e-5)
    assert basis.metadata["n_images"] == 2 and all(0 <= u.fraction <= 1 for u in updates)
    views = run_steps(pca_apply_job(stack, [1], basis, tiny_config, cache, is_stack=True, components=(3, 1, 0)))
    encoding = hr.Featurizer(tiny_config).encode(stack[1])
    np.testing.assert_allclose(views[1], basis.to_rgb(encoding, (3, 1, 0)), atol=1e-5)


def test_region_similarity_over_planes_uses_one_reference(tiny_config, stack):
    cache = EncodingCache()
    mask = np.zeros((56, 56), bool)
    mask[10:40, 5:20] = True
    maps = run_steps(
        similarity_search_job(stack, [0, 1], tiny_config, cache, is_stack=True, reference_plane=0, mask=mask)
    )
    featurizer = hr.Featurizer(tiny_config)
    reference = hr.region_vector(featurizer.encode(stack[0]), mask)
    for index in (0, 1):
        np.testing.assert_allclose(maps[index], hr.similarity_to(featurizer.encode(stack[index]), reference), atol=1e-5)
    with pytest.raises(hr.InputError, match="exactly one reference"):
        run_steps(similarity_search_job(stack, [0], tiny_config, cache, is_stack=True, reference_plane=0))


def test_match_job_equals_match_patches(tiny_config, stack):
    matches = run_steps(match_job(stack[0], stack[0][14:, 14:], tiny_config, EncodingCache(), top_k=5))
    assert matches.shape == (5, 5)
    np.testing.assert_array_equal(matches[:, 0] - matches[:, 2], 14)
