"""Image checks, intensity scaling, classical filter settings, volume shapes and feature sources: defaults,
messages and the shapes (any channel count, tiny or anisotropic inputs) that the encoding tests do not reach."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_hrdv2.core.config import FeatureConfig
from napari_hrdv2.core.errors import InputError
from napari_hrdv2.core.features.classical import (
    DEFAULT_SIGMAS,
    check_sigmas,
    classical_feature_names,
    classical_features,
    grey01,
    n_classical_features,
    sample_classical_features,
)
from napari_hrdv2.core.features.encoding import padded_size
from napari_hrdv2.core.features.preprocess import scale_channels, scale_intensities, to_rgb01, validate_image
from napari_hrdv2.core.features.sources import (
    check_dense,
    count_sources,
    iter_sources,
    looks_like_input_list,
    sample_at,
    source_shape,
)
from napari_hrdv2.core.features.tiling import grid_tokens
from napari_hrdv2.core.features.volume import check_spacing, interpolate_axis, linear_taps, volume_shape


def message(call, *args, **kwargs) -> str:
    with pytest.raises(InputError) as caught:
        call(*args, **kwargs)
    return str(caught.value)


def test_validate_image_accepts_planes_and_names_what_is_wrong():
    flags = validate_image(np.ones((3, 4), dtype=bool))
    assert flags.dtype == np.uint8 and flags.shape == (3, 4)
    five = np.zeros((6, 7, 5), dtype=np.float32)
    assert validate_image(five, any_channels=True) is five  # not copied
    assert (
        message(validate_image, np.array([["a"]]))
        == "Image dtype <U1 is not numeric; expected an integer or float array."
    )
    assert (
        message(validate_image, np.zeros((2, 2, 0)), any_channels=True) == "Image of shape (2, 2, 0) has no channels."
    )
    assert message(validate_image, np.zeros((3, 20, 30))) == (
        "Image of shape (3, 20, 30) looks channel-first; move the channel axis last: np.moveaxis(image, 0, -1)."
    )
    assert message(validate_image, five) == (
        "Image of shape (6, 7, 5) is a stack or has 5 channels; encode one plane (H, W) or (H, W, 3|4) at a time, "
        "e.g. featurizer.encode(stack[i]), or encode every channel on its own with "
        "FeatureConfig(channel_mode='separate') (command line: --channel-mode separate)."
    )
    assert message(validate_image, np.zeros((2, 3, 4, 3))) == (
        "Image has 4 dimensions (2, 3, 4, 3); expected (H, W) or (H, W, 3|4)."
    )
    assert message(validate_image, np.zeros(5)) == "Image has 1 dimensions (5,); expected (H, W) or (H, W, 3|4)."
    assert message(validate_image, np.zeros((13, 40)), min_side=14) == (
        "Image is 13x40 pixels, smaller than one 14-pixel patch of the backbone. Upsample it to at least 14x14 first."
    )
    validate_image(np.zeros((14, 14)), min_side=14)
    validate_image(np.zeros((1, 1)))  # default min_side: any non-empty plane
    bad = np.zeros((4, 4), dtype=np.float32)
    bad[0, :3] = [np.nan, np.inf, -np.inf]
    assert message(validate_image, bad) == (
        "Image contains 3 NaN or infinite values; fill them first (e.g. np.nan_to_num) or crop them away."
    )
    huge = np.zeros((2, 2))
    huge[1, 1] = -1e39
    assert message(validate_image, huge) == (
        "Image values reach 1e+39, beyond the float32 range (3.4e38) the features are computed in; rescale the "
        "image first (e.g. image / np.abs(image).max())."
    )
    validate_image(np.full((2, 2), 3e38))  # float64 within the float32 range


def test_scale_intensities_defaults_to_minmax_over_all_channels():
    image = np.array([[10, 20], [30, 50]], dtype=np.uint8)
    scaled = scale_intensities(image)
    assert scaled.dtype == np.float32
    np.testing.assert_allclose(scaled, [[0.0, 0.25], [0.5, 1.0]], rtol=1e-6)
    rgb = np.stack([image, image * 2, image // 2], axis=-1)
    np.testing.assert_allclose(scale_intensities(rgb), (rgb - 5.0) / 95.0, rtol=1e-6)  # one range for all channels
    np.testing.assert_allclose(scale_intensities(image, normalize="dtype"), image / 255.0, rtol=1e-6)
    signed = np.array([[-100, 0], [16383, 32767]], dtype=np.int16)
    np.testing.assert_allclose(scale_intensities(signed, normalize="dtype"), [[0.0, 0.0], [16383 / 32767, 1.0]])
    floats = np.array([[0.2, 0.7]], dtype=np.float64)
    np.testing.assert_allclose(scale_intensities(floats, normalize="dtype"), [[0.2, 0.7]], rtol=1e-6)  # as is
    assert message(scale_intensities, floats * 3 - 1, normalize="dtype") == (
        "normalize='dtype' needs float images within [0, 1]; this one spans [-0.4, 1.1]. "
        "Use normalize='minmax' or 'percentile'."
    )
    assert message(scale_intensities, image, normalize="max") == (
        "normalize='max' is not one of ('minmax', 'percentile', 'dtype')."
    )
    ramp = np.arange(1000, dtype=np.float32).reshape(10, 100)
    robust = scale_intensities(ramp, normalize="percentile")  # 0.5 .. 99.5 percentiles -> 0 .. 1, clipped
    low, high = np.percentile(ramp, (0.5, 99.5))
    assert robust.min() == 0.0 and robust.max() == 1.0
    np.testing.assert_allclose(robust[5, 0], (500 - low) / (high - low), rtol=1e-5)
    with pytest.warns(UserWarning, match="Image is constant"):
        flat = scale_intensities(np.full((3, 3), 7, dtype=np.uint16))
    assert flat.dtype == np.float32 and np.all(flat == 0.5)


def test_scale_channels_scales_any_number_of_channels_on_their_own():
    image = np.stack([np.arange(12).reshape(3, 4) * (c + 1) + 5 * c for c in range(5)], axis=-1).astype(np.int32)
    scaled = scale_channels(image)
    assert scaled.shape == (3, 4, 5) and scaled.dtype == np.float32
    for c in range(5):
        np.testing.assert_allclose(scaled[..., c], np.arange(12).reshape(3, 4) / 11.0, rtol=1e-6)
    np.testing.assert_allclose(scale_channels(image, normalize="dtype"), image / 2147483647.0, rtol=1e-6)
    grey = scale_channels(image[..., 2])
    assert grey.shape == (3, 4, 1)
    np.testing.assert_array_equal(grey[..., 0], scaled[..., 2])


def test_to_rgb01_replicates_grey_and_drops_alpha():
    grey = np.array([[0, 100], [200, 50]], dtype=np.uint8)
    rgb = to_rgb01(grey)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.float32 and rgb.flags.c_contiguous
    np.testing.assert_allclose(rgb[..., 1], grey / 200.0, rtol=1e-6)  # minmax by default
    rgba = np.dstack([grey, grey, grey, np.full_like(grey, 255)])
    np.testing.assert_array_equal(to_rgb01(rgba), rgb)  # alpha does not enter the range
    with pytest.raises(InputError, match="smaller than one 3-pixel patch"):
        to_rgb01(grey, min_side=3)


def test_classical_filter_settings_and_their_defaults():
    assert n_classical_features() == 25 and n_classical_features([3]) == 7
    names = classical_feature_names()
    assert len(names) == 25 and names[:3] == ["intensity", "gaussian_s1", "gradient_s1"]
    assert names[-1] == "local_std_s8"
    assert classical_feature_names((0.5, 1.5))[1::6] == ["gaussian_s0.5", "gaussian_s1.5"]
    assert check_sigmas([1, "2.5"]) == (1.0, 2.5)
    assert message(check_sigmas, ["a"]) == "classical sigmas must be positive numbers, got ['a']."
    assert message(check_sigmas, 3) == "classical sigmas must be positive numbers, got 3."
    for bad in ([], [1.0, 0.0], [float("nan")], [-1]):
        assert (
            message(check_sigmas, bad) == f"classical sigmas must be a non-empty list of positive numbers, got {bad!r}."
        )


def test_grey01_averages_colour_and_any_number_of_channels():
    rng = np.random.default_rng(0)
    five = rng.integers(0, 200, (6, 7, 5)).astype(np.uint8)
    mean = five.astype(np.float32).mean(axis=-1)
    np.testing.assert_allclose(grey01(five), (mean - mean.min()) / (mean.max() - mean.min()), rtol=1e-5, atol=1e-6)
    rgba = np.dstack([five[..., :3], np.full((6, 7), 255, dtype=np.uint8)])
    np.testing.assert_array_equal(grey01(rgba), grey01(five[..., :3]))  # alpha dropped
    assert grey01(five[..., 0], normalize="dtype").max() == pytest.approx(five[..., 0].max() / 255.0)


def test_sampled_classical_features_default_to_the_dense_ones():
    image = np.random.default_rng(1).integers(30, 120, (18, 22)).astype(np.uint8)
    rows, cols = np.array([0, 5, 17]), np.array([21, 3, 0])
    sampled = sample_classical_features(image, rows, cols)
    assert sampled.shape == (3, n_classical_features(DEFAULT_SIGMAS)) and sampled.dtype == np.float32
    np.testing.assert_array_equal(sampled, classical_features(image)[:, rows, cols].T)


def test_volume_shapes_and_spacing_are_checked_with_a_hint():
    assert volume_shape((5, 6, 7)) == (5, 6, 7) and volume_shape([5, 6, 7, 3]) == (5, 6, 7)
    assert message(volume_shape, (20, 30, 3)) == (
        "An array of shape (20, 30, 3) looks like one colour image (H, W, 3); volume=True needs a (Z, Y, X) or "
        "(Z, Y, X, 3|4) stack. Use volume=False for 2D images."
    )
    assert message(volume_shape, (4, 20, 30, 5)) == (
        "A volume of shape (4, 20, 30, 5) has 5 channels; volume=True takes grey (Z, Y, X) or colour "
        "(Z, Y, X, 3|4) volumes: choose one or three channels first."
    )
    assert message(volume_shape, (20, 30)) == (
        "volume=True needs a (Z, Y, X) or (Z, Y, X, 3|4) stack, got shape (20, 30). A 2D image has no XZ and YZ "
        "planes: use volume=False."
    )
    assert check_spacing(None) is None and check_spacing([2, "0.5", 1]) == (2.0, 0.5, 1.0)
    assert message(check_spacing, 2.0) == "spacing must be three voxel sizes (dz, dy, dx), got 2.0."
    for bad in ((1, 1), (1, 0, 1), (1, float("inf"), 1)):
        assert message(check_spacing, bad) == f"spacing must be three positive voxel sizes (dz, dy, dx), got {bad!r}."


def test_linear_taps_are_centre_aligned_and_clamped():
    low, high, weight = linear_taps(2, 4)  # centres at -0.25, 0.25, 0.75, 1.25 of the input: clamped at the edges
    assert low.tolist() == [0, 0, 0, 1] and high.tolist() == [1, 1, 1, 1]
    assert weight.dtype == np.float32 and weight.tolist() == [0.0, 0.25, 0.75, 0.0]
    down = interpolate_axis(np.array([[0.0, 4.0], [2.0, 8.0]]), linear_taps(2, 1), 0)
    assert down.dtype == np.float32 and down.tolist() == [[1.0, 6.0]]
    same = linear_taps(3, 3)
    assert same[0].tolist() == [0, 1, 2] and same[2].tolist() == [0.0, 0.0, 0.0]


def test_token_grid_and_padding_of_small_and_odd_sides():
    assert [grid_tokens(s, patch_size=14, stride=7) for s in (1, 14, 15, 21, 22)] == [1, 1, 2, 2, 3]
    assert [padded_size(s, patch_size=14, stride=7) for s in (1, 14, 15, 21, 22)] == [14, 14, 21, 21, 28]
    assert padded_size(30, patch_size=14, stride=14) == 42


def test_feature_sources_of_files_and_their_names(tmp_path):
    tifffile.imwrite(tmp_path / "five.tif", np.zeros((20, 30, 5), dtype=np.uint8), photometric="minisblack")
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((2, 20, 30), dtype=np.uint8))
    separate = FeatureConfig(channel_mode="separate")
    named = [(name, image.shape) for name, image in iter_sources(tmp_path / "five.tif", separate)]
    assert named == [("five.tif", (20, 30, 5))]
    named = [(name, image.shape) for name, image in iter_sources([tmp_path / "stack.tif"], FeatureConfig())]
    assert named == [("stack.tif plane 0", (20, 30)), ("stack.tif plane 1", (20, 30))]
    with pytest.raises(InputError, match="5 channels"):
        list(iter_sources(tmp_path / "five.tif", FeatureConfig()))


def test_feature_sources_of_arrays_and_their_names():
    dense = np.arange(2 * 3 * 4, dtype=np.float64).reshape(2, 3, 4)
    assert check_dense(dense) is not None and source_shape(dense) == (3, 4)
    assert message(check_dense, np.zeros((3, 4))) == "Dense features must be (C, H, W), got shape (3, 4)."
    sampled = sample_at(dense, np.array([0, 2]), np.array([3, 1]))
    assert sampled.dtype == np.float32 and sampled.tolist() == [[3.0, 15.0], [9.0, 21.0]]
    assert not looks_like_input_list(dense) and not looks_like_input_list("a.tif")
    assert looks_like_input_list([dense]) and looks_like_input_list(d for d in [dense])
    assert count_sources(dense) == 1 and count_sources([dense, dense]) == 2
    assert count_sources(["a.tif", dense]) is None and count_sources(d for d in [dense]) is None
    assert [name for name, _ in iter_sources([dense, dense], None)] == ["features 0", "features 1"]
    assert message(lambda: list(iter_sources([dense, np.zeros((3, 4))], None))) == (
        "Input 1 has shape (3, 4): give (C, H, W) features or Encodings, or pass config=FeatureConfig(...) to "
        "encode images."
    )
    assert message(lambda: list(iter_sources("a.tif", None))) == (
        "'a.tif' is a file or folder: pass config=FeatureConfig(...) to encode images."
    )
    config = FeatureConfig()
    stack, plane = np.zeros((2, 20, 30), dtype=np.uint8), np.zeros((20, 30), dtype=np.uint8)
    assert [name for name, _ in iter_sources([stack, plane], config)] == [
        "image 0 plane 0", "image 0 plane 1", "image 1"
    ]  # fmt: skip
    five = np.zeros((20, 30, 5), dtype=np.uint8)  # one plane of 5 channels only when they are encoded separately
    assert [name for name, _ in iter_sources(five, config.replace(channel_mode="separate"))] == ["image 0"]
