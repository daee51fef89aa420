"""PCA-RGB, feature norms and cosine-similarity maps from encodings and dense features."""

from __future__ import annotations

import numpy as np
import pytest

import napari_hrdv2 as hr


@pytest.fixture(scope="module")
def encoding(tiny_backbone):
    from conftest import two_texture_image

    image, _ = two_texture_image(84)
    return hr.Featurizer(
        hr.FeatureConfig(backbone=tiny_backbone, device="cpu", shift_distances=(3,), tile_size=None)
    ).encode(image)


def test_pca_rgb_from_encoding_equals_dense(encoding):
    rgb = hr.pca_rgb(encoding)
    assert rgb.shape == (84, 84, 3) and rgb.dtype == np.float32
    assert rgb.min() >= 0.0 and rgb.max() <= 1.0 and rgb.std() > 0.05
    np.testing.assert_allclose(hr.pca_rgb(encoding.features()), rgb, atol=1e-4)


def test_pca_basis_reused_across_images(encoding):
    basis = hr.fit_pca(encoding, n_components=6)
    assert basis.components.shape == (6, encoding.n_features)
    np.testing.assert_allclose(basis.components @ basis.components.T, np.eye(6), atol=1e-4)
    np.testing.assert_allclose(hr.pca_rgb(encoding, basis=basis), basis.to_rgb(encoding), atol=1e-6)
    later = hr.pca_rgb(encoding, basis=basis, components=(3, 4, 5))
    assert not np.allclose(later, basis.to_rgb(encoding))
    with pytest.raises(hr.InputError, match="three components"):
        basis.to_rgb(encoding, (0, 1))


def test_first_component_separates_the_two_textures(encoding):
    scores = hr.fit_pca(encoding, n_components=1).project(encoding)[0]
    left, right = scores[:, :30].mean(), scores[:, 54:].mean()
    spread = scores.std()
    assert abs(left - right) > spread  # the halves sit on opposite sides of the first axis


def test_foreground_pca_blacks_out_background(encoding):
    rgb = hr.pca_rgb(encoding, foreground=True)
    inverted = hr.pca_rgb(encoding, foreground=True, invert_foreground=True)
    background = np.all(rgb == 0, axis=-1)
    assert 0.2 < background.mean() < 0.8
    np.testing.assert_array_equal(np.all(inverted == 0, axis=-1) & background, np.zeros_like(background))


def test_norm_and_cosine_similarity(encoding):
    dense = encoding.features()
    np.testing.assert_allclose(hr.feature_norm(encoding), np.linalg.norm(dense, axis=0), rtol=1e-4)
    similarity = hr.cosine_similarity_map(encoding, 10, 10)
    assert similarity[10, 10] == pytest.approx(1.0, abs=1e-4)
    np.testing.assert_allclose(similarity, hr.cosine_similarity_map(dense, 10, 10), atol=1e-4)
    assert similarity[:, :30].mean() > similarity[:, 54:].mean()  # same texture is more similar
    with pytest.raises(hr.InputError, match="outside"):
        hr.cosine_similarity_map(encoding, 100, 0)
