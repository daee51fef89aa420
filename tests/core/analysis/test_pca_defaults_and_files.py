"""PCA bases on bare (C, H, W) arrays with exact answers: principal axes, colour ranges, defaults of the fit,
sampling helpers, the file format's refusals and every message a user can meet."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_hrdv2.core.analysis import pca
from napari_hrdv2.core.analysis.pca import (
    BORDER_PIXELS,
    COLOUR_PERCENTILES,
    DEFAULT_FIT_PIXELS,
    DEFAULT_MAX_PIXELS,
    FILE_FORMAT,
    FILE_VERSION,
    MAX_BORDER_PIXELS,
    PCABasis,
    attention_foreground,
    border_pixels,
    check_basis_values,
    cosine_similarity_map,
    feature_norm,
    fit_pca,
    iter_fit_pca,
    otsu_threshold,
    pca_rgb,
    project_rows,
    sample_vectors,
    signature_difference,
)
from napari_hrdv2.core.errors import InputError, ModelFileError


def message(call, *args, error=InputError, **kwargs) -> str:
    with pytest.raises(error) as caught:
        call(*args, **kwargs)
    return str(caught.value)


def line_features(height: int = 6, width: int = 7) -> np.ndarray:
    """(3, H, W) float32 whose pixels lie on one line: 2 * t along x, t along y, constant 5 along z."""
    t = np.arange(height * width, dtype=np.float32).reshape(height, width)
    return np.stack([2 * t, t, np.full_like(t, 5.0)])


def small_basis(**kwargs) -> PCABasis:
    eye = np.eye(2, 4, dtype=np.float32)
    defaults = {"low": np.zeros(2, np.float32), "high": np.full(2, 2.0, np.float32)}
    defaults.update(kwargs)
    return PCABasis(
        np.zeros(4, np.float32), eye, defaults["low"], defaults["high"], metadata=kwargs.get("metadata", {})
    )


def test_module_constants_are_the_documented_ones():
    assert (DEFAULT_FIT_PIXELS, DEFAULT_MAX_PIXELS) == (20_000, 100_000)
    assert (BORDER_PIXELS, MAX_BORDER_PIXELS) == (2_000, 20_000)
    assert COLOUR_PERCENTILES == (2.0, 98.0)
    assert pca.FOREGROUND_CUES == ("pca", "attention")
    assert (FILE_FORMAT, FILE_VERSION, pca.CHECKSUM_KEY) == ("napari-hrdv2 PCA basis", 1, "checksum")


def test_a_line_of_pixels_gives_its_direction_mean_range_and_full_variance():
    features = line_features()
    basis = fit_pca(features)  # defaults: 3 components asked, all 42 pixels (< 20000) sampled
    t = np.arange(42, dtype=np.float64)
    direction = np.array([2.0, 1.0, 0.0]) / np.sqrt(5.0)
    np.testing.assert_allclose(basis.mean, [2 * t.mean(), t.mean(), 5.0], rtol=1e-6)
    np.testing.assert_allclose(basis.components[0], direction, atol=1e-6)  # largest loading positive
    assert basis.n_components == 3 and basis.n_features == 3
    np.testing.assert_allclose(basis.explained_variance[0], 5 * t.var(ddof=1), rtol=1e-5)
    np.testing.assert_allclose(basis.explained_variance[1:], 0, atol=1e-3)
    np.testing.assert_allclose(basis.explained_variance_ratio, [1, 0, 0], atol=1e-6)
    scores = (t - t.mean()) * np.sqrt(5.0)
    np.testing.assert_allclose([basis.low[0], basis.high[0]], np.percentile(scores, [2, 98]), rtol=1e-5)
    meta = basis.metadata
    assert meta["n_images"] == 1 and meta["n_pixels_sampled"] == 42 and meta["n_pixels_fitted"] == 42
    assert meta["pixels_per_image"] == 20_000 and meta["max_pixels"] == 100_000 and meta["seed"] == 0
    assert meta["config"] is None and meta["backbone"] is None and meta["feature_signature"] is None
    assert meta["foreground"] is None and meta["n_components"] == 3 and meta["sources"] == ["features 0"]
    assert meta["explained_variance_ratio"] == pytest.approx([1.0, 0.0, 0.0], abs=1e-6)
    assert basis.foreground_weight is None and basis.foreground_bias == 0.0 and basis.foreground_cue is None
    assert basis.feature_signature is None and basis.backbone_fingerprint is None
    # scores and grey levels: exact on the line
    projected = basis.project(features)
    assert projected.shape == (3, 6, 7) and projected.dtype == np.float32
    np.testing.assert_allclose(projected[0], scores.reshape(6, 7), rtol=1e-4, atol=1e-3)
    grey = basis.to_grey(features)  # default component 0
    expected = np.clip((scores - basis.low[0]) / (basis.high[0] - basis.low[0]), 0, 1).reshape(6, 7)
    np.testing.assert_allclose(grey, expected, atol=1e-5)
    assert grey[0, 0] == 0.0 and grey[-1, -1] == 1.0


def test_n_components_is_capped_by_channels_and_pixels_and_fit_needs_two_pixels():
    assert fit_pca(line_features(), n_components=10).n_components == 3
    assert fit_pca(line_features(1, 2), n_components=3).n_components == 2  # 2 pixels
    assert message(fit_pca, np.zeros((3, 1, 1), np.float32)) == (
        "Only 1 pixel(s) to fit a PCA on; give more or larger images."
    )
    assert message(fit_pca, []) == "No images to fit a PCA basis on (empty list or folder)."


def test_describe_names_components_variance_images_pixels_and_backbone():
    basis = fit_pca([line_features(), line_features()], n_components=2)
    assert basis.describe() == (
        "PCA basis: 2 components of 3-channel features, explaining 100.0% of the variance; 2 image(s), "
        "84 pixels fitted; backbone None."
    )
    bare = small_basis()
    assert (
        bare.describe() == "PCA basis: 2 components of 4-channel features; ? image(s), ? pixels fitted; backbone None."
    )
    fg = small_basis(metadata={"foreground": {"cue": "pca", "rule": "R"}, "backbone": "b", "n_images": 3})
    assert fg.describe().endswith("3 image(s), ? pixels fitted, foreground by pca (R); backbone b.")
    assert fg.foreground_cue == "pca"


def test_scale_maps_the_fixed_range_to_zero_one_and_rgb_checks_components():
    basis = small_basis(low=np.array([0.0, -1.0], np.float32), high=np.array([2.0, 1.0], np.float32))
    scores = np.array([-1.0, 0.0, 1.0, 2.0, 3.0], np.float32).reshape(1, 1, 5)
    np.testing.assert_allclose(basis.scale(scores, [0])[0, 0], [0, 0, 0.5, 1, 1])
    np.testing.assert_allclose(basis.scale(scores, [1])[0, 0], [0, 0.5, 1, 1, 1])
    assert basis.scale(scores, [1]).dtype == np.float32
    assert basis.check_components(np.array([1, 0])) == [1, 0]
    assert message(basis.check_components, [0, 2]) == (
        "Components (0, 2) requested but the basis has 2 (0..1); fit it with more components."
    )
    assert "(-1,)" in message(basis.check_components, [-1])
    features = np.zeros((4, 2, 3), np.float32)
    features[1] = 1.0
    rgb = basis.to_rgb(features, 1)  # one int: grey in R, G and B
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.float32 and rgb.flags.c_contiguous
    np.testing.assert_allclose(rgb, 1.0)
    with pytest.raises(InputError, match=r"Pick exactly three components for RGB \(or one for grey\), got \(0, 1\)"):
        basis.to_rgb(features, (0, 1))
    assert basis.project(features, [1]).shape == (1, 2, 3)
    assert message(basis.project, np.zeros((5, 2, 2), np.float32)) == (
        "The PCA basis was fitted on 4-channel features but these have 5 channels: compute the features with the "
        "basis' backbone, or fit a new basis."
    )
    assert message(basis.foreground_mask, features) == (
        "This PCA basis was not fitted with foreground=True; it has no foreground rule."
    )
    assert message(pca_rgb, features, basis=basis, components=0, foreground=True) == (
        "This PCA basis was not fitted with foreground=True; refit it with foreground=True."
    )
    np.testing.assert_allclose(pca_rgb(features, basis=basis, components=1), 1.0)


def test_pca_rgb_fits_as_many_components_as_the_highest_asked():
    features = np.random.default_rng(0).standard_normal((6, 5, 5)).astype(np.float32)
    rgb = pca_rgb(features, components=(4, 0, 2))
    assert rgb.shape == (5, 5, 3)
    basis = fit_pca(features, n_components=5)
    np.testing.assert_allclose(rgb, basis.to_rgb(features, (4, 0, 2)), atol=1e-6)
    np.testing.assert_allclose(pca_rgb(features), basis.to_rgb(features), atol=1e-6)  # default (0, 1, 2)


def test_fit_defaults_seed_and_pixels_per_image():
    features = np.random.default_rng(1).standard_normal((4, 30, 30)).astype(np.float32)
    default = fit_pca(features, n_pixels=50)
    np.testing.assert_array_equal(default.components, fit_pca(features, n_pixels=50, seed=0).components)
    assert not np.allclose(default.mean, fit_pca(features, n_pixels=50, seed=1).mean)
    assert default.metadata["n_pixels_sampled"] == 50 and default.metadata["pixels_per_image"] == 50
    capped = fit_pca([features, features, features], n_pixels=50, max_pixels=60)
    assert capped.metadata["n_pixels_sampled"] == 150 and capped.metadata["n_pixels_fitted"] == 60
    assert capped.metadata["sources"] == ["features 0", "features 1", "features 2"]


def test_iter_fit_pca_yields_start_and_one_step_per_image_with_messages():
    steps = iter_fit_pca([line_features(), line_features()], n_components=1)
    seen = []
    try:
        while True:
            seen.append(next(steps))
    except StopIteration as stop:
        basis = stop.value
    assert [(p.done, p.total) for p in seen] == [(0, 2), (1, 2), (2, 2)]
    assert seen[0].message == "Fitting a PCA basis" and seen[1].message.startswith("Sampled ")
    assert basis.n_components == 1


def test_a_mask_fits_only_its_pixels_and_is_checked():
    features = line_features()
    mask = np.zeros((6, 7), bool)
    mask[0, :3] = True
    basis = fit_pca(features, mask=mask)
    np.testing.assert_allclose(basis.mean, [2.0, 1.0, 5.0])
    assert basis.metadata["n_pixels_fitted"] == 3
    mask[0, 1:] = False
    assert message(fit_pca, features, mask=mask) == "The mask selects fewer than 2 pixels; nothing to fit a PCA on."
    assert (
        message(sample_vectors, features, mask=np.ones((2, 2), bool)) == "mask has shape (2, 2), the image is (6, 7)."
    )
    assert message(fit_pca, [features, features], mask=np.ones((6, 7), bool)) == (
        "mask= applies to a single image; fit several images without it."
    )
    assert message(attention_foreground, features) == (
        "The attention cue needs an Encoding (with attention maps), not a bare feature array."
    )


def test_sample_vectors_default_takes_every_pixel_in_raster_order():
    features = line_features(3, 4)
    vectors = sample_vectors(features)
    assert vectors.shape == (12, 3) and vectors.dtype == np.float32
    np.testing.assert_array_equal(vectors[:, 1], np.arange(12))
    few = sample_vectors(features, n_pixels=5, seed=np.random.default_rng(3))
    assert few.shape == (5, 3) and np.all(np.diff(few[:, 1]) > 0)  # sorted distinct pixels
    np.testing.assert_array_equal(sample_vectors(features, n_pixels=5, seed=3), few)
    masked = sample_vectors(features, mask=features[1] >= 10)
    np.testing.assert_array_equal(masked[:, 1], [10, 11])


@pytest.mark.parametrize(
    ("height", "width", "count"), [(1, 1, 1), (1, 4, 4), (4, 1, 4), (2, 2, 4), (3, 4, 10), (5, 5, 16)]
)
def test_border_pixels_are_the_frame_once_each(height, width, count):
    rows, cols = border_pixels(height, width)
    assert rows.dtype == np.int64 and rows.size == count
    pairs = set(zip(rows.tolist(), cols.tolist()))
    assert len(pairs) == count
    frame = {(r, c) for r in range(height) for c in range(width) if r in (0, height - 1) or c in (0, width - 1)}
    assert pairs == frame


def test_otsu_threshold_of_two_groups_and_of_constant_or_empty_samples():
    values = np.array([0.0] * 10 + [10.0] * 10)
    assert 0.0 <= otsu_threshold(values) < 10.0
    from skimage.filters import threshold_otsu

    assert otsu_threshold(values) == float(threshold_otsu(values))
    assert otsu_threshold(np.full(4, 3.5)) == 3.5
    assert otsu_threshold(np.array([])) == 0.0


def test_project_rows_is_centred_dot_products_in_float64_over_blocks(monkeypatch):
    monkeypatch.setattr(pca, "_ROW_BLOCK", 3)
    vectors = np.arange(14, dtype=np.float32).reshape(7, 2)
    out = project_rows(vectors, np.array([1.0, 1.0]), np.array([1.0, -1.0]))
    assert out.shape == (7, 1) and out.dtype == np.float64
    np.testing.assert_array_equal(out[:, 0], -1.0)
    basis = fit_pca(line_features(), n_components=1)  # blocks of 3 rows give the same axes
    monkeypatch.setattr(pca, "_ROW_BLOCK", 10_000)
    np.testing.assert_allclose(basis.components, fit_pca(line_features(), n_components=1).components, atol=1e-6)
    np.testing.assert_allclose(basis.explained_variance, fit_pca(line_features(), n_components=1).explained_variance)


def test_reservoir_keeps_the_first_rows_until_full_then_exactly_capacity():
    reservoir = pca._Reservoir(4, np.random.default_rng(0))
    assert reservoir.size == 0 and reservoir.rows is None
    reservoir.add(np.zeros((0, 2)))
    assert reservoir.rows is None and reservoir.seen == 0
    reservoir.add(np.arange(6, dtype=np.float32).reshape(3, 2))
    assert reservoir.size == 3 and reservoir.seen == 3 and reservoir.rows.dtype == np.float32
    reservoir.add(np.arange(6, 10, dtype=np.float32).reshape(2, 2))
    assert reservoir.size == 4 and reservoir.seen == 5
    # row 3 took the free 4th slot; row 4 (the 5th seen) replaces slot floor(u * 5) when that is < 4
    slot = int(np.random.default_rng(0).random(1)[0] * 5)
    expected = [0, 2, 4, 6]
    if slot < 4:
        expected[slot] = 8
    np.testing.assert_array_equal(reservoir.rows[:, 0], expected)


def test_norm_and_cosine_of_dense_features_are_exact():
    features = np.zeros((2, 2, 3), np.float32)
    features[0] = [[3, 0, 1], [0, -2, 1]]
    features[1] = [[4, 1, 0], [0, 0, 1]]
    np.testing.assert_allclose(feature_norm(features), [[5, 1, 1], [0, 2, np.sqrt(2)]], rtol=1e-6)
    similarity = cosine_similarity_map(features, 0, 2)  # reference (1, 0)
    assert similarity.dtype == np.float32
    np.testing.assert_allclose(similarity, [[0.6, 0, 1], [0, -1, 1 / np.sqrt(2)]], atol=1e-6)
    assert message(cosine_similarity_map, features, 2, 0) == "Pixel (2, 0) lies outside the 2x3 image."
    assert message(cosine_similarity_map, features, 0, -1) == "Pixel (0, -1) lies outside the 2x3 image."
    np.testing.assert_array_equal(cosine_similarity_map(features, 1, 0), 0.0)  # a zero reference: no NaN


def test_signature_difference_skips_defaults_of_settings_missing_on_one_side():
    assert signature_difference({"a": 1}, {"a": 1}) == ""
    assert signature_difference({"a": (1, 2)}, {"a": [1, 2]}) == ""
    assert signature_difference({"a": 1, "b": "x"}, {"a": 2, "b": "y"}) == (
        "a=1 for the basis but 2 for these features; b='x' for the basis but 'y' for these features"
    )
    assert signature_difference({"new": None}, {}) == "" and signature_difference({}, {"new": False}) == ""
    assert signature_difference({"new": 3}, {}) == "new=3 for the basis but None for these features"
    assert signature_difference({"flag": False}, {}) == "" and signature_difference({"extra": ()}, {}) == ""
    assert signature_difference({"flag": True}, {}) == "flag=True for the basis but None for these features"
    assert signature_difference({}, {"flag": True}) == "flag=None for the basis but True for these features"
    assert signature_difference({}, {"new": 3}) == "new=None for the basis but 3 for these features"
    from napari_hrdv2.core.config import FeatureConfig

    default_shifts = FeatureConfig().to_dict()["shifts"]
    assert signature_difference({"shifts": default_shifts}, {}) == ""


def test_check_basis_values_names_each_unusable_value():
    good = small_basis()
    tensors = {"mean": good.mean, "components": good.components, "low": good.low, "high": good.high}
    check_basis_values(good, tensors, name="b.st")
    assert (
        message(check_basis_values, good, {**tensors, "low": np.zeros(2, np.int32)}, name="b.st", error=ModelFileError)
        == "'b.st' is a corrupt PCA basis file: 'low' has dtype int32, not float."
    )
    assert (
        message(check_basis_values, good, {**tensors, "mean": np.array([np.inf])}, name="b.st", error=ModelFileError)
        == "'b.st' is a corrupt PCA basis file: 'mean' holds NaN or infinite values."
    )
    import dataclasses

    nan_bias = dataclasses.replace(good, foreground_bias=float("nan"))
    assert "foreground bias is not a finite number" in message(
        check_basis_values, nan_bias, tensors, name="b.st", error=ModelFileError
    )
    flat = dataclasses.replace(good, high=np.array([0.0, 2.0], np.float32))
    assert message(check_basis_values, flat, tensors, name="b.st", error=ModelFileError) == (
        "'b.st' is a corrupt PCA basis file: the colour range of component(s) [0] is empty (high <= low), so every "
        "image would be one colour. Fit the basis again."
    )
    bad_print = dataclasses.replace(good, backbone_fingerprint=np.ones((2, 2), np.float32))
    assert message(check_basis_values, bad_print, tensors, name="b.st", error=ModelFileError) == (
        "'b.st' is a corrupt PCA basis file: invalid backbone fingerprint."
    )


def _rewrite_header(path, change) -> None:
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    with safe_open(str(path), framework="numpy") as handle:
        meta = dict(handle.metadata())
    tensors = load_file(str(path))
    header = json.loads(meta["hrdv2_pca"])
    change(header, tensors, meta)
    meta["hrdv2_pca"] = json.dumps(header)
    meta.pop("checksum", None)
    save_file(tensors, str(path), metadata=meta)


def test_saved_bare_basis_round_trips_and_the_loader_names_each_problem(tmp_path):
    basis = fit_pca(line_features(), n_components=1)  # the other axes have no variance (an empty range)
    path = basis.save(tmp_path / "b.safetensors")
    loaded = PCABasis.load(path)
    np.testing.assert_array_equal(loaded.components, basis.components)
    assert loaded.foreground_weight is None and loaded.backbone_fingerprint is None
    assert loaded.metadata == basis.metadata and loaded.foreground_bias == 0.0
    assert basis.save(path, overwrite=True) == path  # overwrite allowed when asked
    assert message(PCABasis.load, tmp_path / "missing.safetensors").startswith("PCA basis file '")
    assert message(PCABasis.load, tmp_path / "missing.safetensors").endswith("missing.safetensors' does not exist.")

    from safetensors.numpy import save_file

    save_file({"x": np.zeros(2, np.float32)}, str(tmp_path / "other.safetensors"))
    assert message(PCABasis.load, tmp_path / "other.safetensors", error=ModelFileError) == (
        "'other.safetensors' is a safetensors file but not a napari-hrdv2 PCA basis."
    )

    newer = tmp_path / "newer.safetensors"
    newer.write_bytes(path.read_bytes())
    _rewrite_header(newer, lambda header, tensors, meta: header.update(version=2))
    assert message(PCABasis.load, newer, error=ModelFileError) == (
        "'newer.safetensors' is a PCA basis of version 2, newer than this napari-hrdv2 reads (1); update napari-hrdv2."
    )
    foreign = tmp_path / "foreign.safetensors"
    foreign.write_bytes(path.read_bytes())
    _rewrite_header(foreign, lambda header, tensors, meta: header.update(format="other"))
    assert message(PCABasis.load, foreign, error=ModelFileError) == (
        "'foreign.safetensors' is a corrupt PCA basis file (format 'other')."
    )
    missing = tmp_path / "nomean.safetensors"
    missing.write_bytes(path.read_bytes())
    _rewrite_header(missing, lambda header, tensors, meta: tensors.pop("mean"))
    assert message(PCABasis.load, missing, error=ModelFileError) == (
        "'nomean.safetensors' is a corrupt PCA basis file ('mean')."
    )
    shapes = tmp_path / "shapes.safetensors"
    shapes.write_bytes(path.read_bytes())
    _rewrite_header(shapes, lambda header, tensors, meta: tensors.update(mean=np.zeros(4, np.float32)))
    assert message(PCABasis.load, shapes, error=ModelFileError) == (
        "'shapes.safetensors' is a corrupt PCA basis file (array shapes do not fit together)."
    )
    old = tmp_path / "old.safetensors"  # no version, no checksum: an early file still loads
    old.write_bytes(path.read_bytes())
    _rewrite_header(old, lambda header, tensors, meta: header.pop("version"))
    np.testing.assert_array_equal(PCABasis.load(old).mean, basis.mean)
