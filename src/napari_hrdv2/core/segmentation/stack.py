"""Stacks: planes encoded lazily (LRU cache with a memory budget), trained on and predicted plane by plane.

Axis convention: stacks are plane-first, ``(N, H, W)`` or ``(N, H, W, 3|4)``; label stacks
``(N, H, W)`` with 0 = unlabelled; predictions ``(N, H, W)``.

Every long-running function here is a generator that yields :class:`~.progress.Progress`
and returns its result; :func:`~.progress.run_steps` drives one with a progress callback and a cancel event.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import FeatureConfig
from ..errors import InputError
from ..features.cache import DEFAULT_CACHE_BYTES, EncodingCache
from ..features.volume import VolumeEncoder
from ..files.images import is_stack
from ..files.label_images import label_dtype
from ..progress import Progress, relabel, run_steps, within
from .compatibility import check_model_features
from .volume import iter_fit_volume, iter_predict_volume

if TYPE_CHECKING:  # pragma: no cover
    from ..features.encoding import Encoding
    from .protocol import Segmenter
    from .segmenter import LinearSegmenter


class StackEncoder:
    """Encodes the planes of a stack on first use and keeps them within a memory budget.

    Parameters
    ----------
    stack : (N, H, W) or (N, H, W, 3|4) array, or a single (H, W[, 3|4]) image
        Any array-like indexable by plane (a memory-mapped TIFF works: planes are read on demand).
    config : FeatureConfig
    cache : EncodingCache, optional
        Share encodings with other users (the napari widgets); default a private cache of
        ``max_bytes``.
    """

    def __init__(
        self,
        stack: Any,
        config: FeatureConfig,
        *,
        cache: EncodingCache | None = None,
        max_bytes: int = DEFAULT_CACHE_BYTES,
    ):
        shape = tuple(stack.shape) if hasattr(stack, "shape") else np.shape(stack)
        # A zero-stride view tells plane-first stacks from single (H, W[, C]) images without reading data.
        separate = config.channel_mode == "separate"  # (H, W, C) with any C is one image
        self.stack = (
            stack if is_stack(np.broadcast_to(np.uint8(0), shape), separate=separate) else np.asarray(stack)[None]
        )
        self.config = config
        self.cache = cache if cache is not None else EncodingCache(max_bytes)

    def __len__(self) -> int:
        return len(self.stack)

    @property
    def plane_shape(self) -> tuple[int, int]:
        return tuple(np.asarray(self.stack[0]).shape[:2])

    def iter_plane(self, index: int) -> Generator[Progress, None, Encoding]:
        """Encoding of plane ``index`` (cached); yields progress while computing."""
        if not -len(self) <= index < len(self):
            raise InputError(f"Plane {index} does not exist; the stack has {len(self)} plane(s).")
        message = f"encoding plane {index % len(self) + 1}"
        steps = self.cache.iter_encode(np.asarray(self.stack[index]), self.config)
        return (yield from relabel(steps, lambda update: Progress(update.done, update.total, message)))

    def plane(self, index: int) -> Encoding:
        """Encoding of plane ``index`` (computed on first use)."""
        return run_steps(self.iter_plane(index))


def labelled_planes(labels: np.ndarray) -> list[int]:
    """Indices of the planes of a ``(N, H, W)`` label stack that hold at least one label."""
    labels = np.asarray(labels)
    if labels.ndim == 2:
        labels = labels[None]
    return [int(i) for i in np.flatnonzero(labels.reshape(labels.shape[0], -1).any(axis=1))]


def iter_fit_stack(
    segmenter: LinearSegmenter, encoder: StackEncoder, labels: np.ndarray
) -> Generator[Progress, None, LinearSegmenter]:
    """Train ``segmenter`` on every plane of ``labels`` (N, H, W) that holds labels; returns it.

    Only labelled planes are encoded. ``labels`` is never modified.
    """
    labels = np.asarray(labels)
    if labels.ndim == 2 and len(encoder) == 1:
        labels = labels[None]
    if labels.ndim != 3 or labels.shape[0] != len(encoder) or labels.shape[1:] != encoder.plane_shape:
        raise InputError(
            f"The labels have shape {labels.shape}; the stack needs ({len(encoder)}, {encoder.plane_shape[0]}, "
            f"{encoder.plane_shape[1]}): one label plane per image plane."
        )
    indices = labelled_planes(labels)
    if not indices:
        raise InputError("No plane holds labels: paint a few strokes of at least two classes.")
    encodings = []
    for i, index in enumerate(indices):
        encodings.append((yield from within(encoder.iter_plane(index), i, 1, total=len(indices) + 1)))
    yield Progress(len(indices), len(indices) + 1, "training")
    segmenter.fit(encodings, [labels[index] for index in indices])
    yield Progress(1, 1, "trained")
    return segmenter


def iter_predict_stack(
    segmenter: Segmenter, encoder: StackEncoder, indices: Sequence[int] | None = None
) -> Generator[Progress, None, np.ndarray]:
    """Predict planes ``indices`` (default all) plane by plane: ``(len(indices), H, W)`` labels."""
    indices = list(range(len(encoder))) if indices is None else [int(i) for i in indices]
    check_model_features(segmenter, encoder.config)
    out: np.ndarray | None = None
    for i, index in enumerate(indices):
        encoding = yield from within(encoder.iter_plane(index), i, 1, total=len(indices))
        predicted = segmenter.predict(encoding)
        if out is None:
            out = np.zeros((len(indices), *predicted.shape), dtype=predicted.dtype)
        out[i] = predicted
        yield Progress(i + 1, len(indices), f"predicted plane {index + 1}")
    return (
        out
        if out is not None
        else np.zeros((0, *encoder.plane_shape), dtype=label_dtype(int(segmenter.classes_.max())))
    )


def fit_stack(
    segmenter: LinearSegmenter,
    stack: Any,
    labels: np.ndarray,
    config: FeatureConfig,
    *,
    spacing: Sequence[float] | None = None,
    progress: Callable[[Progress], None] | None = None,
    cancel: threading.Event | None = None,
) -> LinearSegmenter:
    """Train on the labelled planes of a stack: ``stack`` (N, H, W[, C]), ``labels`` (N, H, W).

    With ``config.volume`` the stack is a volume ``(Z, Y, X[, C])``: the model trains on every labelled voxel
    with volume features (:mod:`.volume`); ``spacing`` = ``(dz, dy, dx)`` voxel sizes (default isotropic).
    """
    if config.volume:
        encoder = VolumeEncoder(stack, config, spacing=spacing)
        return run_steps(iter_fit_volume(segmenter, encoder, labels), progress=progress, cancel=cancel)
    return run_steps(iter_fit_stack(segmenter, StackEncoder(stack, config), labels), progress=progress, cancel=cancel)


def predict_stack(
    segmenter: Segmenter,
    stack: Any,
    *,
    config: FeatureConfig | None = None,
    spacing: Sequence[float] | None = None,
    progress: Callable[[Progress], None] | None = None,
    cancel: threading.Event | None = None,
) -> np.ndarray:
    """Segment every plane of ``stack`` (N, H, W[, C]): ``(N, H, W)`` labels.

    ``config`` defaults to the model's own feature settings (``segmenter.feature_config``). With
    ``config.volume`` the stack is a volume ``(Z, Y, X[, C])`` segmented with volume features (:mod:`.volume`;
    ``spacing`` = ``(dz, dy, dx)``): memory ``n_classes x Z x Y x X`` float32 of logits plus the labels.
    """
    config = config or segmenter.featurizer().config
    if config.volume:
        encoder = VolumeEncoder(stack, config, spacing=spacing)
        return run_steps(iter_predict_volume(segmenter, encoder), progress=progress, cancel=cancel)
    return run_steps(iter_predict_stack(segmenter, StackEncoder(stack, config)), progress=progress, cancel=cancel)
