"""Scribbles and label images for training and prediction: validation, sampling and clean-up (numpy/scipy only).

Their storage dtype and value range live with the files (:mod:`..files.label_images`).

Axis convention: label images ``(H, W)`` (or stacks ``(N, H, W)``) of integers, 0 = unlabelled,
class values 1..:data:`MAX_LABEL`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import InputError
from ..files.label_images import MAX_LABEL


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


def labelled_classes(labels: Sequence[np.ndarray]) -> np.ndarray:
    """The class values (ascending, 0 excluded) painted in any of ``labels``; at least two, else :class:`InputError`."""
    classes = np.unique(np.concatenate([np.unique(lab) for lab in labels]))
    classes = classes[classes > 0]
    if classes.size == 0:
        raise InputError("No pixels are labelled: paint a few strokes of at least two classes (0 = unlabelled).")
    if classes.size == 1:
        raise InputError(f"Only one class (value {classes[0]}) is labelled: paint strokes of at least two classes.")
    return classes


def training_pixels(
    labels: Sequence[np.ndarray], classes: np.ndarray, *, max_per_class: int, seed: int
) -> tuple[dict[int, int], list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]]:
    """The labelled pixels a model trains on: about ``max_per_class`` per class over all images.

    Every pixel of a class with ``n`` labelled pixels is kept with probability
    ``min(1, max_per_class / n)`` (seeded), so a large class is thinned evenly over all images.

    Parameters
    ----------
    labels : sequence of (H_i, W_i) int arrays, 0 = unlabelled
    classes : (n_classes,) int array, ascending (:func:`labelled_classes`)

    Returns
    -------
    counts : {class value: labelled pixels before thinning}
    picked : list of ``(image index, rows, cols, targets)`` for every image with labels; ``targets``
        are class indices into ``classes`` (int64, like ``rows`` and ``cols``).
    """
    rng = np.random.default_rng(seed)
    counts = {int(c): int(sum(np.count_nonzero(lab == c) for lab in labels)) for c in classes}
    keep_fraction = np.minimum(1.0, max_per_class / np.array(list(counts.values()), dtype=np.float64))
    picked = []
    for index, lab in enumerate(labels):
        rows, cols = np.nonzero(lab)
        if rows.size == 0:
            continue
        target = np.searchsorted(classes, lab[rows, cols])
        keep = rng.random(rows.size) < keep_fraction[target]
        picked.append((index, rows[keep], cols[keep], target[keep]))
    return counts, picked


#: More classes than this, or nearly every pixel labelled with more than a few classes, looks like an image.
IMAGE_LIKE_CLASSES = 64


def warn_if_image_like(labels: list[np.ndarray], n_classes: int) -> None:
    """Warn when label images look like an image (hundreds of classes, or every pixel labelled).

    Scribbles label a few percent of the pixels with a handful of classes; passing the image (or a
    grey-level mask) as its labels gives one class per grey level, which trains a useless model slowly.
    """
    total = sum(int(lab.size) for lab in labels)
    labelled = sum(int(np.count_nonzero(lab)) for lab in labels)
    fraction = labelled / total if total else 0.0
    if n_classes > IMAGE_LIKE_CLASSES or (n_classes > 8 and fraction > 0.95):
        import warnings

        warnings.warn(
            f"The labels look like an image ({n_classes} classes, {fraction:.0%} of the pixels labelled); labels "
            "hold a few class values (1, 2, ...) on brush strokes and 0 elsewhere. Check that the label file "
            "is not the image itself.",
            UserWarning,
            stacklevel=3,
        )
