"""Volumes (``FeatureConfig(volume=True)``): features = mean of the XY, XZ and YZ plane encodings, exact and lazy."""

from __future__ import annotations

import numpy as np
import pytest

import napari_hrdv2 as hr
from napari_hrdv2.core.features.volume import (
    VolumeEncoder,
    interpolate_axis,
    linear_taps,
    volume_intensity_range,
)
from napari_hrdv2.core.progress import run_steps
from napari_hrdv2.core.segmentation.volume import iter_fit_volume, iter_predict_volume, planes_through


@pytest.fixture(scope="module")
def config(tiny_backbone):
    return hr.FeatureConfig(
        backbone=tiny_backbone, device="cpu", dtype="float32", storage_dtype="float32", shifts="neumann",
        shift_distances=(3,), tile_size=None, volume=True,
    )  # fmt: skip


def z_stripes(size: int = 28, block: int = 14) -> tuple[np.ndarray, np.ndarray]:
    """A volume whose two classes differ only across z: (volume float32, truth (Z, Y, X) in {1, 2}).

    Class 1 voxels follow stripes of period 2 along z, class 2 stripes of period 8: within an XY plane both
    classes are constant, and which one is brighter changes from plane to plane. Which half of the plane (x <
    size / 2 or not) is class 1 alternates every ``block`` planes, so the position in the plane tells nothing.
    """
    z = np.arange(size)
    fast = (z % 2).astype(np.float32)
    slow = ((z // 4) % 2).astype(np.float32)
    even_block = ((z // block) % 2 == 0)[:, None, None]
    x = np.arange(size)[None, None, :]
    class1 = np.broadcast_to(np.where(even_block, x < size // 2, x >= size // 2), (size, size, size))
    volume = np.where(class1, fast[:, None, None], slow[:, None, None]).astype(np.float32)
    volume = 0.2 + 0.6 * volume
    truth = np.where(class1, 1, 2).astype(np.uint8)
    return np.ascontiguousarray(volume), truth


def strokes(truth: np.ndarray, planes: list[int]) -> np.ndarray:
    """Short strokes of both classes on XY planes ``planes``, away from the class borders."""
    labels = np.zeros(truth.shape, dtype=np.uint8)
    size = truth.shape[-1]
    for z in planes:
        for x0 in (4, size - 8):
            labels[z, 6:-6, x0 : x0 + 3] = truth[z, 6:-6, x0 : x0 + 3]
    return labels


def test_volume_needs_z_information_plane_by_plane_does_not(config):
    volume, truth = z_stripes()
    labels = strokes(truth, list(range(1, 28, 3)))  # both classes on every third plane
    model = hr.fit_stack(hr.LinearSegmenter(), volume, labels, config)
    predicted = hr.predict_stack(model, volume, config=config)
    assert predicted.shape == truth.shape and predicted.dtype == np.uint8
    inner = (slice(3, -3), slice(3, -3), slice(3, -3))
    volume_accuracy = float((predicted[inner] == truth[inner]).mean())
    flat = config.replace(volume=False)
    planes = hr.fit_stack(hr.LinearSegmenter(), volume, labels, flat)
    plane_accuracy = float((hr.predict_stack(planes, volume, config=flat)[inner] == truth[inner]).mean())
    assert volume_accuracy > 0.9, volume_accuracy
    assert plane_accuracy < 0.75, plane_accuracy


def direct_plane_features(config, volume: np.ndarray, z: int) -> np.ndarray:
    """Mean of the three orientations' plane encodings through plane z, each encoded as an ordinary 2D image."""
    featurizer = hr.Featurizer(config.replace(volume=False))
    size_z, height, width = volume.shape
    total = featurizer.encode(volume[z]).features()
    for y in range(height):
        total[:, y, :] += featurizer.encode(volume[:, y, :]).features()[:, z, :]
    for x in range(width):
        total[:, :, x] += featurizer.encode(volume[:, :, x]).features()[:, z, :]
    return total / np.float32(3.0)


def test_voxel_features_are_the_mean_of_the_three_plane_encodings(config):
    rng = np.random.default_rng(0)
    volume = rng.random((14, 16, 15)).astype(np.float32)  # in [0, 1]: normalize="dtype" leaves every plane as is
    cfg = config.replace(normalize="dtype")
    encoder = VolumeEncoder(volume, cfg)
    z = 5
    expected = direct_plane_features(cfg, volume, z)
    dense = encoder.features(z)
    assert dense.dtype == np.float32 and dense.shape == (expected.shape[0], 16, 15)
    np.testing.assert_allclose(dense, expected, rtol=1e-5, atol=1e-5)
    rows, cols = rng.integers(0, 16, 30), rng.integers(0, 15, 30)
    sampled = run_steps(encoder.iter_sample(z, rows, cols))
    np.testing.assert_allclose(sampled, expected[:, rows, cols].T, rtol=1e-5, atol=1e-5)


def test_lowres_logits_equal_materialised_features(config):
    rng = np.random.default_rng(1)
    volume = (rng.random((15, 16, 17)) * 1000).astype(np.uint16)
    encoder = VolumeEncoder(volume, config, spacing=(2.0, 1.0, 1.0))  # anisotropic: XZ / YZ resampled to 30 rows
    assert encoder.encoded_rows == (15, 30, 30)
    weight = rng.standard_normal((3, encoder.n_features)).astype(np.float32)
    bias = np.array([0.5, -1.0, 2.0], dtype=np.float32)
    logits = encoder.projection(weight, bias)
    assert logits.shape == (3, 15, 16, 17) and logits.dtype == np.float32
    for z in (0, 7, 14):
        dense = encoder.features(z)
        np.testing.assert_allclose(logits[:, z], np.einsum("oc,chw->ohw", weight, dense) + bias[:, None, None],
                                   rtol=1e-4, atol=1e-4)  # fmt: skip
    # The anisotropic XZ plane is the resampled plane's ordinary encoding, brought back to the 15 voxel rows.
    plane = volume_intensity_range(volume).apply(volume[:, 4, :])
    resampled = interpolate_axis(plane, linear_taps(15, 30), 0)
    direct = run_steps(hr.Featurizer(config.replace(volume=False)).iter_encode(resampled, prescaled=True))
    back = interpolate_axis(direct.features(), linear_taps(30, 15), 1)
    np.testing.assert_allclose(encoder.plane(1, 4).features(), direct.features(), rtol=1e-5, atol=1e-5)
    sampled = run_steps(encoder.iter_sample(6, np.full(17, 4), np.arange(17)))
    np.testing.assert_allclose(sampled, encoder.features(6)[:, 4, :].T, rtol=1e-5, atol=1e-5)
    assert back.shape == (encoder.n_features, 15, 17)


def test_intensity_scaling_is_the_volume_s(config):
    volume = np.zeros((16, 16, 16), dtype=np.float32)
    volume[:8] = 10.0 + np.arange(16)[None, None, :]  # the upper planes are darker than the lower ones
    volume[8:] = 100.0 + np.arange(16)[None, None, :]
    scaling = volume_intensity_range(volume)
    assert scaling.low == 10.0 and np.isclose(scaling.factor, 1 / 105)
    encoder = VolumeEncoder(volume, config)
    np.testing.assert_allclose(encoder.plane_image(0, 0), (volume[0] - 10) / 105, rtol=1e-6)
    np.testing.assert_allclose(encoder.plane_image(2, 3), (volume[:, :, 3] - 10) / 105, rtol=1e-6)
    # A lazy (Zarr) volume, read in chunks: the same scaling and planes.
    zarr = pytest.importorskip("zarr")
    lazy = zarr.create_array(store={}, shape=volume.shape, chunks=(4, 8, 8), dtype=volume.dtype)
    lazy[:] = volume
    assert volume_intensity_range(lazy, "percentile") == volume_intensity_range(volume, "percentile")
    lazy_encoder = VolumeEncoder(lazy, config)
    for axis, index in ((0, 9), (1, 2), (2, 15)):
        np.testing.assert_array_equal(lazy_encoder.plane_image(axis, index), encoder.plane_image(axis, index))


def test_only_planes_through_labels_are_encoded(config):
    volume = np.random.default_rng(2).random((14, 16, 15)).astype(np.float32)  # no two planes alike
    labels = np.zeros(volume.shape, dtype=np.uint8)
    labels[5, 10, 3:6] = 1
    labels[5, 12, 13] = 2
    assert planes_through(labels) == [(0, 5), (1, 10), (1, 12), (2, 3), (2, 4), (2, 5), (2, 13)]
    encoder = VolumeEncoder(volume, config)
    model = run_steps(iter_fit_volume(hr.LinearSegmenter(), encoder, labels))
    assert len(encoder.cache) == 7 and model.feature_config.volume
    # Predicting encodes every plane of every orientation once.
    labels_out = run_steps(iter_predict_volume(model, encoder, [0, 13]))
    assert labels_out.shape == (2, 16, 15) and len(encoder.cache) == 14 + 16 + 15


def test_model_round_trip_records_volume(config, tmp_path):
    volume, truth = z_stripes(28)
    model = hr.fit_stack(hr.LinearSegmenter(), volume, strokes(truth, [3]), config)
    assert model.feature_config.volume is True
    model.save(tmp_path / "m.hrdv2")
    loaded = hr.LinearSegmenter.load(tmp_path / "m.hrdv2")
    assert loaded.feature_config.volume is True and loaded.feature_config == model.feature_config
    expected = hr.predict_stack(model, volume, config=config)
    np.testing.assert_array_equal(hr.predict_stack(loaded, volume), expected)
    # The logits may live on disk (a volume whose logits exceed memory): the same labels.
    on_disk = np.lib.format.open_memmap(tmp_path / "logits.npy", mode="w+", dtype=np.float32, shape=(2, 28, 28, 28))
    encoder = VolumeEncoder(volume, config)
    np.testing.assert_array_equal(run_steps(iter_predict_volume(loaded, encoder, logits_out=on_disk)), expected)
    assert np.abs(on_disk).max() > 0
    with pytest.raises(hr.InputError, match="volume"):
        hr.predict_stack(loaded, volume, config=config.replace(volume=False))  # plane-by-plane features
    with pytest.raises(hr.InputError, match="volume=True"):
        loaded.predict(loaded.featurizer().encode(volume[0]))  # a volume model does not encode single planes


def test_bad_inputs_are_refused_clearly(config):
    volume, truth = z_stripes(28)
    with pytest.raises(hr.InputError, match="A 2D image has no XZ"):
        hr.fit_stack(hr.LinearSegmenter(), volume[0], truth[0], config)
    with pytest.raises(hr.InputError, match="one colour image"):
        VolumeEncoder(np.zeros((30, 30, 3)), config)
    with pytest.raises(hr.InputError, match=r"labels have shape \(28, 28\)"):
        hr.fit_stack(hr.LinearSegmenter(), volume, truth[0], config)
    with pytest.raises(hr.InputError, match="No voxel holds a label"):
        hr.fit_stack(hr.LinearSegmenter(), volume, np.zeros_like(truth), config)
    with pytest.raises(hr.InputError, match="smaller than one 14-pixel patch"):
        hr.fit_stack(hr.LinearSegmenter(), volume[:6], truth[:6], config)
    with pytest.raises(hr.InputError, match="spacing"):
        VolumeEncoder(volume, config, spacing=(1.0, 0.0, 1.0))
    with pytest.raises(hr.InputError, match="Hybrid"):
        hr.fit_stack(hr.LinearSegmenter(hybrid=True), volume, strokes(truth, [3]), config)
    with pytest.raises(hr.InputError, match="volume must be True or False"):
        config.replace(volume="yes")


@pytest.mark.parametrize("make", [lambda: hr.MLPSegmenter(hidden=8, seed=0), lambda: hr.LinearSegmenter(refine="guided")])
def test_volume_with_an_mlp_head_or_refinement_segments_the_stripes(config, make):
    """The MLP's first layer and the refinement (each XY plane, guided by that plane) work on volumes too."""
    volume, truth = z_stripes()
    labels = strokes(truth, list(range(1, 28, 3)))
    model = hr.fit_stack(make(), volume, labels, config)
    predicted = hr.predict_stack(model, volume, config=config)
    assert predicted.shape == truth.shape
    assert (predicted == truth).mean() > 0.9


def test_interpolate_axis_is_linear_and_float32():
    """Resampling along z: a ramp goes to the pixel-centre positions (clamped at the ends), float32 (not float64)."""
    ramp = np.repeat(np.arange(4, dtype=np.float32)[:, None], 3, axis=1)  # value = row index
    out = interpolate_axis(ramp, linear_taps(4, 7), 0)
    assert out.dtype == np.float32 and out.shape == (7, 3)
    centres = np.clip((np.arange(7) + 0.5) * 4 / 7 - 0.5, 0, 3)
    np.testing.assert_allclose(out[:, 0], centres, atol=1e-6)
    np.testing.assert_allclose(out, out[:, :1].repeat(3, axis=1))
