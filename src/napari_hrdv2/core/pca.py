"""PCA-RGB views of HR features, fitted once and applied to many images.

Fitting uses feature vectors sampled exactly at a random subset of pixels
(``Encoding.sample``) and applying uses ``Encoding.project``, so neither step
materialises the ``(C, H, W)`` features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError

#: Pixels sampled to fit a basis; more change the basis by less than the sampling noise.
DEFAULT_FIT_PIXELS = 20_000


@dataclass(frozen=True)
class PCABasis:
    """Principal axes and a colour range, reusable across images for consistent colours.

    Attributes
    ----------
    mean : (C,) array
    components : (k, C) array, rows are unit principal axes, strongest first
    low, high : (k,) arrays, projection values mapped to 0 and 1 (2nd / 98th percentiles)
    """

    mean: np.ndarray
    components: np.ndarray
    low: np.ndarray
    high: np.ndarray

    @property
    def n_components(self) -> int:
        return int(self.components.shape[0])

    def project(self, features: FeatureSource, components: tuple[int, ...] | None = None) -> np.ndarray:
        """Scores ``(len(components), H, W)`` of an image's features on the chosen axes."""
        picked = list(range(self.n_components) if components is None else components)
        weight = self.components[picked]
        return _apply_linear(features, weight, -weight @ self.mean)

    def to_rgb(self, features: FeatureSource, components: tuple[int, int, int] = (0, 1, 2)) -> np.ndarray:
        """(H, W, 3) float32 in [0, 1]: three components scaled with this basis' fixed range."""
        if len(components) != 3:
            raise InputError(f"Pick exactly three components for RGB, got {components}.")
        if max(components) >= self.n_components:
            raise InputError(f"Components {components} requested but the basis has {self.n_components}.")
        scores = self.project(features, components)
        low = self.low[list(components)][:, None, None]
        high = self.high[list(components)][:, None, None]
        rgb = np.clip((scores - low) / np.maximum(high - low, 1e-12), 0.0, 1.0)
        return np.ascontiguousarray(np.moveaxis(rgb, 0, -1), dtype=np.float32)


FeatureSource = "Encoding | np.ndarray"


def _is_encoding(features: object) -> bool:
    return hasattr(features, "project") and hasattr(features, "sample")


def _apply_linear(features, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    if _is_encoding(features):
        return features.project(weight.astype(np.float32), bias.astype(np.float32))
    dense = _check_dense(features)
    return (np.einsum("oc,chw->ohw", weight.astype(np.float32), dense) + bias[:, None, None]).astype(np.float32)


def _check_dense(features) -> np.ndarray:
    dense = np.asarray(features)
    if dense.ndim != 3:
        raise InputError(f"Dense features must be (C, H, W), got shape {dense.shape}.")
    return dense


def _shape(features) -> tuple[int, int]:
    return tuple(features.shape) if _is_encoding(features) else _check_dense(features).shape[1:]


def sample_vectors(
    features, *, mask: np.ndarray | None = None, n_pixels: int = DEFAULT_FIT_PIXELS, seed: int = 0
) -> np.ndarray:
    """Feature vectors (N, C) at up to ``n_pixels`` random pixels (inside ``mask`` if given)."""
    height, width = _shape(features)
    if mask is None:
        candidates = np.arange(height * width)
    else:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (height, width):
            raise InputError(f"mask has shape {mask.shape}, the image is {(height, width)}.")
        candidates = np.flatnonzero(mask)
        if candidates.size < 2:
            raise InputError("The mask selects fewer than 2 pixels; nothing to fit a PCA on.")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(candidates, size=min(n_pixels, candidates.size), replace=False))
    rows, cols = np.divmod(chosen, width)
    if _is_encoding(features):
        return features.sample(rows, cols)
    return _check_dense(features)[:, rows, cols].T.astype(np.float32)


def fit_pca(
    features,
    *,
    n_components: int = 3,
    mask: np.ndarray | None = None,
    n_pixels: int = DEFAULT_FIT_PIXELS,
    seed: int = 0,
) -> PCABasis:
    """Fit a :class:`PCABasis` on one image's features (an ``Encoding`` or (C, H, W) array).

    ``mask`` (H, W) restricts the fit to some pixels (e.g. the foreground).
    """
    vectors = sample_vectors(features, mask=mask, n_pixels=n_pixels, seed=seed).astype(np.float64)
    n_components = min(n_components, vectors.shape[1], vectors.shape[0])
    mean = vectors.mean(axis=0)
    centred = vectors - mean
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    components = vt[:n_components]
    # Deterministic signs: the largest-magnitude loading of each axis is positive.
    signs = np.sign(components[np.arange(n_components), np.abs(components).argmax(axis=1)])
    components = components * signs[:, None]
    scores = centred @ components.T
    low, high = np.percentile(scores, [2, 98], axis=0)
    return PCABasis(
        mean.astype(np.float32), components.astype(np.float32), low.astype(np.float32), high.astype(np.float32)
    )


def pca_rgb(
    features,
    *,
    basis: PCABasis | None = None,
    components: tuple[int, int, int] = (0, 1, 2),
    mask: np.ndarray | None = None,
    foreground: bool = False,
    foreground_threshold: float = 0.0,
    invert_foreground: bool = False,
    n_pixels: int = DEFAULT_FIT_PIXELS,
    seed: int = 0,
) -> np.ndarray:
    """PCA-RGB view of HR features: (H, W, 3) float32 in [0, 1].

    Parameters
    ----------
    features : Encoding or (C, H, W) array
    basis : PCABasis, optional
        Reuse a basis fitted on another image (consistent colours across a stack).
    components : three ints
        Which principal components become R, G, B, e.g. ``(3, 4, 5)``.
    mask : (H, W) bool array, optional
        Fit only on these pixels.
    foreground : bool
        Two-step PCA: threshold the first component (after scaling to
        [0, 1], at ``0.5 + foreground_threshold``) to a foreground mask,
        refit on the foreground only and show the background black.
    invert_foreground : bool
        Take the low side of the first component as foreground.
    """
    if basis is None:
        basis = fit_pca(features, n_components=max(components) + 1, mask=mask, n_pixels=n_pixels, seed=seed)
    if not foreground:
        return basis.to_rgb(features, components)
    first = basis.project(features, (0,))[0]
    scaled = (first - basis.low[0]) / max(float(basis.high[0] - basis.low[0]), 1e-12)
    fg_mask = scaled > 0.5 + foreground_threshold
    if invert_foreground:
        fg_mask = ~fg_mask
    if fg_mask.sum() < 2:
        raise InputError("The foreground mask is empty; lower foreground_threshold or set invert_foreground.")
    refit = fit_pca(features, n_components=max(components) + 1, mask=fg_mask, n_pixels=n_pixels, seed=seed)
    rgb = refit.to_rgb(features, components)
    rgb[~fg_mask] = 0.0
    return rgb


def feature_norm(features) -> np.ndarray:
    """Per-pixel L2 norm of the features: (H, W) float32."""
    if _is_encoding(features):
        return features.feature_norm()
    dense = _check_dense(features)
    return np.sqrt(np.einsum("chw,chw->hw", dense, dense)).astype(np.float32)


def cosine_similarity_map(features, row: int, col: int) -> np.ndarray:
    """Cosine similarity of every pixel's feature to the one at ``(row, col)``: (H, W) in [-1, 1]."""
    height, width = _shape(features)
    if not (0 <= row < height and 0 <= col < width):
        raise InputError(f"Pixel ({row}, {col}) lies outside the {height}x{width} image.")
    if _is_encoding(features):
        return features.cosine_similarity(row, col)
    dense = _check_dense(features).astype(np.float32)
    reference = dense[:, row, col]
    dots = np.einsum("c,chw->hw", reference, dense)
    denominator = feature_norm(dense) * max(float(np.linalg.norm(reference)), 1e-12)
    return np.clip(dots / np.maximum(denominator, 1e-12), -1.0, 1.0).astype(np.float32)
