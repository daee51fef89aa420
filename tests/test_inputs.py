"""Image types, sizes and bad inputs accepted or rejected by the encoder."""

from __future__ import annotations

import numpy as np
import pytest

import napari_hrdv2 as hr
from napari_hrdv2.core.features.preprocess import scale_intensities, to_rgb01


@pytest.fixture(scope="module")
def featurizer(tiny_backbone):
    # float32 storage: these tests compare features of differently scaled copies of one image to 1e-5.
    config = hr.FeatureConfig(
        backbone=tiny_backbone, device="cpu", shifts="none", tile_size=None, storage_dtype="float32"
    )
    return hr.Featurizer(config)


@pytest.fixture(scope="module")
def grey():
    return (np.random.default_rng(0).random((33, 47)) * 255).astype(np.uint8)


def test_grey_rgb_and_rgba_agree(featurizer, grey):
    expected = featurizer.encode(grey).features()
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    rgba = np.concatenate([rgb, np.full_like(grey, 7)[..., None]], axis=-1)
    np.testing.assert_allclose(featurizer.encode(rgb).features(), expected, atol=1e-6)
    np.testing.assert_allclose(featurizer.encode(rgba).features(), expected, atol=1e-6)  # alpha dropped


@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.float64, np.int32])
def test_dtypes_scale_to_the_same_features(featurizer, grey, dtype):
    """min-max scaling makes 8-bit, 16-bit and float versions of one image identical."""
    expected = featurizer.encode(grey).features()
    converted = grey.astype(dtype) * (257 if dtype == np.uint16 else 1) + (3 if dtype == np.int32 else 0)
    np.testing.assert_allclose(featurizer.encode(converted).features(), expected, atol=1e-5)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((10, 40)), "smaller than one 14-pixel patch"),
        (np.full((20, 20), np.nan), "NaN"),
        (np.zeros((5, 30, 30)), "stack"),
        (np.zeros((3, 30, 30, 3)), "dimensions"),
        (np.zeros((3, 40, 50)), "channel-first"),
        (np.zeros((30, 30, 2)), "channels"),
        (np.array([["a"]]), "not numeric"),
    ],
)
def test_bad_images_raise_clear_errors(featurizer, image, message):
    with pytest.raises(hr.InputError, match=message):
        featurizer.encode(image)


def test_constant_image_has_a_defined_result(featurizer):
    with pytest.warns(UserWarning, match="constant"):
        features = featurizer.encode(np.full((28, 28), 9, dtype=np.uint8)).features()
    assert np.isfinite(features).all()


def test_input_image_is_not_modified(featurizer, grey):
    before = grey.copy()
    featurizer.encode(grey)
    np.testing.assert_array_equal(grey, before)


def test_normalisation_options():
    image = np.array([[0, 1000], [2000, 65535]], dtype=np.uint16)
    np.testing.assert_allclose(scale_intensities(image, normalize="minmax"), image / 65535, rtol=1e-6)
    np.testing.assert_allclose(scale_intensities(image, normalize="dtype"), image / 65535, rtol=1e-6)
    outlier = np.concatenate([np.linspace(0, 1, 999), [1000.0]]).reshape(20, 50)
    robust = scale_intensities(outlier, normalize="percentile")
    assert robust.max() == 1.0 and np.median(robust) > 0.4  # one hot pixel does not squash the rest
    with pytest.raises(hr.InputError, match="within \\[0, 1\\]"):
        scale_intensities(np.array([[0.0, 2.0]]), normalize="dtype")
    assert to_rgb01(image).shape == (2, 2, 3)


def test_config_validation():
    with pytest.raises(hr.InputError, match="shifts"):
        hr.FeatureConfig(shifts="diagonal")
    with pytest.raises(hr.InputError, match="shift_distances"):
        hr.FeatureConfig(shift_distances=(0,))
    with pytest.raises(hr.InputError, match="tile_overlap"):
        hr.FeatureConfig(tile_size=100, tile_overlap=60)
    config = hr.FeatureConfig(shift_distances=[2, 4], flips=True)
    assert hr.FeatureConfig.from_dict(config.to_dict()) == config
    with pytest.raises(hr.InputError, match="Unknown FeatureConfig"):
        hr.FeatureConfig.from_dict({"colour": "red"})
