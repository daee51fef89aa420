"""Label images as stored: the integer dtype and value range of every label image we write.

Axis convention: label images ``(H, W)`` (or stacks ``(N, H, W)``) of integers, 0 = unlabelled,
class values 1..:data:`MAX_LABEL`.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError

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
