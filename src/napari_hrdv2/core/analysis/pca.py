"""PCA views of HR features: a basis fitted once over a collection, saved, and applied with fixed colours.

Fitting reads feature vectors exactly at random pixels (``Encoding.sample``) and applying
uses ``Encoding.project``, so neither materialises the ``(C, H, W)`` features.

Over a collection (:func:`fit_pca` with a list of encodings, images, stacks, files or
folders) each image contributes ``n_pixels`` random pixels, which stream into a uniform
reservoir of at most ``max_pixels`` vectors (Vitter's algorithm R). The PCA is fitted on the
reservoir, so memory is ``max_pixels x C`` floats whatever the number of images, and images
are encoded one at a time and released.

Foreground without a magic number (``foreground=True``, two-step PCA): the first principal
component of step one is thresholded by Otsu's method (or a manual threshold) and the side
that holds fewer of the image-border pixels is the foreground (override with
``invert_foreground``); step two refits on the foreground pixels of the reservoir. The CLS
attention map (``foreground_cue="attention"``, Otsu per image, high attention = foreground)
is the alternative cue. Bases are saved as safetensors with JSON metadata (no pickle).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import threading
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..config import FeatureConfig
from ..errors import InputError, ModelFileError
from ..features.sources import (
    FeatureSource,
    apply_linear,
    check_dense,
    count_sources,
    is_encoding,
    iter_sources,
    sample_at,
    source_shape,
)
from ..progress import Progress, run_steps, within

if TYPE_CHECKING:  # pragma: no cover
    from ..config import FeatureConfig
    from ..features.encoding import Featurizer

#: Random pixels sampled per image to fit a basis; more change the basis by less than the sampling noise.
DEFAULT_FIT_PIXELS = 20_000
#: Most feature vectors kept over a whole collection (uniform reservoir): bounds the memory of a fit.
DEFAULT_MAX_PIXELS = 100_000
#: Image-border pixels sampled per image for the foreground sign rule, and the most kept in all.
BORDER_PIXELS = 2_000
MAX_BORDER_PIXELS = 20_000
#: Percentiles of the fitted scores mapped to 0 and 1 (fixed colour range of a basis).
COLOUR_PERCENTILES = (2.0, 98.0)
FOREGROUND_CUES: tuple[str, ...] = ("pca", "attention")
ForegroundCue = Literal["pca", "attention"]
#: Written into saved bases; a newer major version is refused.
FILE_FORMAT = "napari-hrdv2 PCA basis"
FILE_VERSION = 1
#: Metadata entry of a saved basis holding its integrity checksum (bases written before it have none).
CHECKSUM_KEY = "checksum"


# ---------------------------------------------------------------------------------------------- basis
@dataclass(frozen=True, eq=False)
class PCABasis:
    """Principal axes and a fixed colour range, reusable across images for consistent colours.

    Attributes
    ----------
    mean : (C,) float32 array
    components : (k, C) float32 array, rows are unit principal axes, strongest first
    low, high : (k,) float32 arrays
        Scores mapped to 0 and 1 (2nd / 98th percentiles of the fitted pixels); fixed, so a
        stack or movie coloured with one basis does not flicker.
    explained_variance : (k,) float32 array
        Variance of the fitted pixels along each axis.
    explained_variance_ratio : (k,) float32 array
        The same as a fraction of the total variance.
    foreground_weight : (C,) float32 array or None
        Set for a two-step (``foreground=True``) basis with the PCA cue: a pixel is foreground
        when ``foreground_weight @ feature + foreground_bias > 0``.
    foreground_bias : float
    metadata : dict
        JSON-safe: ``config`` (the FeatureConfig dict, None for bare arrays), ``backbone``,
        ``feature_signature``, ``n_images``, ``n_pixels_sampled``, ``n_pixels_fitted``, ``sources``,
        ``foreground`` (cue, threshold, side, rule), ``created`` (UTC ISO date), ``seed``;
        ``backbone_resolved`` (the backbone's absolute path when it was a local folder or file) and
        ``backbone_weights`` (:func:`~..backbone.identity.fingerprint_hash`) when known.
    backbone_fingerprint : (n,) float32 array or None
        The fingerprint of the backbone weights the basis was fitted with
        (:func:`~..backbone.identity.backbone_fingerprint`); features of other weights are refused.
        None for bases fitted on bare arrays and bases saved before it was recorded (not checked).
    """

    mean: np.ndarray
    components: np.ndarray
    low: np.ndarray
    high: np.ndarray
    explained_variance: np.ndarray | None = None
    explained_variance_ratio: np.ndarray | None = None
    foreground_weight: np.ndarray | None = None
    foreground_bias: float = 0.0
    metadata: dict[str, Any] = field(default_factory=dict)
    backbone_fingerprint: np.ndarray | None = None

    # ------------------------------------------------------------ properties
    @property
    def n_components(self) -> int:
        return int(self.components.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.components.shape[1])

    @property
    def feature_signature(self) -> dict[str, Any] | None:
        """The feature-defining settings the basis was fitted on (None when fitted on bare arrays)."""
        return self.metadata.get("feature_signature")

    @property
    def foreground_cue(self) -> str | None:
        """``"pca"`` or ``"attention"`` for a foreground-only basis, else None."""
        return (self.metadata.get("foreground") or {}).get("cue")

    # ------------------------------------------------------------ checks
    def check_features(self, features: FeatureSource) -> None:
        """Refuse features of another width or from another feature configuration (names the difference)."""
        n_features = features.n_features if is_encoding(features) else check_dense(features).shape[0]
        if n_features != self.n_features:
            raise InputError(
                f"The PCA basis was fitted on {self.n_features}-channel features but these have {n_features} "
                "channels: compute the features with the basis' backbone, or fit a new basis."
            )
        self.check_backbone_weights(getattr(features, "backbone_fingerprint", None))
        mine = self.feature_signature
        config = getattr(features, "config", None)
        if mine is None or config is None:
            return
        difference = signature_difference(mine, config.feature_signature())
        if difference:
            raise InputError(
                f"The PCA basis was fitted on other features than these: {difference}. Compute the features "
                "with the basis' settings, or fit a new basis."
            )

    def check_backbone_weights(self, fingerprint: np.ndarray | None) -> None:
        """Refuse features of other backbone weights than the basis was fitted with (unknown ones pass).

        Backbones of one width give features of one shape, so without this a basis applied with other
        weights gives other colours without any error.
        """
        from ..backbone.identity import fingerprint_hash, same_weights

        if same_weights(self.backbone_fingerprint, fingerprint):
            return
        meta = self.metadata
        where = meta.get("backbone_resolved") or meta.get("backbone")
        raise InputError(
            f"The PCA basis was fitted on other features than these: they come from other backbone weights "
            f"(fingerprint {fingerprint_hash(fingerprint)}) than the basis' backbone '{meta.get('backbone')}' "
            f"(at '{where}' when it was fitted, fingerprint {fingerprint_hash(self.backbone_fingerprint)}). Use "
            "those weights (pca apply --backbone PATH), or fit a new basis."
        )

    def check_components(self, components: Sequence[int]) -> list[int]:
        """``components`` as ints, or :class:`InputError` (before any encoding) when the basis lacks one."""
        picked = [int(c) for c in components]
        bad = [c for c in picked if not 0 <= c < self.n_components]
        if bad:
            raise InputError(
                f"Components {tuple(picked)} requested but the basis has {self.n_components} "
                f"(0..{self.n_components - 1}); fit it with more components."
            )
        return picked

    # ------------------------------------------------------------ apply
    def project(self, features: FeatureSource, components: Sequence[int] | None = None) -> np.ndarray:
        """Scores ``(len(components), H, W)`` float32 of an image's features on the chosen axes."""
        self.check_features(features)
        picked = list(range(self.n_components)) if components is None else self.check_components(components)
        weight = self.components[picked]
        return apply_linear(features, weight, -weight @ self.mean)

    def scale(self, scores: np.ndarray, components: Sequence[int]) -> np.ndarray:
        """Scores ``(k, H, W)`` of ``components`` mapped to [0, 1] with the fixed range of the fit."""
        picked = self.check_components(components)
        low = self.low[picked][:, None, None]
        high = self.high[picked][:, None, None]
        return np.clip((scores - low) / np.maximum(high - low, 1e-12), 0.0, 1.0).astype(np.float32)

    def to_rgb(
        self,
        features: FeatureSource,
        components: Sequence[int] | int = (0, 1, 2),
        *,
        mask_background: bool = True,
    ) -> np.ndarray:
        """(H, W, 3) float32 in [0, 1]: three components as R, G, B, or one component as grey (R = G = B).

        Colours use the basis' fixed range, so they mean the same on every image. For a
        foreground-only basis the background is black unless ``mask_background=False``.
        """
        components = (components,) if isinstance(components, (int, np.integer)) else tuple(components)
        if len(components) not in (1, 3):
            raise InputError(f"Pick exactly three components for RGB (or one for grey), got {components}.")
        self.check_components(components)
        scaled = self.scale(self.project(features, components), components)
        if len(components) == 1:
            scaled = np.repeat(scaled, 3, axis=0)
        rgb = np.ascontiguousarray(np.moveaxis(scaled, 0, -1), dtype=np.float32)
        if mask_background and self.foreground_cue is not None:
            rgb[~self.foreground_mask(features)] = 0.0
        return rgb

    def to_grey(self, features: FeatureSource, component: int = 0) -> np.ndarray:
        """(H, W) float32 in [0, 1]: one component with the fixed range (background not masked)."""
        return self.scale(self.project(features, (component,)), (component,))[0]

    def foreground_mask(self, features: FeatureSource) -> np.ndarray:
        """(H, W) bool foreground of an image by the rule this basis was fitted with."""
        cue = self.foreground_cue
        if cue is None:
            raise InputError("This PCA basis was not fitted with foreground=True; it has no foreground rule.")
        if cue == "attention":
            side = (self.metadata.get("foreground") or {}).get("side", "high")
            return attention_foreground(features, invert=side == "low")
        self.check_features(features)
        assert self.foreground_weight is not None
        score = apply_linear(features, self.foreground_weight[None, :], np.array([self.foreground_bias]))[0]
        return score > 0

    # ------------------------------------------------------------ files
    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the basis as a safetensors file (arrays + JSON metadata, no pickle), atomically.

        Raises :class:`InputError` if ``path`` exists and ``overwrite`` is False.
        """
        from ..files.atomic import write_safetensors

        tensors = {"mean": self.mean, "components": self.components, "low": self.low, "high": self.high}
        for name in ("explained_variance", "explained_variance_ratio", "foreground_weight", "backbone_fingerprint"):
            value = getattr(self, name)
            if value is not None:
                tensors[name] = value
        tensors = {name: np.ascontiguousarray(value, dtype=np.float32) for name, value in tensors.items()}
        header = {
            "format": FILE_FORMAT,
            "version": FILE_VERSION,
            "foreground_bias": float(self.foreground_bias),
            "metadata": self.metadata,
        }
        from ..files.checksums import contents_sha256

        metadata = {"hrdv2_pca": json.dumps(header)}
        metadata[CHECKSUM_KEY] = contents_sha256(tensors, metadata, skip=CHECKSUM_KEY)
        return write_safetensors(path, tensors, metadata=metadata, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | Path) -> PCABasis:
        """Read a basis written by :meth:`save`; a missing, foreign or corrupt file raises a clear error."""
        from ..files.paths import check_path

        path = check_path(path, "PCA basis")
        if not path.is_file():
            raise InputError(f"PCA basis file '{path}' does not exist.")
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="numpy") as handle:
                file_meta = handle.metadata() or {}
                header_text = file_meta.get("hrdv2_pca")
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        except Exception as err:
            raise ModelFileError(f"'{path.name}' is not a PCA basis file (not safetensors: {err}).") from err
        if header_text is None:
            raise ModelFileError(f"'{path.name}' is a safetensors file but not a napari-hrdv2 PCA basis.")
        try:
            header = json.loads(header_text)
            if not isinstance(header, dict) or not isinstance(header.get("metadata") or {}, dict):
                raise ValueError("its header is not a JSON object")
            if header.get("format") != FILE_FORMAT:
                raise ValueError(f"format {header.get('format')!r}")
            if int(header.get("version", 0)) > FILE_VERSION:
                raise ModelFileError(
                    f"'{path.name}' is a PCA basis of version {header['version']}, newer than this napari-hrdv2 "
                    f"reads ({FILE_VERSION}); update napari-hrdv2."
                )
            basis = cls(
                mean=tensors["mean"],
                components=tensors["components"],
                low=tensors["low"],
                high=tensors["high"],
                explained_variance=tensors.get("explained_variance"),
                explained_variance_ratio=tensors.get("explained_variance_ratio"),
                foreground_weight=tensors.get("foreground_weight"),
                foreground_bias=float(header.get("foreground_bias", 0.0)),
                metadata=dict(header.get("metadata") or {}),
                backbone_fingerprint=tensors.get("backbone_fingerprint"),
            )
        except ModelFileError:
            raise
        except (KeyError, ValueError, TypeError) as err:
            raise ModelFileError(f"'{path.name}' is a corrupt PCA basis file ({err}).") from err
        k, channels = basis.components.shape if basis.components.ndim == 2 else (0, 0)
        shapes_ok = (
            k > 0
            and basis.mean.shape == (channels,)
            and basis.low.shape == basis.high.shape == (k,)
            and (basis.foreground_weight is None or basis.foreground_weight.shape == (channels,))
        )
        if not shapes_ok:
            raise ModelFileError(f"'{path.name}' is a corrupt PCA basis file (array shapes do not fit together).")
        check_basis_values(basis, tensors, name=path.name)
        stored = file_meta.get(CHECKSUM_KEY)
        if stored is not None:
            from ..files.checksums import contents_sha256

            if str(stored).strip().lower() != contents_sha256(tensors, file_meta, skip=CHECKSUM_KEY):
                raise ModelFileError(
                    f"'{path.name}' fails its integrity check (its checksum does not match its contents): the basis "
                    "was changed after it was saved, or the file is damaged. Use the original file, or fit the "
                    "basis again."
                )
        return basis

    def describe(self) -> str:
        """One line: components, explained variance, images and pixels, foreground rule, backbone."""
        meta = self.metadata
        ratio = self.explained_variance_ratio
        variance = "" if ratio is None else f", explaining {100 * float(np.sum(ratio)):.1f}% of the variance"
        fg = meta.get("foreground") or {}
        rule = f", foreground by {fg['cue']} ({fg.get('rule', '')})" if fg else ""
        return (
            f"PCA basis: {self.n_components} components of {self.n_features}-channel features{variance}; "
            f"{meta.get('n_images', '?')} image(s), {meta.get('n_pixels_fitted', '?')} pixels fitted{rule}; "
            f"backbone {meta.get('backbone')}."
        )


def check_basis_values(basis: PCABasis, tensors: dict[str, np.ndarray], *, name: str) -> None:
    """Dtypes and values a loaded basis needs to give meaningful colours; :class:`ModelFileError` otherwise.

    Every array is float and finite, the foreground bias finite and each colour range non-empty
    (``high > low``): NaN components or ``high == low`` would colour every image black or white.
    """
    for key, value in tensors.items():
        array = np.asarray(value)
        if array.dtype.kind != "f":
            raise ModelFileError(f"'{name}' is a corrupt PCA basis file: '{key}' has dtype {array.dtype}, not float.")
        if not np.isfinite(array).all():
            raise ModelFileError(f"'{name}' is a corrupt PCA basis file: '{key}' holds NaN or infinite values.")
    if not np.isfinite(basis.foreground_bias):
        raise ModelFileError(f"'{name}' is a corrupt PCA basis file: its foreground bias is not a finite number.")
    flat = [int(k) for k in np.flatnonzero(~(np.asarray(basis.high) > np.asarray(basis.low)))]
    if flat:
        raise ModelFileError(
            f"'{name}' is a corrupt PCA basis file: the colour range of component(s) {flat[:8]} is empty "
            "(high <= low), so every image would be one colour. Fit the basis again."
        )
    fingerprint = basis.backbone_fingerprint
    if fingerprint is not None and np.asarray(fingerprint).ndim != 1:
        raise ModelFileError(f"'{name}' is a corrupt PCA basis file: invalid backbone fingerprint.")


def signature_difference(basis: dict[str, Any], features: dict[str, Any]) -> str:
    """Human-readable differences of two feature signatures ("" when equal), basis value first."""
    parts = []
    defaults = FeatureConfig().to_dict()  # a setting added later is absent from older files: its default
    for name in sorted(set(basis) | set(features)):
        mine, theirs = basis.get(name), features.get(name)
        if isinstance(mine, (list, tuple)) and isinstance(theirs, (list, tuple)):
            mine, theirs = list(mine), list(theirs)
        if name not in features and (mine in (False, None) or mine == defaults.get(name, ())):
            continue
        if name not in basis and (theirs in (False, None) or theirs == defaults.get(name, ())):
            continue
        if mine != theirs:
            parts.append(f"{name}={mine!r} for the basis but {theirs!r} for these features")
    return "; ".join(parts)


# ---------------------------------------------------------------------------------------------- helpers
def sample_vectors(
    features: FeatureSource,
    *,
    mask: np.ndarray | None = None,
    n_pixels: int = DEFAULT_FIT_PIXELS,
    seed: int | np.random.Generator = 0,
) -> np.ndarray:
    """Feature vectors (N, C) float32 at up to ``n_pixels`` random pixels (inside ``mask`` if given)."""
    height, width = source_shape(features)
    if mask is None:
        candidates = np.arange(height * width)
    else:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (height, width):
            raise InputError(f"mask has shape {mask.shape}, the image is {(height, width)}.")
        candidates = np.flatnonzero(mask)
        if candidates.size < 2:
            raise InputError("The mask selects fewer than 2 pixels; nothing to fit a PCA on.")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    chosen = np.sort(rng.choice(candidates, size=min(n_pixels, candidates.size), replace=False))
    rows, cols = np.divmod(chosen, width)
    return sample_at(features, rows, cols)


def border_pixels(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the one-pixel frame of an image, each pixel once."""
    top = [(0, c) for c in range(width)]
    bottom = [(height - 1, c) for c in range(width)] if height > 1 else []
    sides = [(r, 0) for r in range(1, height - 1)] + [(r, width - 1) for r in range(1, height - 1) if width > 1]
    frame = np.array(top + bottom + sides, dtype=np.int64)
    return frame[:, 0], frame[:, 1]


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold of a 1D sample (scikit-image); the midpoint for a constant sample."""
    from skimage.filters import threshold_otsu

    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0 or values.min() == values.max():
        return float(values.mean()) if values.size else 0.0
    return float(threshold_otsu(values))


def attention_foreground(features: FeatureSource, *, invert: bool = False) -> np.ndarray:
    """(H, W) bool: Otsu threshold of the head-averaged CLS attention, high attention = foreground."""
    if not is_encoding(features):
        raise InputError("The attention cue needs an Encoding (with attention maps), not a bare feature array.")
    attention = features.attention().mean(axis=0)
    mask = attention > otsu_threshold(attention)
    return ~mask if invert else mask


class _Reservoir:
    """A uniform random sample of at most ``capacity`` rows of everything added (algorithm R)."""

    def __init__(self, capacity: int, rng: np.random.Generator):
        self.capacity = int(capacity)
        self.rng = rng
        self.seen = 0
        self.rows: np.ndarray | None = None

    def add(self, vectors: np.ndarray) -> None:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape[0] == 0:
            return
        if self.rows is None:
            self.rows = np.empty((0, vectors.shape[1]), dtype=np.float32)
        room = max(0, self.capacity - self.rows.shape[0])
        if room:
            self.rows = np.concatenate([self.rows, vectors[:room]])
        rest = vectors[room:]
        if rest.shape[0]:
            positions = self.seen + room + np.arange(rest.shape[0])  # global index of each later row
            slots = (self.rng.random(rest.shape[0]) * (positions + 1)).astype(np.int64)
            keep = np.flatnonzero(slots < self.capacity)
            # Sequential semantics: of several rows drawn into one slot, the last one stays.
            last = keep[::-1][np.unique(slots[keep][::-1], return_index=True)[1]]
            self.rows[slots[last]] = rest[last]
        self.seen += vectors.shape[0]

    @property
    def size(self) -> int:
        return 0 if self.rows is None else int(self.rows.shape[0])


#: Rows per block when reducing the reservoir (bounds the float64 temporaries to ~30 MB for C = 384).
_ROW_BLOCK = 10_000


def project_rows(vectors: np.ndarray, centre: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """``(vectors - centre) @ axes.T`` in float64, a block of rows at a time: (N, k)."""
    axes = np.atleast_2d(np.asarray(axes, dtype=np.float64))
    out = np.empty((vectors.shape[0], axes.shape[0]), dtype=np.float64)
    for start in range(0, vectors.shape[0], _ROW_BLOCK):
        block = vectors[start : start + _ROW_BLOCK].astype(np.float64) - centre
        out[start : start + _ROW_BLOCK] = block @ axes.T
    return out


def _principal_axes(vectors: np.ndarray, n_components: int) -> tuple[np.ndarray, ...]:
    """Mean, unit axes (k, C), explained variance and its ratio of (N, C) vectors (float64 eigh of the covariance).

    The covariance is accumulated over blocks of rows, so no float64 copy of all vectors is made.
    """
    n_rows, n_features = vectors.shape
    mean = np.zeros(n_features, dtype=np.float64)
    for start in range(0, n_rows, _ROW_BLOCK):
        mean += vectors[start : start + _ROW_BLOCK].astype(np.float64).sum(axis=0)
    mean /= n_rows
    covariance = np.zeros((n_features, n_features), dtype=np.float64)
    for start in range(0, n_rows, _ROW_BLOCK):
        block = vectors[start : start + _ROW_BLOCK].astype(np.float64) - mean
        covariance += block.T @ block
    covariance /= max(n_rows - 1, 1)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    order = np.argsort(eigenvalues)[::-1][:n_components]
    components = eigenvectors[:, order].T
    # Deterministic signs: the largest-magnitude loading of each axis is positive.
    signs = np.sign(components[np.arange(len(order)), np.abs(components).argmax(axis=1)])
    components = components * signs[:, None]
    variance = np.clip(eigenvalues[order], 0.0, None)
    ratio = variance / max(float(np.clip(eigenvalues, 0.0, None).sum()), 1e-30)
    return mean, components, variance, ratio


def _basis_from(vectors: np.ndarray, n_components: int) -> PCABasis:
    if vectors.shape[0] < 2:
        raise InputError(f"Only {vectors.shape[0]} pixel(s) to fit a PCA on; give more or larger images.")
    n_components = min(n_components, vectors.shape[1], vectors.shape[0])
    mean, components, variance, ratio = _principal_axes(vectors, n_components)
    scores = project_rows(vectors, mean, components)
    low, high = np.percentile(scores, COLOUR_PERCENTILES, axis=0)
    return PCABasis(
        mean.astype(np.float32),
        components.astype(np.float32),
        low.astype(np.float32),
        high.astype(np.float32),
        variance.astype(np.float32),
        ratio.astype(np.float32),
    )


# ---------------------------------------------------------------------------------------------- sources
# ---------------------------------------------------------------------------------------------- fit
@dataclass
class _CollectionSample:
    """What sampling a collection gathered: pixel vectors, border vectors and what the images were."""

    reservoir: _Reservoir
    border: _Reservoir
    signature: dict[str, Any] | None = None
    config_dict: dict[str, Any] | None = None
    fingerprint: np.ndarray | None = None
    sources: list[str] = field(default_factory=list)
    n_sampled: int = 0
    n_images: int = 0

    def check_same_features(self, name: str, features: FeatureSource) -> None:
        """Record the first input's feature settings; refuse a later input with other ones."""
        fingerprint = getattr(features, "backbone_fingerprint", None)
        if fingerprint is not None:
            from ..backbone.identity import same_weights

            if not same_weights(self.fingerprint, fingerprint):
                raise InputError(f"{name} comes from other backbone weights than the first input.")
            self.fingerprint = np.asarray(fingerprint, dtype=np.float32)
        item_config = getattr(features, "config", None)
        if item_config is None:
            return
        if self.signature is None:
            self.signature, self.config_dict = item_config.feature_signature(), item_config.to_dict()
            return
        difference = signature_difference(self.signature, item_config.feature_signature())
        if difference:
            raise InputError(f"{name} has other features than the first input: {difference}.")


def _check_fit_options(
    n_components: int, n_pixels: int, max_pixels: int, foreground_cue: str, foreground_threshold: float | None
) -> None:
    if n_components < 1:
        raise InputError(f"n_components must be at least 1, got {n_components}.")
    if n_pixels < 2 or max_pixels < 2:
        raise InputError(f"n_pixels and max_pixels must be at least 2, got {n_pixels} and {max_pixels}.")
    if foreground_cue not in FOREGROUND_CUES:
        raise InputError(f"foreground_cue={foreground_cue!r} is not one of {FOREGROUND_CUES}.")
    if foreground_threshold is not None and not 0.0 < float(foreground_threshold) < 1.0:
        raise InputError(
            f"foreground_threshold is a fraction of the first component's colour range, in (0, 1); got "
            f"{foreground_threshold}. Leave it None for Otsu's automatic threshold."
        )


def _iter_sample_collection(
    inputs: Any,
    *,
    config: FeatureConfig | None,
    featurizer: Featurizer | None,
    foreground: bool,
    foreground_cue: ForegroundCue,
    invert_foreground: bool,
    mask: np.ndarray | None,
    n_pixels: int,
    max_pixels: int,
    seed: int,
    channels: Any,
) -> Generator[Progress, None, _CollectionSample]:
    """Encode (when needed) and sample each image of ``inputs`` in turn; yields progress, returns the sample."""
    use_attention = foreground and foreground_cue == "attention"
    total = count_sources(inputs)
    rng = np.random.default_rng(seed)
    sample = _CollectionSample(
        _Reservoir(max_pixels, np.random.default_rng((seed, 1))),
        _Reservoir(MAX_BORDER_PIXELS, np.random.default_rng((seed, 2))),
    )
    yield Progress(0, total or 0, "Fitting a PCA basis")
    for name, item in iter_sources(inputs, config, channels):
        label = f"Encoding {name} ({sample.n_images + 1}/{total})" if total else f"Encoding {name}"
        if is_encoding(item) or config is None:
            features = item
        else:
            if featurizer is None:
                from ..features.encoding import Featurizer

                featurizer = Featurizer(config)
            encoding_steps = featurizer.iter_encode(item, with_attention=use_attention)
            done = sample.n_images
            features = yield from within(encoding_steps, done, 1.0, total=total or done + 1, message=label)
        sample.check_same_features(name, features)
        if mask is not None and sample.n_images:
            raise InputError("mask= applies to a single image; fit several images without it.")
        image_mask = attention_foreground(features, invert=invert_foreground) if use_attention else mask
        if image_mask is not None and int(np.count_nonzero(image_mask)) < 2:
            if use_attention:
                image_mask = None  # no foreground found: the whole image counts rather than none of it
            else:
                raise InputError("The mask selects fewer than 2 pixels; nothing to fit a PCA on.")
        vectors = sample_vectors(features, mask=image_mask, n_pixels=n_pixels, seed=rng)
        sample.reservoir.add(vectors)
        sample.n_sampled += vectors.shape[0]
        if foreground and foreground_cue == "pca":
            rows, cols = border_pixels(*source_shape(features))
            pick = np.sort(rng.choice(rows.size, size=min(BORDER_PIXELS, rows.size), replace=False))
            sample.border.add(sample_at(features, rows[pick], cols[pick]))
        del features
        sample.n_images += 1
        if len(sample.sources) < 1000:
            sample.sources.append(name)
        yield Progress(sample.n_images, total or sample.n_images, f"Sampled {name}")
    if sample.n_images == 0:
        raise InputError("No images to fit a PCA basis on (empty list or folder).")
    return sample


def _pca_foreground(
    sample: _CollectionSample, *, n_components: int, threshold_fraction: float | None, invert: bool
) -> tuple[np.ndarray, np.ndarray, float, dict[str, Any]]:
    """Two-step PCA foreground: (selected rows, foreground weight (C,), bias, description)."""
    rows = sample.reservoir.rows
    assert rows is not None
    first = _basis_from(rows, 1)
    axis, centre = first.components[0].astype(np.float64), first.mean.astype(np.float64)
    scores = project_rows(rows, centre, axis)[:, 0]
    span = max(float(first.high[0] - first.low[0]), 1e-12)
    if threshold_fraction is None:
        threshold, how = otsu_threshold(scores), "Otsu threshold on PC1"
    else:
        threshold, how = float(first.low[0]) + float(threshold_fraction) * span, "manual threshold on PC1"
    border = sample.border
    border_high = float(np.mean(project_rows(border.rows, centre, axis)[:, 0] > threshold)) if border.size else 0.0
    side = 1.0 if border_high <= 0.5 else -1.0  # the side holding fewer of the border pixels
    if invert:
        side = -side
    selected = rows[side * (scores - threshold) > 0]
    if selected.shape[0] < max(2, n_components + 1):
        raise InputError(
            f"The foreground holds only {selected.shape[0]} of {sample.reservoir.size} sampled pixels; "
            "set a manual foreground_threshold or invert_foreground."
        )
    info = {
        "cue": "pca",
        "rule": f"{how}; foreground = the side holding fewer image-border pixels" + (", inverted" if invert else ""),
        "threshold": (threshold - float(first.low[0])) / span,  # as a fraction of PC1's colour range
        "side": "high" if side > 0 else "low",
        "border_fraction_high": border_high,
        "foreground_fraction": selected.shape[0] / sample.reservoir.size,
    }
    return selected, (side * axis).astype(np.float32), float(-side * (axis @ centre + threshold)), info


def iter_fit_pca(
    inputs: Any,
    *,
    n_components: int = 3,
    config: FeatureConfig | None = None,
    featurizer: Featurizer | None = None,
    foreground: bool = False,
    foreground_cue: ForegroundCue = "pca",
    foreground_threshold: float | None = None,
    invert_foreground: bool = False,
    mask: np.ndarray | None = None,
    n_pixels: int = DEFAULT_FIT_PIXELS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    seed: int = 0,
    channels: Any = None,
) -> Generator[Progress, None, PCABasis]:
    """Generator form of :func:`fit_pca`: yields :class:`Progress`, returns the :class:`PCABasis`.

    Stop iterating (or ``close()``) to cancel.
    """
    _check_fit_options(n_components, n_pixels, max_pixels, foreground_cue, foreground_threshold)
    if featurizer is not None:
        config = featurizer.config
    sample = yield from _iter_sample_collection(
        inputs,
        config=config,
        featurizer=featurizer,
        foreground=foreground,
        foreground_cue=foreground_cue,
        invert_foreground=invert_foreground,
        mask=mask,
        n_pixels=n_pixels,
        max_pixels=max_pixels,
        seed=seed,
        channels=channels,
    )
    assert sample.reservoir.rows is not None
    fg_info: dict[str, Any] | None = None
    fg_weight, fg_bias = None, 0.0
    selected = sample.reservoir.rows
    if foreground and foreground_cue == "pca":
        selected, fg_weight, fg_bias, fg_info = _pca_foreground(
            sample, n_components=n_components, threshold_fraction=foreground_threshold, invert=invert_foreground
        )
    elif foreground and foreground_cue == "attention":
        fg_info = {
            "cue": "attention",
            "rule": "Otsu threshold on the head-averaged CLS attention of each image, high = foreground"
            + (", inverted" if invert_foreground else ""),
            "side": "low" if invert_foreground else "high",
        }
    basis = _basis_from(selected, n_components)
    metadata = {
        "config": sample.config_dict,
        "backbone": None if sample.config_dict is None else sample.config_dict.get("backbone"),
        **backbone_identity(sample.config_dict, sample.fingerprint),
        "feature_signature": sample.signature,
        "n_components": basis.n_components,
        "n_images": sample.n_images,
        "n_pixels_sampled": sample.n_sampled,
        "n_pixels_fitted": int(selected.shape[0]),
        "pixels_per_image": int(n_pixels),
        "max_pixels": int(max_pixels),
        "seed": int(seed),
        "sources": sample.sources,
        "foreground": fg_info,
        "explained_variance_ratio": [float(v) for v in basis.explained_variance_ratio],
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    return dataclasses.replace(
        basis,
        foreground_weight=fg_weight,
        foreground_bias=fg_bias,
        metadata=metadata,
        backbone_fingerprint=sample.fingerprint,
    )


def backbone_identity(config: dict[str, Any] | None, fingerprint: np.ndarray | None) -> dict[str, str]:
    """Metadata that binds a basis to its backbone: the absolute path of a local backbone, the weights' hash."""
    from ..backbone.identity import fingerprint_hash
    from ..backbone.registry import find_spec

    out: dict[str, str] = {}
    name = None if config is None else config.get("backbone")
    if isinstance(name, str) and find_spec(name) is None:
        try:
            path = Path(name).expanduser()
            if path.exists():
                out["backbone_resolved"] = str(path.resolve())
        except OSError:  # a name too long for the file system: not a local path
            pass
    if fingerprint is not None:
        out["backbone_weights"] = fingerprint_hash(fingerprint)
    return out


def fit_pca(
    inputs: Any,
    *,
    n_components: int = 3,
    config: FeatureConfig | None = None,
    featurizer: Featurizer | None = None,
    foreground: bool = False,
    foreground_cue: ForegroundCue = "pca",
    foreground_threshold: float | None = None,
    invert_foreground: bool = False,
    mask: np.ndarray | None = None,
    n_pixels: int = DEFAULT_FIT_PIXELS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    seed: int = 0,
    progress: Callable[[Progress], None] | None = None,
    cancel: threading.Event | None = None,
    channels: Any = None,
) -> PCABasis:
    """Fit a :class:`PCABasis` on one image or a whole collection.

    Parameters
    ----------
    inputs : Encoding, (C, H, W) array, or a list of them; with ``config``: images (H, W[, 3|4]),
        stacks (N, H, W[, 3|4]), image files and folders (their images), encoded one at a time
    n_components : int
        Principal axes kept (the colour range of each is fixed from the fit).
    config, featurizer : FeatureConfig or Featurizer, optional
        How to encode images given as arrays or files.
    foreground : bool
        Two-step PCA: fit, split the pixels into foreground and background (see the module
        docstring), refit on the foreground. The basis remembers the rule, and
        :meth:`PCABasis.to_rgb` shows the background black.
    foreground_cue : {"pca", "attention"}
        Split on the first principal component, or on each image's CLS attention.
    foreground_threshold : float or None
        None: Otsu's threshold. A number in (0, 1): threshold at that fraction of the first
        component's colour range (the DINOv2 demos' hand-picked 0.6 is one such value).
    invert_foreground : bool
        Take the other side as foreground (manual override of the border rule).
    mask : (H, W) bool array, optional
        Fit only on these pixels (single image only).
    n_pixels : int
        Random pixels sampled per image.
    max_pixels : int
        Most vectors kept over the whole collection (uniform reservoir): memory is
        ``max_pixels * C * 4`` bytes whatever the number of images.
    seed : int
    progress, cancel
        Called with every :class:`Progress`; setting ``cancel`` stops with :class:`Cancelled`.
    channels : channels of multichannel image files to use (``io.read_image(channels=)``); None: as stored
    """
    steps = iter_fit_pca(
        inputs,
        n_components=n_components,
        config=config,
        featurizer=featurizer,
        foreground=foreground,
        foreground_cue=foreground_cue,
        foreground_threshold=foreground_threshold,
        invert_foreground=invert_foreground,
        mask=mask,
        n_pixels=n_pixels,
        max_pixels=max_pixels,
        seed=seed,
        channels=channels,
    )
    return run_steps(steps, progress=progress, cancel=cancel)


def pca_rgb(
    features: FeatureSource,
    *,
    basis: PCABasis | None = None,
    components: Sequence[int] | int = (0, 1, 2),
    mask: np.ndarray | None = None,
    foreground: bool = False,
    foreground_cue: ForegroundCue = "pca",
    foreground_threshold: float | None = None,
    invert_foreground: bool = False,
    n_pixels: int = DEFAULT_FIT_PIXELS,
    seed: int = 0,
) -> np.ndarray:
    """PCA-RGB view of one image's HR features: (H, W, 3) float32 in [0, 1].

    Parameters
    ----------
    features : Encoding or (C, H, W) array
    basis : PCABasis, optional
        Reuse a basis fitted elsewhere (consistent colours across images); otherwise one is
        fitted on this image.
    components : three ints, or one int for a grey map
        Which principal components become R, G, B, e.g. ``(3, 4, 5)``.
    mask : (H, W) bool array, optional
        Fit only on these pixels.
    foreground, foreground_cue, foreground_threshold, invert_foreground
        Two-step PCA with the background black (see :func:`fit_pca`); with ``basis``, its
        own foreground rule is used.
    """
    picked = (components,) if isinstance(components, (int, np.integer)) else tuple(components)
    if basis is None:
        basis = fit_pca(
            features,
            n_components=max(picked) + 1,
            mask=mask,
            foreground=foreground,
            foreground_cue=foreground_cue,
            foreground_threshold=foreground_threshold,
            invert_foreground=invert_foreground,
            n_pixels=n_pixels,
            seed=seed,
        )
    elif foreground and basis.foreground_cue is None:
        raise InputError("This PCA basis was not fitted with foreground=True; refit it with foreground=True.")
    return basis.to_rgb(features, picked, mask_background=foreground or basis.foreground_cue is not None)


# ---------------------------------------------------------------------------------------------- maps
def feature_norm(features: FeatureSource) -> np.ndarray:
    """Per-pixel L2 norm of the features: (H, W) float32."""
    if is_encoding(features):
        return features.feature_norm()
    dense = check_dense(features)
    return np.sqrt(np.einsum("chw,chw->hw", dense, dense)).astype(np.float32)


def cosine_similarity_map(features: FeatureSource, row: int, col: int) -> np.ndarray:
    """Cosine similarity of every pixel's feature to the one at ``(row, col)``: (H, W) in [-1, 1]."""
    height, width = source_shape(features)
    if not (0 <= row < height and 0 <= col < width):
        raise InputError(f"Pixel ({row}, {col}) lies outside the {height}x{width} image.")
    if is_encoding(features):
        return features.cosine_similarity(row, col)
    dense = check_dense(features).astype(np.float32)
    reference = dense[:, row, col]
    dots = np.einsum("c,chw->hw", reference, dense)
    denominator = feature_norm(dense) * max(float(np.linalg.norm(reference)), 1e-12)
    return np.clip(dots / np.maximum(denominator, 1e-12), -1.0, 1.0).astype(np.float32)
