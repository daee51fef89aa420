"""Training a linear classifier on labelled pixels: the training set, then a standardised logistic fit.

Only the labelled pixels are read (``sample(source, rows, cols)``, e.g. :meth:`Encoding.sample`), at most
``max_per_class`` per class; the standardisation is folded into the weights, so the fitted model is one
linear map ``coef @ feature + intercept`` over the raw features.

Axis convention: label images ``(H, W)`` integers (0 = unlabelled); training vectors ``(N, C)`` float32.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError
from ..features.sources import FeatureSource, is_encoding, source_shape
from .labels import check_labels, labelled_classes, training_pixels, warn_if_image_like
from .solver import class_weights, fit_logistic, fold_scaler, standardize


@dataclass(frozen=True)
class TrainingSummary:
    """What :meth:`LinearSegmenter.fit` saw and did."""

    n_images: int
    pixels_per_class: dict[int, int]
    pixels_used: int
    iterations: int
    final_loss: float
    training_accuracy: float


@dataclass(frozen=True)
class TrainingSet:
    """The labelled pixels of a set of images: vectors ``(N, C)`` float32 and class indices ``(N,)`` int64.

    ``classes`` are the class values ``(n_classes,)`` (``targets`` index them); ``counts`` the labelled
    pixels per class value before subsampling.
    """

    vectors: np.ndarray
    targets: np.ndarray
    classes: np.ndarray
    counts: dict[int, int]


@dataclass(frozen=True)
class LinearFit:
    """A fitted classifier over raw features: ``coef`` (n_classes, C), ``intercept`` (n_classes,) float32.

    ``standardized`` keeps the torch weights on standardised features (a warm start for the next fit).
    """

    coef: np.ndarray
    intercept: np.ndarray
    standardized: tuple[Any, Any]
    iterations: int
    final_loss: float
    training_accuracy: float


def paired_images(
    features: Sequence[FeatureSource] | FeatureSource, labels: Sequence[np.ndarray] | np.ndarray
) -> tuple[list[FeatureSource], list[np.ndarray]]:
    """One image's features and labels, or sequences of them, as two lists of equal length (at least one)."""
    # A list or tuple is a sequence of images (of any sizes: np.asarray of arrays of different shapes fails).
    single = is_encoding(features) or (not isinstance(features, (list, tuple)) and np.asarray(features).ndim == 3)
    sources = [features] if single else list(features)
    label_list = [labels] if isinstance(labels, np.ndarray) and labels.ndim == 2 else list(labels)
    if len(sources) != len(label_list):
        raise InputError(f"Got {len(sources)} images but {len(label_list)} label images; give one per image.")
    if not sources:
        raise InputError("Nothing to train on: give at least one image and its labels.")
    return sources, label_list


def training_set(
    sources: Sequence[FeatureSource],
    labels: Sequence[np.ndarray],
    *,
    sample: Callable[[FeatureSource, np.ndarray, np.ndarray], np.ndarray],
    max_per_class: int | None,
    seed: int,
) -> TrainingSet:
    """Check the label images against their images and read the feature vectors of their labelled pixels.

    Raises :class:`InputError` for labels of the wrong shape, fewer than two classes, or features with
    NaN or infinite values.
    """
    checked = [
        check_labels(lab, source_shape(src), name=f"labels of image {i + 1}")
        for i, (src, lab) in enumerate(zip(sources, labels))
    ]
    classes = labelled_classes(checked)
    warn_if_image_like(checked, int(classes.size))
    counts, picked = training_pixels(checked, classes, max_per_class=max_per_class, seed=seed)
    vectors, targets = [], []
    for image_index, rows, cols, target in picked:
        x = sample(sources[image_index], rows, cols)
        if not np.isfinite(x).all():
            raise InputError(
                f"The features of image {image_index + 1} contain NaN or infinite values; "
                "check the image and the backbone."
            )
        vectors.append(x)
        targets.append(target)
    return TrainingSet(np.concatenate(vectors), np.concatenate(targets), classes, counts)


def fit_linear(
    pixels: TrainingSet, *, l2: float, max_iter: int, balanced: bool, start: tuple[Any, Any] | None = None
) -> LinearFit:
    """Multinomial logistic regression on standardised vectors, the scaler folded into the weights."""
    import torch

    x = torch.from_numpy(pixels.vectors)
    y = torch.from_numpy(pixels.targets)
    z, mean, std = standardize(x)
    sample_weight = class_weights(y, pixels.classes.size, balanced=balanced)
    weight, bias, iterations, final_loss = fit_logistic(z, y, sample_weight, l2=l2, max_iter=max_iter, start=start)
    accuracy = float(((z @ weight.T + bias).argmax(1) == y).float().mean())
    coef, intercept = fold_scaler(weight, bias, mean, std)
    return LinearFit(
        coef=coef.numpy().astype(np.float32),
        intercept=intercept.numpy().astype(np.float32),
        standardized=(weight, bias),
        iterations=iterations,
        final_loss=final_loss,
        training_accuracy=accuracy,
    )


def first_known(values: Iterable[Any]) -> Any:
    """The first value that is not None (None if all are)."""
    return next((value for value in values if value is not None), None)
