"""Classical multiscale filters (the ilastik-style feature set) for hybrid segmentation.

These filters are computed directly at full resolution from the image, so appending them to
the HR-Dv2 features keeps the linear trick exact: the logits of a linear model are
``W_hr · F + W_cl · G + b`` where ``W_hr · F`` comes from :meth:`Encoding.project` and
``W_cl · G`` is accumulated here one filter at a time (never a ``(G, H, W)`` array).

Axis convention: images ``(H, W)`` or ``(H, W, 3|4)`` (channels last, colour averaged to grey,
alpha dropped); filter responses ``(H, W)``; stacked responses ``(G, H, W)``.

Filters, in order (see :func:`classical_feature_names`): the scaled intensity, then for every
sigma ``s``: Gaussian-smoothed intensity, Gaussian gradient magnitude (edges), Laplacian of
Gaussian (blobs), the two eigenvalues of the Hessian (ridges/valleys), and the local standard
deviation in a Gaussian window (texture). Derivatives are scale-normalised (multiplied by
``s`` or ``s**2``) so responses at different sigmas are comparable.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from scipy import ndimage as ndi

from ..errors import InputError
from .preprocess import Normalize, scale_intensities, validate_image

#: Default Gaussian scales in pixels (ilastik's 1, 1.6, 3.5, 5 plus a coarser 8 for texture).
DEFAULT_SIGMAS: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
#: Filters computed at every sigma, in output order.
FILTERS_PER_SIGMA: tuple[str, ...] = ("gaussian", "gradient", "laplace", "hessian_max", "hessian_min", "local_std")


def check_sigmas(sigmas: Sequence[float]) -> tuple[float, ...]:
    """Validate a sequence of positive Gaussian scales; returns them as a tuple of floats."""
    try:
        values = tuple(float(s) for s in sigmas)
    except (TypeError, ValueError):
        raise InputError(f"classical sigmas must be positive numbers, got {sigmas!r}.") from None
    if not values or any(not np.isfinite(s) or s <= 0 for s in values):
        raise InputError(f"classical sigmas must be a non-empty list of positive numbers, got {sigmas!r}.")
    return values


def classical_feature_names(sigmas: Sequence[float] = DEFAULT_SIGMAS) -> list[str]:
    """Names of the filters :func:`iter_classical_features` yields, e.g. ``"gradient_s2"``."""
    return ["intensity"] + [f"{name}_s{s:g}" for s in check_sigmas(sigmas) for name in FILTERS_PER_SIGMA]


def n_classical_features(sigmas: Sequence[float] = DEFAULT_SIGMAS) -> int:
    """Number of filters for ``sigmas``: ``1 + 6 * len(sigmas)``."""
    return 1 + len(FILTERS_PER_SIGMA) * len(check_sigmas(sigmas))


def grey01(image: np.ndarray, *, normalize: Normalize = "minmax") -> np.ndarray:
    """The image as grey ``(H, W)`` float32 scaled to [0, 1] (colour averaged, alpha dropped).

    An image of another number of channels (``channel_mode="separate"``) is averaged over all of them.
    """
    image = validate_image(image, any_channels=True)
    if image.ndim == 3:
        colour = image.shape[-1] in (3, 4)
        image = (image[..., :3] if colour else image).astype(np.float32).mean(axis=-1)
    return scale_intensities(image, normalize=normalize).astype(np.float32, copy=False)


def iter_classical_features(
    image: np.ndarray, *, sigmas: Sequence[float] = DEFAULT_SIGMAS, normalize: Normalize = "minmax"
) -> Iterator[np.ndarray]:
    """Yield the classical filter responses one at a time, each ``(H, W)`` float32.

    Peak extra memory is about six ``(H, W)`` float32 arrays, whatever the number of sigmas.

    Parameters
    ----------
    image : (H, W) or (H, W, 3|4) array, any int/float dtype
    sigmas : sequence of float
        Gaussian scales in pixels.
    normalize : {"minmax", "percentile", "dtype"}
        How intensities are scaled to [0, 1] first (as in the feature pipeline).
    """
    sigmas = check_sigmas(sigmas)
    grey = grey01(image, normalize=normalize)
    yield grey
    for sigma in sigmas:
        smooth = ndi.gaussian_filter(grey, sigma, mode="reflect")
        yield smooth
        yield (sigma * ndi.gaussian_gradient_magnitude(grey, sigma, mode="reflect")).astype(np.float32)
        scale2 = np.float32(sigma * sigma)
        h_rr = ndi.gaussian_filter(grey, sigma, order=(2, 0), mode="reflect") * scale2
        h_cc = ndi.gaussian_filter(grey, sigma, order=(0, 2), mode="reflect") * scale2
        h_rc = ndi.gaussian_filter(grey, sigma, order=(1, 1), mode="reflect") * scale2
        trace_half = (h_rr + h_cc) * np.float32(0.5)
        yield trace_half * np.float32(2.0)  # Laplacian of Gaussian
        radius = np.sqrt(((h_rr - h_cc) * np.float32(0.5)) ** 2 + h_rc**2)
        del h_rr, h_cc, h_rc
        yield trace_half + radius
        yield trace_half - radius
        del trace_half, radius
        mean_sq = ndi.gaussian_filter(grey * grey, sigma, mode="reflect")
        yield np.sqrt(np.maximum(mean_sq - smooth * smooth, 0.0)).astype(np.float32)
        del mean_sq, smooth


def classical_features(
    image: np.ndarray, *, sigmas: Sequence[float] = DEFAULT_SIGMAS, normalize: Normalize = "minmax"
) -> np.ndarray:
    """All classical filter responses stacked: ``(1 + 6 * len(sigmas), H, W)`` float32.

    Prefer :func:`iter_classical_features` on large images.
    """
    return np.stack(list(iter_classical_features(image, sigmas=sigmas, normalize=normalize)))


def sample_classical_features(
    image: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    *,
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
    normalize: Normalize = "minmax",
) -> np.ndarray:
    """Classical features at pixels ``(rows[i], cols[i])``: ``(N, G)`` float32, filter by filter."""
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    columns = [response[rows, cols] for response in iter_classical_features(image, sigmas=sigmas, normalize=normalize)]
    return np.stack(columns, axis=1).astype(np.float32, copy=False)
