"""Label images: validation, output dtype and clean-up (numpy/scipy only).

Axis convention: label images ``(H, W)`` (or stacks ``(N, H, W)``) of integers, 0 = unlabelled,
class values 1..:data:`MAX_LABEL`.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError

#: Largest class value: label images are written as uint16 at most.
MAX_LABEL = int(np.iinfo(np.uint16).max)


def label_dtype(max_value: int) -> np.dtype:
    """The dtype of label images whose largest value is ``max_value``: uint8 up to 255, else uint16."""
    if max_value > MAX_LABEL:
        raise InputError(f"Label value {max_value} does not fit in uint16 (at most {MAX_LABEL}).")
    return np.dtype(np.uint8) if max_value <= np.iinfo(np.uint8).max else np.dtype(np.uint16)


def as_label_image(labels: np.ndarray) -> np.ndarray:
    """``labels`` in :func:`label_dtype` of its largest value (no copy when it already is)."""
    labels = np.asarray(labels)
    if labels.size and labels.min() < 0:
        raise InputError(f"Label images hold values 0..{MAX_LABEL}, got {labels.min()}.")
    return labels.astype(label_dtype(int(labels.max()) if labels.size else 0), copy=False)


def check_labels(labels: np.ndarray, shape: tuple[int, int], *, name: str = "labels") -> np.ndarray:
    """Validate a label image against an image shape; returns an int64 copy (the input is untouched).

    Accepts any integer, bool or integer-valued float array of shape ``shape``
    (a leading singleton axis is dropped). Raises :class:`InputError` naming the problem.
    """
    array = np.asarray(labels)
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    if array.shape != tuple(shape):
        raise InputError(f"{name} has shape {array.shape} but the image is {tuple(shape)}: they must match.")
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise InputError(f"{name} contains NaN or infinite values; use 0 for unlabelled pixels.")
        if not np.array_equal(array, np.round(array)):
            raise InputError(f"{name} must hold whole numbers (class values), got fractional values.")
    elif array.dtype.kind not in "iub":
        raise InputError(f"{name} must be an integer array, got dtype {array.dtype}.")
    out = array.astype(np.int64)  # always a copy
    if out.size and out.min() < 0:
        raise InputError(f"{name} has negative values ({out.min()}); class values must be 1..{MAX_LABEL}.")
    if out.size and out.max() > MAX_LABEL:
        raise InputError(f"{name} has the value {out.max()}; class values must be at most {MAX_LABEL}.")
    return out


def clean_labels(labels: np.ndarray, *, majority_size: int = 0, min_object_size: int = 0) -> np.ndarray:
    """Cheap clean-up of a label image ``(H, W)``.

    Parameters
    ----------
    labels : (H, W) int array
    majority_size : int
        Side of a square majority (mode) filter; 0 or 1 = off. Odd sizes are centred.
    min_object_size : int
        Connected regions (8-connectivity) smaller than this many pixels take the
        label of the nearest larger region; 0 = off.

    Returns
    -------
    (H, W) array of the same dtype.
    """
    from scipy import ndimage as ndi

    out = np.asarray(labels).copy()
    values = np.unique(out)
    if majority_size > 1 and values.size > 1:
        votes = np.stack([ndi.uniform_filter((out == v).astype(np.float32), majority_size) for v in values])
        out = values[np.argmax(votes, axis=0)].astype(labels.dtype)
    if min_object_size > 0 and values.size > 1:
        small = np.zeros(out.shape, dtype=bool)
        structure = np.ones((3, 3), dtype=bool)
        for value in values:
            regions, n = ndi.label(out == value, structure=structure)
            if n:
                sizes = np.bincount(regions.ravel())
                sizes[0] = np.iinfo(np.int64).max
                small |= sizes[regions] < min_object_size
        if small.any() and not small.all():
            _, (rows, cols) = ndi.distance_transform_edt(small, return_indices=True)
            out = out[rows, cols]
    return out
