"""Similarity search at full resolution: from a pixel, a region or the CLS token, over many planes.

A reference vector ``v`` (C,) is compared with every pixel's HR feature by cosine similarity,
``cos = (v / |v|) . f / |f|``: the dot product is one output channel of ``Encoding.project``
(the low-resolution maps are projected first, one channel is brought to pixels) and ``|f|`` is
the per-pixel feature norm (computed in channel blocks). No ``(C, H, W)`` array is made, so one
reference vector can be compared with every plane of a stack or every image of a folder.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InputError
from ..features.sources import check_dense, is_encoding, iter_sources, sample_at, source_shape
from ..progress import Progress, run_steps, within
from .pca import feature_norm

if TYPE_CHECKING:  # pragma: no cover
    from ..config import FeatureConfig
    from ..features.encoding import Featurizer

#: Most pixels of a region read to average its feature (a random subset beyond that).
MAX_REGION_PIXELS = 200_000


def pixel_vector(features: Any, row: int, col: int) -> np.ndarray:
    """The HR feature (C,) float32 at pixel ``(row, col)``."""
    height, width = source_shape(features)
    if not (0 <= row < height and 0 <= col < width):
        raise InputError(f"Pixel ({row}, {col}) lies outside the {height}x{width} image.")
    return sample_at(features, np.array([row]), np.array([col]))[0]


def region_vector(
    features: Any,
    mask: np.ndarray | None = None,
    *,
    labels: np.ndarray | None = None,
    value: int | None = None,
    max_pixels: int = MAX_REGION_PIXELS,
    seed: int = 0,
) -> np.ndarray:
    """Mean HR feature (C,) float32 of a region: a boolean ``mask``, or the pixels where ``labels == value``.

    Regions larger than ``max_pixels`` are averaged over a random subset of that many pixels.
    """
    height, width = source_shape(features)
    if mask is None:
        if labels is None or value is None:
            raise InputError("Give a region: mask=(H, W) bool array, or labels=(H, W) array and value=label.")
        labels = np.asarray(labels)
        if labels.shape != (height, width):
            raise InputError(f"labels have shape {labels.shape}, the image is {(height, width)}.")
        mask = labels == value
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != (height, width):
        raise InputError(f"The region mask has shape {mask.shape}, the image is {(height, width)}.")
    inside = np.flatnonzero(mask)
    if inside.size == 0:
        what = f"label value {value}" if value is not None else "the mask"
        raise InputError(f"The region is empty: no pixel has {what}.")
    if inside.size > max_pixels:
        inside = np.sort(np.random.default_rng(seed).choice(inside, size=max_pixels, replace=False))
    rows, cols = np.divmod(inside, width)
    return sample_at(features, rows, cols).mean(axis=0).astype(np.float32)


def cls_vector(
    image: np.ndarray, config: FeatureConfig | None = None, *, featurizer: Featurizer | None = None
) -> np.ndarray:
    """The backbone's CLS token (C,) float32 of an image (one forward pass, no transforms).

    The image is scaled like for the features; an image whose longer side exceeds the tile
    size or 518 px (whichever is smaller) is first shrunk to it (area average), so the pass stays cheap.
    The CLS token leaves the same final layer norm as the patch tokens, so it compares with them.
    """
    import torch
    import torch.nn.functional as F

    from ..features.encoding import Featurizer, pad_to_grid
    from ..features.preprocess import to_rgb01

    if featurizer is None:
        if config is None:
            raise InputError("cls_vector needs config=FeatureConfig(...) or featurizer=.")
        featurizer = Featurizer(config)
    backbone = featurizer.backbone
    patch = backbone.patch_size
    rgb = to_rgb01(image, normalize=featurizer.config.normalize, min_side=patch)
    pixels = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)
    limit = min(featurizer.config.tile_size or 518, 518)  # one cheap pass, whatever the tile bound
    longest = max(pixels.shape[-2:])
    if longest > limit:
        size = [max(patch, round(side * limit / longest)) for side in pixels.shape[-2:]]
        pixels = F.interpolate(pixels[None], size=size, mode="area")[0]
    mean = torch.tensor(backbone.mean).view(3, 1, 1)
    std = torch.tensor(backbone.std).view(3, 1, 1)
    padded = pad_to_grid((pixels - mean) / std, patch_size=patch, stride=patch)
    from ..backbone.vit import forward_cls

    with torch.inference_mode():
        batch = padded[None].to(device=featurizer.device, dtype=featurizer.dtype)
        cls = forward_cls(backbone, batch)
    return cls[0].float().cpu().numpy()


def similarity_to(features: Any, vector: np.ndarray) -> np.ndarray:
    """Cosine similarity (H, W) float32 in [-1, 1] of every pixel's feature to ``vector`` (C,)."""
    vector = np.asarray(vector, dtype=np.float32).reshape(-1)
    n_features = features.n_features if is_encoding(features) else check_dense(features).shape[0]
    if vector.shape[0] != n_features:
        raise InputError(
            f"The reference vector has {vector.shape[0]} values but the features have {n_features} channels: "
            "take the reference from features of the same backbone."
        )
    unit = vector / max(float(np.linalg.norm(vector)), 1e-12)
    if is_encoding(features):
        dots = features.project(unit[None, :])[0]
    else:
        dots = np.einsum("c,chw->hw", unit, check_dense(features).astype(np.float32))
    return np.clip(dots / np.maximum(feature_norm(features), 1e-12), -1.0, 1.0).astype(np.float32)


def iter_similarity_maps(
    inputs: Any,
    vector: np.ndarray,
    *,
    config: FeatureConfig | None = None,
    featurizer: Featurizer | None = None,
) -> Generator[Progress, None, list[np.ndarray]]:
    """Generator form of :func:`similarity_maps` (yields :class:`Progress`; stop iterating to cancel)."""
    if featurizer is not None:
        config = featurizer.config
    items = list(iter_sources(inputs, config))
    maps: list[np.ndarray] = []
    yield Progress(0, len(items), "Similarity")
    for index, (name, item) in enumerate(items):
        features = item
        if not is_encoding(item) and config is not None:
            if featurizer is None:
                from ..features.encoding import Featurizer

                featurizer = Featurizer(config)
            steps = featurizer.iter_encode(item, with_attention=False)
            features = yield from within(steps, index, 0.9, total=len(items), message=f"Encoding {name}")
        maps.append(similarity_to(features, vector))
        del features
        yield Progress(index + 1, len(items), f"Similarity of {name}")
    return maps


def similarity_maps(
    inputs: Any,
    vector: np.ndarray,
    *,
    config: FeatureConfig | None = None,
    featurizer: Featurizer | None = None,
    progress: Callable[[Progress], None] | None = None,
    cancel: threading.Event | None = None,
) -> list[np.ndarray]:
    """Cosine similarity maps of one reference ``vector`` over many planes or images.

    Parameters
    ----------
    inputs : Encodings, (C, H, W) arrays, or with ``config``/``featurizer`` images, stacks, files, folders
    vector : (C,) array, e.g. from :func:`pixel_vector`, :func:`region_vector` or :func:`cls_vector`

    Returns
    -------
    list of (H, W) float32 arrays in [-1, 1], one per plane or image, in input order. Images are
    encoded one at a time and released; only one output channel is ever brought to full resolution.
    """
    steps = iter_similarity_maps(inputs, vector, config=config, featurizer=featurizer)
    return run_steps(steps, progress=progress, cancel=cancel)


def stack_similarity(encodings: Sequence[Any], row: int, col: int, *, plane: int = 0) -> np.ndarray:
    """(N, H, W) similarity of every plane of a stack to pixel ``(row, col)`` of plane ``plane``."""
    if not 0 <= plane < len(encodings):
        raise InputError(f"Plane {plane} is out of range (0..{len(encodings) - 1}).")
    reference = pixel_vector(encodings[plane], row, col)
    return np.stack([similarity_to(encoding, reference) for encoding in encodings])
