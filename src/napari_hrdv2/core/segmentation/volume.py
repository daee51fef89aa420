"""Volumes (``FeatureConfig(volume=True)``): training on scribbles anywhere in a volume, predicting all of it.

The features (the mean of the XY, XZ and YZ plane encodings through each voxel) are computed by
:class:`~..features.volume.VolumeEncoder`. Here:

- :func:`iter_fit_volume` trains on every labelled voxel of a ``(Z, Y, X)`` label volume: only the planes
  through labelled voxels are encoded (the XY planes that hold labels, the XZ planes of the labelled rows y,
  the YZ planes of the labelled columns x), then the classifier is fitted on the exact mean features of the
  labelled voxels (each labelled XY plane is one training image, :class:`~..features.volume.VolumePlane`).
- :func:`iter_predict_volume` predicts planes of the volume. A linear model's logits are the mean over the
  three orientations of the projections of each plane's low-resolution maps, so they are computed once for
  the whole volume (``n_classes x Z x Y x X`` float32, the only volume-sized array besides the labels),
  from one encoding per plane per orientation; each plane's labels are then read from them. An MLP head's
  first layer is projected the same way; a refining model refines each XY plane in 2D, guided by that plane.

Axis convention: volumes ``(Z, Y, X[, 3|4])``; label volumes ``(Z, Y, X)``, 0 = unlabelled.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError
from ..features.volume import VolumeEncoder
from ..files.label_images import label_dtype
from ..progress import Progress, within
from ..runtime.devices import inference_mode
from .compatibility import check_backbone, check_model_features
from .refine import refine_probabilities
from .segmenter import softmax_inplace

if TYPE_CHECKING:  # pragma: no cover
    from .protocol import Segmenter
    from .segmenter import LinearSegmenter


def check_volume_labels(labels: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """``labels`` as a ``(Z, Y, X)`` array of the volume's shape, or an :class:`InputError` saying what is wrong."""
    labels = np.asarray(labels)
    if labels.shape != tuple(shape):
        raise InputError(
            f"The labels have shape {labels.shape}; the volume needs one label per voxel, shape {tuple(shape)} "
            "(Z, Y, X), 0 = unlabelled."
        )
    return labels


def _refuse_hybrid(segmenter: Segmenter) -> None:
    if getattr(segmenter, "hybrid", False):
        raise InputError(
            "Hybrid models (classical 2D filters) do not work on volumes yet: train with hybrid=False (no --hybrid) "
            "for volume=True."
        )


def planes_through(labels: np.ndarray) -> list[tuple[int, int]]:
    """The (orientation axis, index) of every plane through a labelled voxel: XY planes z, XZ planes y, YZ planes x."""
    z, y, x = np.nonzero(labels)
    return [(axis, int(index)) for axis, along in enumerate((z, y, x)) for index in np.unique(along)]


def iter_fit_volume(
    segmenter: LinearSegmenter,
    encoders: VolumeEncoder | Sequence[VolumeEncoder],
    labels: np.ndarray | Sequence[np.ndarray],
) -> Generator[Progress, None, LinearSegmenter]:
    """Train ``segmenter`` on the labelled voxels of ``labels`` (Z, Y, X) with volume features; returns it.

    ``encoders`` and ``labels`` may be sequences (several volumes, one label volume each). Only the planes
    through labelled voxels are encoded (:func:`planes_through`). ``labels`` are never modified.
    """
    _refuse_hybrid(segmenter)
    encoders = [encoders] if isinstance(encoders, VolumeEncoder) else list(encoders)
    label_list = [labels] if isinstance(labels, np.ndarray) and len(encoders) == 1 else list(labels)
    if len(label_list) != len(encoders):
        raise InputError(f"Got {len(encoders)} volume(s) but {len(label_list)} label volume(s); give one per volume.")
    label_list = [check_volume_labels(lab, encoder.shape) for encoder, lab in zip(encoders, label_list)]
    plans = []
    for encoder, lab in zip(encoders, label_list):
        encoder.check_sides()
        plans.append(planes_through(lab))
    total = sum(len(planes) for planes in plans)
    if not total:
        raise InputError("No voxel holds a label: paint a few strokes of at least two classes on any plane.")
    done = 0
    with inference_mode():
        for encoder, planes in zip(encoders, plans):
            yield from within(encoder.iter_encode_planes(planes), done, len(planes), total=total + 1)
            done += len(planes)
    yield Progress(total, total + 1, "training")
    # Outside inference mode: the optimiser needs autograd.
    sources, targets = [], []
    for encoder, planes, lab in zip(encoders, plans, label_list):
        zs = [index for axis, index in planes if axis == 0]
        sources += [encoder.plane_source(z) for z in zs]
        targets += [lab[z] for z in zs]
    segmenter.fit(sources, targets)
    yield Progress(1, 1, "trained")
    return segmenter


def iter_volume_logits(
    segmenter: Segmenter, encoder: VolumeEncoder, *, out: np.ndarray | None = None
) -> Generator[Progress, None, None]:
    """Compute (and keep in ``encoder``) the projection a linear model's predictions read, with progress.

    For a model with ``coef_`` / ``intercept_`` (:class:`~.protocol.LinearModel`) these are the weights its
    ``decision_function`` projects with, so every plane's prediction then reads the kept logits. Other models
    get their projection computed on their first plane (the same result, without progress).
    """
    coef, intercept = getattr(segmenter, "coef_", None), getattr(segmenter, "intercept_", None)
    n_hr = getattr(segmenter, "n_hr_features_", None)
    if coef is not None and n_hr is not None:
        yield from encoder.iter_project(coef[:, :n_hr], intercept, out=out)


def _plane_labels(segmenter: Segmenter, encoder: VolumeEncoder, index: int) -> np.ndarray:
    """Labels of XY plane ``index``; a refining model refines it as a 2D image guided by that plane, scaled with the
    volume's intensity range (as it was encoded)."""
    source = encoder.plane_source(index)
    settings = getattr(segmenter, "refine_settings", None)
    if settings is None or not settings.active:
        return segmenter.predict(source)
    probabilities = softmax_inplace(segmenter.decision_function(source))
    refined = refine_probabilities(probabilities, encoder.plane_image(0, index), settings)
    return segmenter.clean(segmenter.labels_from_probabilities(refined))


def iter_predict_volume(
    segmenter: Segmenter,
    encoder: VolumeEncoder,
    indices: Sequence[int] | None = None,
    *,
    logits_out: np.ndarray | None = None,
) -> Generator[Progress, None, np.ndarray]:
    """Labels of XY planes ``indices`` (default all) of the volume: ``(len(indices), Y, X)``.

    The whole volume's logits are computed once (one encoding per plane per orientation); each plane's
    labels come from its slice of them (with the model's clean-up, plane by plane). ``logits_out``: where
    they go, ``(n_classes, Z, Y, X)`` float32 (e.g. a ``np.memmap`` for a volume whose logits exceed memory).
    """
    check_model_features(segmenter, encoder.config)
    _refuse_hybrid(segmenter)
    encoder.check_sides()
    check_backbone(segmenter, encoder.featurizer.backbone)
    depth, height, width = encoder.shape
    indices = list(range(depth)) if indices is None else [int(i) for i in indices]
    for index in indices:
        if not 0 <= index < depth:
            raise InputError(f"Plane {index} does not exist; the volume has {depth} planes.")
    out = np.zeros((len(indices), height, width), dtype=label_dtype(int(segmenter.classes_.max())))
    with inference_mode():
        yield from within(iter_volume_logits(segmenter, encoder, out=logits_out), 0, 0.95, total=1)
        for i, index in enumerate(indices):
            out[i] = _plane_labels(segmenter, encoder, index)
            yield Progress(0.95 + 0.05 * (i + 1) / max(len(indices), 1), 1, f"labels of plane {index + 1}")
    return out
