"""Feature sources: what the analysis functions accept as features, and collections of them.

A feature source is an :class:`~.encoding.Encoding` (read exactly at pixels with ``sample``
and projected with ``project``, never materialised) or a dense ``(C, H, W)`` array. Collections
(lists of sources, images, stacks, files or folders) are walked one image at a time by
:func:`iter_sources`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from ..config import FeatureConfig

FeatureSource = Any  # an Encoding or a dense (C, H, W) array


def is_encoding(features: object) -> bool:
    """True for an :class:`~.encoding.Encoding` (anything with ``project`` and ``sample``)."""
    return hasattr(features, "project") and hasattr(features, "sample")


def apply_linear(features: FeatureSource, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """``weight @ features + bias``: (O, H, W) float32 for a weight (O, C) and a bias (O,)."""
    if is_encoding(features):
        return features.project(weight.astype(np.float32), bias.astype(np.float32))
    dense = check_dense(features)
    out = np.einsum("oc,chw->ohw", weight.astype(np.float32), dense) + bias[:, None, None]
    return out.astype(np.float32)


def check_dense(features: Any) -> np.ndarray:
    """Dense features as a (C, H, W) array, or a clear error."""
    dense = np.asarray(features)
    if dense.ndim != 3:
        raise InputError(f"Dense features must be (C, H, W), got shape {dense.shape}.")
    return dense


def source_shape(features: FeatureSource) -> tuple[int, int]:
    """(H, W) of the image the features describe."""
    return tuple(features.shape) if is_encoding(features) else check_dense(features).shape[1:]


def sample_at(features: FeatureSource, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Feature vectors (N, C) float32 at pixels ``(rows[i], cols[i])``."""
    if is_encoding(features):
        return features.sample(rows, cols)
    return check_dense(features)[:, rows, cols].T.astype(np.float32)


def looks_like_input_list(inputs: Any) -> bool:
    """True for a collection of inputs, False for one encoding, array or path."""
    if is_encoding(inputs) or isinstance(inputs, (np.ndarray, str, Path)):
        return False
    return isinstance(inputs, Iterable)


def iter_sources(inputs: Any, config: FeatureConfig | None, channels: Any = None) -> Iterator[tuple[str, Any]]:
    """(name, item) per image: an Encoding, a dense (C, H, W) array, or an image plane to encode."""
    from ..files.images import expand_inputs, is_stack
    from ..files.lazy import read_input_image

    items = [inputs] if not looks_like_input_list(inputs) else inputs
    for position, item in enumerate(items):
        if is_encoding(item):
            yield f"encoding {position}", item
        elif isinstance(item, (str, Path)):
            if config is None:
                raise InputError(f"'{item}' is a file or folder: pass config=FeatureConfig(...) to encode images.")
            for path in expand_inputs([item]):
                separate = config.channel_mode == "separate"
                image = read_input_image(path, channels=channels, separate=separate)
                if is_stack(image, separate=separate):
                    for index in range(len(image)):
                        yield f"{path.name} plane {index}", image[index]
                else:
                    yield path.name, image
        else:
            array = np.asarray(item)
            if config is None:
                if array.ndim != 3:
                    raise InputError(
                        f"Input {position} has shape {array.shape}: give (C, H, W) features or Encodings, or pass "
                        "config=FeatureConfig(...) to encode images."
                    )
                yield f"features {position}", array
            elif is_stack(array, separate=config.channel_mode == "separate"):
                for index in range(len(array)):
                    yield f"image {position} plane {index}", array[index]
            else:
                yield f"image {position}", array


def count_sources(inputs: Any) -> int | None:
    """How many images :func:`iter_sources` yields, or None when that is only known by reading files."""
    if not looks_like_input_list(inputs):
        return 1
    if not isinstance(inputs, Sequence) or any(isinstance(item, (str, Path)) for item in inputs):
        return None
    return len(inputs)


def cosine_similarity_to_pixel(encoding: Any, row: int, col: int) -> np.ndarray:
    """Cosine similarity of every pixel's feature to the feature at ``(row, col)``: (H, W) in [-1, 1].

    For encodings that ``sample``, ``project`` (linear, on low-resolution maps) and give a ``feature_norm``: the
    dot products come from one projection, so the full features are never built.
    """
    reference = encoding.sample([row], [col])[0]
    dots = encoding.project(reference[None, :])[0]
    denominator = encoding.feature_norm() * max(float(np.linalg.norm(reference)), 1e-12)
    return np.clip(dots / np.maximum(denominator, 1e-12), -1.0, 1.0)
