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


def _dense_pca_rgb(dense: np.ndarray, fit_on: list[np.ndarray], components=(0, 1, 2)) -> np.ndarray:
    """Independent reference: PCA of ALL pixels of ``fit_on`` (numpy SVD), 2/98 % range, applied to ``dense``."""
    vectors = np.concatenate([f.reshape(f.shape[0], -1).T for f in fit_on]).astype(np.float64)
    mean = vectors.mean(axis=0)
    _, _, vt = np.linalg.svd(vectors - mean, full_matrices=False)
    axes = vt[list(components)]
    axes *= np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(axis=1)])[:, None]  # stated sign convention
    low, high = np.percentile((vectors - mean) @ axes.T, [2, 98], axis=0)
    scores = np.einsum("kc,chw->hwk", axes, dense - mean[:, None, None])
    return np.clip((scores - low) / (high - low), 0, 1)


@pytest.fixture(scope="module")
def other_encoding(tiny_backbone):
    """Image B: another texture pair (shuffled halves, different seed), same feature settings."""
    from conftest import two_texture_image

    image, _ = two_texture_image(84, seed=5)
    return hr.Featurizer(
        hr.FeatureConfig(backbone=tiny_backbone, device="cpu", shift_distances=(3,), tile_size=None)
    ).encode(np.ascontiguousarray(image[:, ::-1].T))


def test_basis_fitted_on_a_gives_a_the_colours_of_a_dense_pca(encoding):
    every_pixel = 84 * 84
    basis = hr.fit_pca([encoding], n_components=3, n_pixels=every_pixel)
    expected = _dense_pca_rgb(encoding.features(), [encoding.features()])
    np.testing.assert_allclose(basis.to_rgb(encoding), expected, atol=2e-3)
    np.testing.assert_allclose(hr.pca_rgb(encoding, n_pixels=every_pixel), expected, atol=2e-3)
    assert basis.metadata["n_images"] == 1 and basis.metadata["n_pixels_fitted"] == every_pixel
    ratio = basis.explained_variance_ratio
    assert np.all(np.diff(ratio) <= 0) and 0 < ratio.sum() < 1


def test_basis_applied_to_b_uses_a_basis_not_b(encoding, other_encoding):
    every_pixel = 84 * 84
    basis = hr.fit_pca([encoding], n_components=6, n_pixels=every_pixel)
    on_b = basis.to_rgb(other_encoding)
    np.testing.assert_allclose(on_b, _dense_pca_rgb(other_encoding.features(), [encoding.features()]), atol=2e-3)
    assert np.abs(on_b - hr.pca_rgb(other_encoding, n_pixels=every_pixel)).max() > 0.2  # B's own basis differs
    np.testing.assert_allclose(
        basis.to_rgb(other_encoding, (3, 4, 5)),
        _dense_pca_rgb(other_encoding.features(), [encoding.features()], (3, 4, 5)),
        atol=2e-3,
    )


def test_collection_basis_is_the_pca_of_all_images_pixels(encoding, other_encoding):
    every_pixel = 84 * 84
    basis = hr.fit_pca([encoding, other_encoding], n_pixels=every_pixel, max_pixels=2 * every_pixel)
    dense = [encoding.features(), other_encoding.features()]
    for features, source in zip(dense, (encoding, other_encoding)):
        np.testing.assert_allclose(basis.to_rgb(source), _dense_pca_rgb(features, dense), atol=2e-3)
    assert basis.metadata["n_images"] == 2 and basis.metadata["n_pixels_fitted"] == 2 * every_pixel


def test_memory_is_bounded_by_a_uniform_reservoir(encoding, other_encoding):
    from napari_hrdv2.core.analysis.pca import _Reservoir

    basis = hr.fit_pca([encoding, other_encoding, encoding], n_pixels=1000, max_pixels=700)
    assert basis.metadata["n_pixels_sampled"] == 3000 and basis.metadata["n_pixels_fitted"] == 700
    # Algorithm R keeps every row with probability capacity / seen, whichever batch it came in.
    kept = np.zeros(2000)
    for trial in range(300):
        reservoir = _Reservoir(100, np.random.default_rng(trial))
        for start in range(0, 2000, 250):
            reservoir.add(np.arange(start, start + 250, dtype=np.float32)[:, None])
        assert reservoir.size == 100
        kept[reservoir.rows[:, 0].astype(int)] += 1
    per_batch = kept.reshape(8, 250).sum(axis=1) / (300 * 100)
    np.testing.assert_allclose(per_batch, 1 / 8, atol=0.015)


def test_images_with_a_config_equal_their_encodings(tiny_config, encoding):
    from conftest import two_texture_image

    image, _ = two_texture_image(84)
    config = encoding.config
    from_images = hr.fit_pca([image, image[::-1]], config=config, n_pixels=500)
    from_encodings = hr.fit_pca([encoding, hr.Featurizer(config).encode(image[::-1])], n_pixels=500)
    np.testing.assert_allclose(from_images.components, from_encodings.components, atol=1e-5)
    assert from_images.metadata["feature_signature"] == config.feature_signature()
    with pytest.raises(hr.InputError, match="config="):
        hr.fit_pca([image])


def test_fit_reports_progress_and_cancels(encoding, other_encoding):
    import threading

    seen = []
    hr.fit_pca([encoding, other_encoding], n_pixels=200, progress=seen.append)
    assert [(p.done, p.total) for p in seen] == [(0, 2), (1, 2), (2, 2)]
    cancel = threading.Event()
    with pytest.raises(hr.Cancelled):
        hr.fit_pca([encoding, other_encoding], n_pixels=200, progress=lambda p: cancel.set(), cancel=cancel)


def test_saved_basis_loads_back_equal(encoding, tmp_path):
    basis = hr.fit_pca([encoding], n_components=5, foreground=True)
    path = basis.save(tmp_path / "basis.safetensors")
    loaded = hr.PCABasis.load(path)
    for name in ("mean", "components", "low", "high", "explained_variance", "foreground_weight"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(basis, name))
    assert loaded.foreground_bias == basis.foreground_bias and loaded.metadata == basis.metadata
    assert loaded.metadata["backbone"] == encoding.config.backbone and loaded.metadata["created"]
    np.testing.assert_array_equal(loaded.to_rgb(encoding), basis.to_rgb(encoding))
    with pytest.raises(hr.InputError, match="already exists"):
        basis.save(path)
    (tmp_path / "junk.safetensors").write_bytes(b"not a basis")
    with pytest.raises(hr.ModelFileError, match="not a PCA basis"):
        hr.PCABasis.load(tmp_path / "junk.safetensors")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


def test_basis_refuses_features_of_another_config(encoding, tiny_backbone):
    from conftest import two_texture_image

    basis = hr.fit_pca(encoding)
    other = hr.Featurizer(hr.FeatureConfig(backbone=tiny_backbone, device="cpu", shifts="none", tile_size=None)).encode(
        two_texture_image(84)[0]
    )
    with pytest.raises(hr.InputError, match="shifts='moore' for the basis but 'none'"):
        basis.to_rgb(other)
    with pytest.raises(hr.InputError, match="other features than the first input: .*shifts='moore'"):
        hr.fit_pca([encoding, other])
    with pytest.raises(hr.InputError, match="128-channel"):
        basis.to_rgb(np.zeros((5, 8, 8), np.float32))


def test_component_choice_and_grey(encoding):
    basis = hr.fit_pca(encoding, n_components=6)
    grey = basis.to_rgb(encoding, components=2)
    np.testing.assert_array_equal(grey[..., 0], grey[..., 2])
    np.testing.assert_array_equal(grey[..., 0], basis.to_grey(encoding, 2))
    np.testing.assert_allclose(basis.to_rgb(encoding, (4, 2, 0))[..., 1], grey[..., 0], atol=1e-6)
    with pytest.raises(hr.InputError, match="three components"):
        basis.to_rgb(encoding, (0, 1))
    with pytest.raises(hr.InputError, match="has 6"):
        basis.to_rgb(encoding, (0, 1, 6))


def _object_on_background(size: int = 98, radius: int = 26, invert: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A striped noisy disc on a smooth background; (image uint8, disc mask)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2 + 0.5) ** 2 + (xx - size / 2 + 0.5) ** 2 < radius**2
    image = 60 + 5 * rng.standard_normal((size, size))
    texture = 150 + (xx // 3 % 2) * 80 + 25 * rng.standard_normal((size, size))
    image[disc] = texture[disc]
    image = 255 - image if invert else image
    return np.clip(image, 0, 255).astype(np.uint8), disc


@pytest.mark.parametrize("invert", [False, True], ids=["bright-object", "dark-object"])
def test_foreground_is_the_object_by_otsu_and_the_border_rule(tiny_config, invert):
    image, disc = _object_on_background(invert=invert)
    encoding = hr.Featurizer(tiny_config).encode(image)
    basis = hr.fit_pca(encoding, foreground=True)
    found = basis.foreground_mask(encoding)
    assert (found & disc).sum() / (found | disc).sum() > 0.85
    assert basis.metadata["foreground"]["border_fraction_high"] in (0.0, 1.0)
    overridden = hr.fit_pca(encoding, foreground=True, invert_foreground=True).foreground_mask(encoding)
    assert not (overridden & found).any() and (overridden | found).mean() > 0.99
    rgb = hr.pca_rgb(encoding, foreground=True)
    np.testing.assert_array_equal(np.all(rgb == 0, axis=-1), ~found)
    manual = hr.fit_pca(encoding, foreground=True, foreground_threshold=0.5).foreground_mask(encoding)
    assert (manual & disc).sum() / (manual | disc).sum() > 0.6
    with pytest.raises(hr.InputError, match="Otsu"):
        hr.fit_pca(encoding, foreground=True, foreground_threshold=1.5)


def test_attention_cue_is_otsu_of_the_mean_attention(tiny_config):
    from skimage.filters import threshold_otsu

    image, _ = _object_on_background()
    encoding = hr.Featurizer(tiny_config).encode(image)
    basis = hr.fit_pca(encoding, foreground=True, foreground_cue="attention")
    attention = encoding.attention().mean(axis=0)  # random weights: the cue's definition, not its quality
    np.testing.assert_array_equal(basis.foreground_mask(encoding), attention > threshold_otsu(attention))
    assert basis.metadata["foreground"]["cue"] == "attention"


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
    assert hr.feature_norm(encoding).dtype == np.float32 and hr.feature_norm(dense).dtype == np.float32
    similarity = hr.cosine_similarity_map(encoding, 10, 10)
    assert similarity[10, 10] == pytest.approx(1.0, abs=1e-4)
    np.testing.assert_allclose(similarity, hr.cosine_similarity_map(dense, 10, 10), atol=1e-4)
    assert similarity[:, :30].mean() > similarity[:, 54:].mean()  # same texture is more similar
    with pytest.raises(hr.InputError, match="outside"):
        hr.cosine_similarity_map(encoding, 100, 0)


def test_other_weights_are_refused_naming_where_the_basis_backbone_was():
    def basis(**metadata):
        eye = np.eye(2, 4, dtype=np.float32)
        low, high = np.zeros(2, np.float32), np.ones(2, np.float32)
        return hr.PCABasis(np.zeros(4, np.float32), eye, low, high, metadata=metadata, backbone_fingerprint=np.ones(3))

    relative = basis(backbone="bb/tiny", backbone_resolved="/data/bb/tiny")
    relative.check_backbone_weights(np.ones(3))  # the same weights
    relative.check_backbone_weights(None)  # unknown weights pass
    with pytest.raises(hr.InputError, match=r"backbone 'bb/tiny' \(at '/data/bb/tiny' when it was fitted"):
        relative.check_backbone_weights(np.full(3, 2.0))
    with pytest.raises(hr.InputError, match=r"backbone 'hub' \(at 'hub' when it was fitted"):
        basis(backbone="hub").check_backbone_weights(np.full(3, 2.0))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"n_components": 0}, "n_components must be at least 1, got 0"),
        ({"n_pixels": 1}, "n_pixels and max_pixels must be at least 2, got 1 and"),
        ({"max_pixels": 1}, "n_pixels and max_pixels must be at least 2, got .* and 1"),
        ({"foreground": True, "foreground_cue": "colour"}, "foreground_cue='colour' is not one of"),
        ({"foreground": True, "foreground_threshold": 1.0}, "in \\(0, 1\\); got 1.0"),
    ],
)
def test_fit_options_are_checked_before_any_work(encoding, options, message):
    with pytest.raises(hr.InputError, match=message):
        hr.fit_pca(encoding, **options)
