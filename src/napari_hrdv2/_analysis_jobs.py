"""Generator jobs of the Features dock's "views" tools: PCA bases over planes, region/CLS similarity, matching.

Like :mod:`._workers`: plain data in, :class:`~.core.progress.Progress` (``total=1``) out between
steps, a result returned; no Qt, no layers. Stopping the generator cancels at the next step.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ._workers import read_plane
from .core.config import FeatureConfig
from .core.errors import InputError
from .core.progress import Progress, within

if TYPE_CHECKING:  # pragma: no cover
    from .core.analysis.pca import PCABasis
    from .core.features.cache import EncodingCache


class _Planes(Sequence):
    """The chosen planes of a layer's data, read one at a time (a dask stack is never loaded whole)."""

    def __init__(self, data: Any, indices: Sequence[int], is_stack: bool):
        self.data, self.indices, self.is_stack = data, list(indices), is_stack

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> np.ndarray:  # type: ignore[override]
        return read_plane(self.data, self.indices[position], is_stack=self.is_stack)


class _CachedFeaturizer:
    """A featurizer for :func:`~.core.analysis.pca.iter_fit_pca` that encodes through the session's cache: a plane
    that Compute (or any job) already encoded is not encoded again, and a plane encoded here is kept for the next."""

    def __init__(self, cache: EncodingCache, config: FeatureConfig):
        self.cache, self.config = cache, config

    def iter_encode(self, image: np.ndarray, **_: Any) -> Generator[Any, None, Any]:
        return self.cache.iter_encode(image, self.config)  # with attention maps (cached ones have them too)


def pca_fit_job(
    data: Any,
    indices: Sequence[int],
    config: FeatureConfig,
    cache: EncodingCache,
    *,
    is_stack: bool,
    n_components: int = 3,
    foreground: bool = False,
    foreground_cue: str = "pca",
) -> Generator[Progress, None, PCABasis]:
    """Fit one PCA basis on random pixels of planes ``indices`` (each encoded, or taken from ``cache``, then
    sampled; encodings stay in the cache, whose memory bound applies)."""
    from .core.analysis.pca import iter_fit_pca
    from .core.runtime.devices import inference_mode

    if not indices:
        raise InputError("No planes to fit a PCA basis on.")
    yield Progress(0.0, 1, "Loading the backbone")
    with inference_mode():
        cache.featurizer(config).backbone  # noqa: B018
        steps = iter_fit_pca(
            _Planes(data, indices, is_stack),
            n_components=n_components,
            featurizer=_CachedFeaturizer(cache, config),  # type: ignore[arg-type]
            foreground=foreground,
            foreground_cue=foreground_cue,  # type: ignore[arg-type]
        )
        basis = yield from within(steps, 0.0, 1.0)
    yield Progress(1.0, 1, "PCA basis fitted")
    return basis


def pca_apply_job(
    data: Any,
    indices: Sequence[int],
    basis: PCABasis,
    config: FeatureConfig,
    cache: EncodingCache,
    *,
    is_stack: bool,
    components: Sequence[int] | int = (0, 1, 2),
) -> Generator[Progress, None, dict[int, np.ndarray]]:
    """(H, W, 3) float32 PCA views of planes ``indices`` with one basis (fixed colours: no flicker)."""
    from .core.runtime.devices import inference_mode

    basis.check_components((components,) if isinstance(components, int) else tuple(components))
    views: dict[int, np.ndarray] = {}
    n = max(len(indices), 1)
    with inference_mode():
        for i, index in enumerate(indices):
            plane = read_plane(data, index, is_stack=is_stack)
            steps = cache.iter_encode(plane, config)  # with attention maps (the attention cue needs them)
            encoding = yield from within(steps, i / n, 0.9 / n, message=f"Encoding plane {index}")
            views[index] = basis.to_rgb(encoding, components)
            yield Progress((i + 1) / n, 1, f"PCA view of plane {index}")
    return views


def similarity_search_job(
    data: Any,
    indices: Sequence[int],
    config: FeatureConfig,
    cache: EncodingCache,
    *,
    is_stack: bool,
    reference_plane: int,
    pixel: tuple[int, int] | None = None,
    mask: np.ndarray | None = None,
    use_cls: bool = False,
) -> Generator[Progress, None, dict[int, np.ndarray]]:
    """Cosine similarity of every pixel of planes ``indices`` to ONE reference vector of ``reference_plane``.

    The reference is the feature at ``pixel``, the mean feature of the region ``mask`` (H, W), or
    (``use_cls``) the plane's CLS token. Each plane costs one projected channel plus its feature norm.
    """
    from .core.analysis.similarity import cls_vector, pixel_vector, region_vector, similarity_to
    from .core.runtime.devices import inference_mode

    if sum(x is not None and x is not False for x in (pixel, mask, use_cls or None)) != 1:
        raise InputError("Give exactly one reference: a pixel, a region, or the CLS token.")
    if not indices:
        raise InputError("No planes to search.")
    n = len(indices) + 1
    maps: dict[int, np.ndarray] = {}
    with inference_mode():
        plane = read_plane(data, reference_plane, is_stack=is_stack)
        if use_cls:
            yield Progress(0.0, 1, "CLS token")
            vector = cls_vector(plane, featurizer=cache.featurizer(config))
        else:
            encoding = yield from within(cache.iter_encode(plane, config), 0.0, 0.9 / n, message="Encoding reference")
            vector = pixel_vector(encoding, *pixel) if pixel is not None else region_vector(encoding, mask)
        for i, index in enumerate(indices):
            plane = read_plane(data, index, is_stack=is_stack)
            encoding = yield from within(
                cache.iter_encode(plane, config), (i + 1) / n, 0.9 / n, message=f"Encoding plane {index}"
            )
            maps[index] = similarity_to(encoding, vector)
            yield Progress((i + 2) / n, 1, f"Similarity of plane {index}")
    return maps


def match_job(
    image_a: np.ndarray,
    image_b: np.ndarray,
    config: FeatureConfig,
    cache: EncodingCache,
    *,
    top_k: int | None = None,
    refine: bool = False,
) -> Generator[Progress, None, np.ndarray]:
    """Patch matches (M, 5) ``(row_a, col_a, row_b, col_b, score)`` between two planes."""
    from .core.analysis.match import match_patches
    from .core.runtime.devices import inference_mode

    with inference_mode():
        enc_a = yield from within(cache.iter_encode(image_a, config), 0.0, 0.45, message="Encoding image A")
        enc_b = yield from within(cache.iter_encode(image_b, config), 0.45, 0.45, message="Encoding image B")
        yield Progress(0.9, 1, "Matching patches")
        return match_patches(enc_a, enc_b, top_k=top_k, refine=refine)
