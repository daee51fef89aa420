"""Turning a micrograph into the backbone's input.

Axis convention used throughout the package: images are ``(H, W)`` or
``(H, W, C)`` with channels last (as napari and tifffile give them), feature
maps are ``(C, H, W)``, and stacks are plane-first ``(N, H, W[, C])``.
"""

from __future__ import annotations

import warnings

import numpy as np

from ..config import NORMALIZE_OPTIONS, ROBUST_PERCENTILES, Normalize
from ..errors import InputError


def validate_image(image: np.ndarray, *, min_side: int = 1, any_channels: bool = False) -> np.ndarray:
    """Check that ``image`` is one 2D plane, grey ``(H, W)`` or colour ``(H, W, 3|4)``.

    ``any_channels=True`` (``channel_mode="separate"``) also accepts ``(H, W, C)`` with any ``C >= 1``.
    Returns the image as a numpy array (not copied). Raises :class:`InputError`
    with a hint for stacks, channel-first arrays, NaNs and too-small images.
    """
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.uint8)
    if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise InputError(f"Image dtype {image.dtype} is not numeric; expected an integer or float array.")
    if any_channels and image.ndim == 3 and image.shape[-1] == 0:
        raise InputError(f"Image of shape {image.shape} has no channels.")
    if image.ndim == 3 and image.shape[-1] not in (3, 4) and not any_channels:
        if image.shape[0] in (3, 4) and image.shape[-1] > 4:
            raise InputError(
                f"Image of shape {image.shape} looks channel-first; move the channel axis last: "
                "np.moveaxis(image, 0, -1)."
            )
        raise InputError(
            f"Image of shape {image.shape} is a stack or has {image.shape[-1]} channels; encode one plane "
            "(H, W) or (H, W, 3|4) at a time, e.g. featurizer.encode(stack[i]), or encode every channel on its "
            "own with FeatureConfig(channel_mode='separate') (command line: --channel-mode separate)."
        )
    if image.ndim not in (2, 3):
        raise InputError(f"Image has {image.ndim} dimensions {image.shape}; expected (H, W) or (H, W, 3|4).")
    height, width = image.shape[:2]
    if min(height, width) < min_side:
        raise InputError(
            f"Image is {height}x{width} pixels, smaller than one {min_side}-pixel patch of the backbone. "
            f"Upsample it to at least {min_side}x{min_side} first."
        )
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
        n_bad = int((~np.isfinite(image)).sum())
        raise InputError(
            f"Image contains {n_bad} NaN or infinite values; fill them first (e.g. np.nan_to_num) or crop them away."
        )
    if np.issubdtype(image.dtype, np.floating) and image.dtype.itemsize > 4 and image.size:
        largest = float(np.abs(image).max())
        if largest > float(np.finfo(np.float32).max):
            raise InputError(
                f"Image values reach {largest:.3g}, beyond the float32 range (3.4e38) the features are computed in; "
                "rescale the image first (e.g. image / np.abs(image).max())."
            )
    return image


def scale_intensities(image: np.ndarray, *, normalize: Normalize = "minmax") -> np.ndarray:
    """Scale intensities to ``[0, 1]`` per image, over all channels together.

    Parameters
    ----------
    image : (H, W) or (H, W, C) array, any int/float dtype
    normalize : {"minmax", "percentile", "dtype"}
        ``"minmax"`` maps min..max to 0..1; ``"percentile"`` maps the
        0.5..99.5 percentiles to 0..1 and clips; ``"dtype"`` divides integers by
        their dtype's maximum (floats must already lie in [0, 1]).

    Returns
    -------
    (H, W) or (H, W, C) float32 array in [0, 1]. A constant image gives 0.5
    everywhere (with a warning) rather than a division by zero.
    """
    if normalize not in NORMALIZE_OPTIONS:
        raise InputError(f"normalize={normalize!r} is not one of {NORMALIZE_OPTIONS}.")
    data = image.astype(np.float32, copy=False)
    if normalize == "dtype":
        if np.issubdtype(image.dtype, np.integer):
            info = np.iinfo(image.dtype)
            return np.clip((data - max(info.min, 0)) / float(info.max - max(info.min, 0)), 0.0, 1.0)
        low, high = float(data.min()), float(data.max())
        if low < 0.0 or high > 1.0:
            raise InputError(
                f"normalize='dtype' needs float images within [0, 1]; this one spans [{low:g}, {high:g}]. "
                "Use normalize='minmax' or 'percentile'."
            )
        return data
    if normalize == "percentile":
        low, high = (float(v) for v in np.percentile(data, ROBUST_PERCENTILES))
    else:
        low, high = float(data.min()), float(data.max())
    if not high > low:
        warnings.warn("Image is constant; its features describe a uniform grey image.", stacklevel=3)
        return np.full(data.shape, 0.5, dtype=np.float32)
    scaled = (data - low) * np.float32(1.0 / (high - low))
    return np.clip(scaled, 0.0, 1.0, out=scaled) if normalize == "percentile" else scaled


def scale_channels(image: np.ndarray, *, normalize: Normalize = "minmax") -> np.ndarray:
    """Scale every channel to ``[0, 1]`` on its own (``channel_mode="separate"``), over the whole image.

    Parameters
    ----------
    image : (H, W) or (H, W, C) array, any int/float dtype, any ``C >= 1``
    normalize : as :func:`scale_intensities`, applied to each channel ``image[..., c]`` separately.

    Returns
    -------
    (H, W, C) float32 array in [0, 1] (``C = 1`` for a grey image); channel ``c`` equals
    ``scale_intensities(image[..., c])``, so it encodes exactly as that channel encoded alone.
    """
    image = np.asarray(image)
    planes = image[..., None] if image.ndim == 2 else image
    out = np.empty(planes.shape, dtype=np.float32)
    for c in range(planes.shape[-1]):
        out[..., c] = scale_intensities(planes[..., c], normalize=normalize)
    return out


def to_rgb01(image: np.ndarray, *, normalize: Normalize = "minmax", min_side: int = 1) -> np.ndarray:
    """Validate, scale to [0, 1], replicate grey to 3 channels and drop alpha.

    Returns a (H, W, 3) float32 array.
    """
    image = validate_image(image, min_side=min_side)
    if image.ndim == 3 and image.shape[-1] == 4:
        image = image[..., :3]
    scaled = scale_intensities(image, normalize=normalize)
    if scaled.ndim == 2:
        scaled = np.repeat(scaled[..., None], 3, axis=-1)
    return np.ascontiguousarray(scaled, dtype=np.float32)
