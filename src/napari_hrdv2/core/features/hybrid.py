"""Hybrid features: the HR-Dv2 features of an image followed by classical multiscale filters of it.

The classical channels (:mod:`.classical`) are computed at full resolution from the image an
:class:`~.encoding.Encoding` keeps, so a linear model's logits add them one filter at a time
(:func:`add_classical_logits`) and the HR part stays on the low-resolution maps. Dense ``(C, H, W)``
features are taken as they are: they already hold the classical channels when a model is hybrid.

Axis convention: feature vectors ``(N, C)``; images ``(H, W[, C])``; logits ``(n_classes, H, W)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import Normalize
from ..errors import InputError
from .classical import classical_features, iter_classical_features, n_classical_features, sample_classical_features
from .sources import FeatureSource, is_encoding


@dataclass(frozen=True)
class ClassicalChannels:
    """Which classical filters follow the HR-Dv2 features: Gaussian ``sigmas`` of an image scaled by ``normalize``."""

    sigmas: tuple[float, ...]
    normalize: Normalize = "minmax"

    @property
    def n_channels(self) -> int:
        return n_classical_features(self.sigmas)


def image_of(features: FeatureSource) -> np.ndarray:
    """The image an Encoding keeps (hybrid features need it), or a clear error."""
    image = getattr(features, "image", None)
    if image is None:
        raise InputError(
            "Hybrid features need the image: pass an Encoding made by Featurizer.encode (it keeps the image)."
        )
    return image


def sample_vectors(
    features: FeatureSource, rows: np.ndarray, cols: np.ndarray, classical: ClassicalChannels | None
) -> np.ndarray:
    """Feature vectors (N, C [+ classical]) float32 at pixels ``(rows[i], cols[i])``."""
    if not is_encoding(features):
        return np.ascontiguousarray(np.asarray(features)[:, rows, cols].T, dtype=np.float32)
    vectors = features.sample(rows, cols)
    if classical is not None:
        extra = sample_classical_features(
            image_of(features), rows, cols, sigmas=classical.sigmas, normalize=classical.normalize
        )
        vectors = np.concatenate([vectors, extra], axis=1)
    return vectors.astype(np.float32, copy=False)


def n_features(features: FeatureSource, classical: ClassicalChannels | None) -> int:
    """Channels per pixel: an Encoding's HR features plus the classical ones; a dense array's own."""
    if is_encoding(features):
        return int(features.n_features) + (classical.n_channels if classical is not None else 0)
    return int(np.asarray(features).shape[0])


def add_classical_logits(
    logits: np.ndarray, weights: np.ndarray, features: FeatureSource, classical: ClassicalChannels
) -> np.ndarray:
    """``logits (n, H, W) += weights (n, G) @ classical channels``, one full-resolution filter at a time."""
    responses = iter_classical_features(image_of(features), sigmas=classical.sigmas, normalize=classical.normalize)
    for g, response in enumerate(responses):
        logits += weights[:, g, None, None] * response[None]
    return logits


def dense_features(encoding: Any, classical: ClassicalChannels | None) -> np.ndarray:
    """All channels ``(C [+ classical], H, W)`` of an Encoding: for small images and tests."""
    dense = encoding.features()
    if classical is None:
        return dense
    extra = classical_features(image_of(encoding), sigmas=classical.sigmas, normalize=classical.normalize)
    return np.concatenate([dense, extra])
