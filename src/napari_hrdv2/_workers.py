"""Generator jobs run by the widgets in napari thread workers. No Qt, no layers.

Each job takes plain data (arrays copied on the main thread, configs, a shared
:class:`EncodingCache`), yields the core's :class:`~.core.progress.Progress` with ``total=1``
(``done`` is the fraction of the job) between steps, a :class:`BackboneInfo` once the backbone is
loaded and, in progressive mode, partial results (:class:`PartialFeatures`, :class:`PartialPrediction`);
it returns a result object. The widgets turn results into layers on the main thread. Stopping the
generator (``worker.quit()``) cancels a job at its next step. Heavy work runs under
``torch.inference_mode()``, which must be entered in the worker thread itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .core.config import FeatureConfig
from .core.errors import InputError
from .core.features.cache import EncodingCache
from .core.files.outputs import BatchReport as _CoreBatchReport
from .core.progress import Progress, map_steps, within

if TYPE_CHECKING:  # pragma: no cover
    from .core.analysis.pca import PCABasis
    from .core.features.encoding import Encoding, PartialEncoding
    from .core.segmentation.protocol import Segmenter
    from .core.segmentation.segmenter import LinearSegmenter


# ---------------------------------------------------------------------------------------------- helpers
def read_plane(data: Any, index: int, *, is_stack: bool) -> np.ndarray:
    """Plane ``index`` of an image array (single planes have only plane 0), as numpy."""
    return np.asarray(data[index]) if is_stack else np.asarray(data)


def merge_runtime(model_config: FeatureConfig, runtime: FeatureConfig) -> FeatureConfig:
    """The model's feature definition with the runtime settings (device, tiling, batch) of ``runtime``."""
    return model_config.with_runtime_of(runtime)


def _feature_range(encoding: Encoding, n_pixels: int = 2000, seed: int = 0) -> tuple[float, float]:
    height, width = encoding.shape
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, height, n_pixels)
    cols = rng.integers(0, width, n_pixels)
    values = encoding.sample(rows, cols)
    low, high = np.percentile(values, [1, 99])
    return float(low), float(high)


# ---------------------------------------------------------------------------------------------- partial results
_SIZE_NAMES = {384: "S", 768: "B", 1024: "L", 1536: "g"}


@dataclass(frozen=True)
class BackboneInfo:
    """The model card of a loaded backbone (yielded by every job once its backbone is loaded)."""

    name: str
    patch_size: int
    embed_dim: int
    num_heads: int
    depth: int
    num_registers: int
    source: str
    device: str
    dtype: str

    def card(self) -> str:
        """One line, e.g. 'ViT-S/14 (dinov2_vits14): patch 14, 384 dims, 6 heads, 12 blocks; cpu float32'.

        The source (where the weights came from) is :attr:`source`; the dock shows it in the card's tooltip.
        """
        size = _SIZE_NAMES.get(self.embed_dim)
        arch = f"ViT-{size}/{self.patch_size}" if size else f"ViT/{self.patch_size}"
        registers = f", {self.num_registers} registers" if self.num_registers else ""
        return (
            f"{arch} ({self.name}): patch {self.patch_size}, {self.embed_dim} dims, {self.num_heads} heads, "
            f"{self.depth} blocks{registers}; {self.device} {self.dtype}"
        )


def load_backbone_info(cache: EncodingCache, config: FeatureConfig) -> BackboneInfo:
    """Load the backbone of ``config`` in this thread (errors surface here) and describe it."""
    from .core.backbone.loading import find_spec

    featurizer = cache.featurizer(config)
    backbone = featurizer.backbone
    spec = find_spec(config.backbone)
    source = str(backbone.source)
    name = spec.name if spec is not None else Path(source).name or source
    model_config = getattr(backbone.model, "config", None)
    return BackboneInfo(
        name=name,
        patch_size=int(backbone.patch_size),
        embed_dim=int(backbone.embed_dim),
        num_heads=int(backbone.num_heads),
        depth=int(getattr(model_config, "num_hidden_layers", 0) or 0),
        num_registers=int(backbone.num_registers),
        source=source if spec is None else f"{spec.hf_id} (Hugging Face cache)",
        device=str(featurizer.device),
        dtype=str(featurizer.dtype).removeprefix("torch."),
    )


@dataclass(frozen=True)
class PartialFeatures:
    """A first or refined view of one plane while its encoding runs: PCA-RGB after ``n_transforms`` of ``total``."""

    index: int
    n_transforms: int
    total: int
    pca: np.ndarray | None  # (H, W, 3) float32 in [0, 1]


@dataclass(frozen=True)
class PartialPrediction:
    """A first or refined segmentation of one plane from a partial encoding (labels (H, W))."""

    index: int
    n_transforms: int
    total: int
    labels: np.ndarray
    classes: list[int]


class _Throttle:
    """Lets a partial result through first, then only when its cost stays a small share of the run.

    A partial result is converted when at least ``factor`` times its last conversion time (and
    ``min_interval`` seconds) passed since the previous one, so refining costs at most ~1/factor.
    """

    def __init__(self, factor: float = 4.0, min_interval: float = 1.0):
        self.factor, self.min_interval = factor, min_interval
        self._last_end: float | None = None
        self._last_cost = 0.0

    def ready(self) -> bool:
        if self._last_end is None:
            return True
        return time.monotonic() - self._last_end >= max(self.min_interval, self.factor * self._last_cost)

    def run(self, convert: Callable[[], Any]) -> Any:
        start = time.monotonic()
        value = convert()
        self._last_end = time.monotonic()
        self._last_cost = self._last_end - start
        return value


def _with_partials(
    steps: Generator[Any, None, Encoding], convert: Callable[[PartialEncoding], Any]
) -> Generator[Any, None, Encoding]:
    """Re-yield ``steps``, turning its PartialEncoding items into ``convert(item)`` (skipped when it returns None)."""
    from .core.features.encoding import PartialEncoding  # noqa: F811 - the runtime class

    return (yield from map_steps(steps, lambda item: convert(item) if isinstance(item, PartialEncoding) else item))


# ---------------------------------------------------------------------------------------------- features
@dataclass
class FeaturesResult:
    """Per-plane outputs of :func:`features_job` (plane index -> array)."""

    config: FeatureConfig
    encodings: dict[int, Encoding]
    pca: dict[int, np.ndarray] = field(default_factory=dict)  # (H, W, 3) float32 in [0, 1]
    attention: dict[int, np.ndarray] = field(default_factory=dict)  # (1 + heads, H, W): mean, then heads
    basis: PCABasis | None = None
    feature_range: tuple[float, float] = (0.0, 1.0)

    @property
    def n_features(self) -> int:
        return next(iter(self.encodings.values())).n_features


def features_job(
    data: Any,
    indices: Sequence[int],
    config: FeatureConfig,
    cache: EncodingCache,
    *,
    is_stack: bool,
    pca: bool = True,
    attention: bool = True,
    basis: PCABasis | None = None,
    progressive: bool = True,
) -> Generator[Progress | BackboneInfo | PartialFeatures, None, FeaturesResult]:
    """Encode planes ``indices`` of ``data`` and compute their PCA-RGB and attention maps.

    One PCA basis (``basis``, or fitted on the first plane) colours every plane of a stack consistently.
    Yields a :class:`BackboneInfo` once the backbone is loaded and, with ``progressive``, a
    :class:`PartialFeatures` PCA view after the identity pass of each plane and refined ones while the
    other passes run (throttled so that they cost a small share of the run).
    """
    from ._layers import with_mean_head
    from .core.analysis.pca import fit_pca
    from .core.runtime.devices import inference_mode

    if not indices:
        raise InputError("No planes selected to compute.")
    result = FeaturesResult(config=config, encodings={}, basis=basis)
    yield Progress(0.0, 1, "Loading the backbone")
    with inference_mode():
        yield load_backbone_info(cache, config)
        n = len(indices)
        for i, index in enumerate(indices):
            plane = read_plane(data, index, is_stack=is_stack)
            label = f"plane {index}" if is_stack else "image"
            throttle = _Throttle()

            def partial_view(item: PartialEncoding, index: int = index, throttle: _Throttle = throttle) -> Any:
                if not pca or not throttle.ready():
                    return None
                partial_basis = result.basis

                def convert() -> np.ndarray:
                    fitted = partial_basis or fit_pca(item.encoding, n_components=3)
                    return fitted.to_rgb(item.encoding)

                return PartialFeatures(index, item.n_transforms, item.total, throttle.run(convert))

            steps = _with_partials(cache.iter_encode(plane, config, progressive=progressive and pca), partial_view)
            encoding = yield from within(steps, i / n, 0.8 / n, message=f"Encoding {label}")
            result.encodings[index] = encoding
            if pca:
                if result.basis is None:
                    result.basis = fit_pca(encoding, n_components=3)
                result.pca[index] = result.basis.to_rgb(encoding)
            if attention and encoding.n_heads:
                result.attention[index] = with_mean_head(encoding.attention())
            yield Progress((i + 1) / n, 1, f"Finished {label}")
        result.feature_range = _feature_range(result.encodings[indices[0]])
    return result


# ---------------------------------------------------------------------------------------------- similarity
def similarity_job(
    plane: np.ndarray, row: int, col: int, config: FeatureConfig, cache: EncodingCache
) -> Generator[Progress, None, np.ndarray]:
    """Cosine similarity (H, W) of every pixel's HR feature to the one at ``(row, col)``."""
    from .core.analysis.pca import cosine_similarity_map
    from .core.runtime.devices import inference_mode

    with inference_mode():
        encoding = yield from within(cache.iter_encode(plane, config), 0.0, 0.9, message="Encoding")
        yield Progress(0.9, 1, "Similarity")
        return np.asarray(cosine_similarity_map(encoding, int(row), int(col)), dtype=np.float32)


# ---------------------------------------------------------------------------------------------- segmentation
@dataclass
class PredictionResult:
    """Per-plane predictions (plane index -> array) and the segmenter that made them."""

    segmenter: Segmenter
    config: FeatureConfig
    labels: dict[int, np.ndarray] = field(default_factory=dict)
    uncertainty: dict[int, np.ndarray] = field(default_factory=dict)
    probabilities: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def classes(self) -> list[int]:
        return [int(c) for c in self.segmenter.classes_]


def _predict_planes(
    segmenter: Segmenter,
    encode: Callable[[int], Generator[Progress, None, Encoding]],
    indices: Sequence[int],
    result: PredictionResult,
    *,
    start: float,
    span: float,
    uncertainty: bool,
    probabilities: bool,
) -> Generator[Progress, None, None]:
    n = max(len(indices), 1)
    for i, index in enumerate(indices):
        base = start + span * i / n
        encoding = yield from within(encode(index), base, 0.8 * span / n, message=f"Encoding plane {index}")
        yield Progress(base + 0.8 * span / n, 1, f"Predicting plane {index}")
        kinds = ("labels", *(("uncertainty",) if uncertainty else ()), *(("probabilities",) if probabilities else ()))
        outputs = segmenter.outputs(encoding, kinds)  # one pass: refinement computed once for all of them
        result.labels[index] = np.asarray(outputs["labels"])
        if uncertainty:
            result.uncertainty[index] = np.asarray(outputs["uncertainty"], dtype=np.float32)
        if probabilities:
            result.probabilities[index] = np.asarray(outputs["probabilities"], dtype=np.float32)
        yield Progress(start + span * (i + 1) / n, 1, f"Predicted plane {index}")


def train_job(
    data: Any,
    labels: Mapping[int, np.ndarray],
    config: FeatureConfig,
    cache: EncodingCache,
    *,
    is_stack: bool,
    make_segmenter: Callable[[], LinearSegmenter],
    predict_indices: Sequence[int] | None = None,
    uncertainty: bool = False,
    probabilities: bool = False,
    progressive: bool = False,
) -> Generator[Progress | BackboneInfo | PartialPrediction, None, PredictionResult]:
    """Train a new segmenter on the planes in ``labels`` (plane index -> copied (H, W) labels), then predict.

    Predicts ``predict_indices`` (default: the labelled planes; ``[]`` trains only). With ``progressive``
    and one labelled plane that is also the one predicted (live mode), a model trained on the partial
    encoding yields a :class:`PartialPrediction` after the identity pass (and refined ones while the other
    passes run), long before the final result.
    """
    from .core.runtime.devices import inference_mode

    if not labels:
        raise InputError("The scribbles layer is empty: paint a few strokes of at least two classes, then Train.")
    indices = sorted(labels)
    predict_indices = indices if predict_indices is None else list(predict_indices)
    refine = progressive and len(indices) == 1 and predict_indices == indices
    throttle = _Throttle()

    def encode(index: int) -> Generator[Progress, None, Encoding]:
        return cache.iter_encode(read_plane(data, index, is_stack=is_stack), config)

    def partial_segmentation(item: PartialEncoding) -> PartialPrediction | None:
        if not throttle.ready():
            return None
        index = indices[0]

        def convert() -> PartialPrediction:
            import torch

            model = make_segmenter()
            with torch.inference_mode(False):  # fitting needs autograd
                model.fit([item.encoding], [labels[index]])
            predicted = np.asarray(model.predict(item.encoding))
            return PartialPrediction(index, item.n_transforms, item.total, predicted, [int(c) for c in model.classes_])

        return throttle.run(convert)

    yield Progress(0.0, 1, "Loading the backbone")
    with inference_mode():
        yield load_backbone_info(cache, config)
        encodings = []
        n = len(indices)
        for i, index in enumerate(indices):
            plane = read_plane(data, index, is_stack=is_stack)
            steps = (
                _with_partials(cache.iter_encode(plane, config, progressive=True), partial_segmentation)
                if refine
                else cache.iter_encode(plane, config)
            )
            encoding = yield from within(steps, 0.5 * i / n, 0.5 / n, message=f"Encoding plane {index}")
            encodings.append(encoding)
    yield Progress(0.5, 1, "Training")
    # Outside inference mode: the optimiser needs autograd (tensors made in inference mode cannot be trained).
    segmenter = make_segmenter()
    segmenter.fit(encodings, [labels[index] for index in indices])
    result = PredictionResult(segmenter=segmenter, config=config)
    with inference_mode():
        yield from _predict_planes(
            segmenter,
            encode,
            predict_indices,
            result,
            start=0.6,
            span=0.4,
            uncertainty=uncertainty,
            probabilities=probabilities,
        )
    return result


def predict_job(
    data: Any,
    indices: Sequence[int],
    segmenter: Segmenter,
    config: FeatureConfig,
    cache: EncodingCache,
    *,
    is_stack: bool,
    uncertainty: bool = False,
    probabilities: bool = False,
) -> Generator[Progress | BackboneInfo, None, PredictionResult]:
    """Predict planes ``indices`` of ``data`` with a trained segmenter."""
    from .core.runtime.devices import inference_mode

    if not indices:
        raise InputError("No planes selected to predict.")

    def encode(index: int) -> Generator[Progress, None, Encoding]:
        return cache.iter_encode(read_plane(data, index, is_stack=is_stack), config)

    yield Progress(0.0, 1, "Loading the backbone")
    result = PredictionResult(segmenter=segmenter, config=config)
    with inference_mode():
        yield load_backbone_info(cache, config)
        yield from _predict_planes(
            segmenter,
            encode,
            indices,
            result,
            start=0.0,
            span=1.0,
            uncertainty=uncertainty,
            probabilities=probabilities,
        )
    return result


def train_lazy_job(
    data: Any,
    labels: Mapping[int, np.ndarray],
    config: FeatureConfig,
    *,
    is_stack: bool,
    make_segmenter: Callable[[], LinearSegmenter],
    cache: EncodingCache | None = None,
) -> Generator[Progress, None, PredictionResult]:
    """Train on a huge (lazily read) image, encoding only the tiles that hold scribbles (core ``fit_lazy``).

    ``labels`` maps plane index -> copied (H, W) scribbles. Only the tiles touching scribbles (and the
    plane's intensity range) are read; the features are exactly those of the in-memory path. Predicts
    nothing: the dock segments the view afterwards ("Predict current view"). ``cache`` keeps the tiles'
    encodings for retraining and for the views.
    """
    from .core.features.encoding import Featurizer
    from .core.files.lazy import LazyPlane
    from .core.runtime.devices import inference_mode
    from .core.scale.streaming import iter_encode_labelled

    if not labels:
        raise InputError("The scribbles layer is empty: paint a few strokes of at least two classes, then Train.")
    yield Progress(0.0, 1, "Loading the backbone")
    featurizer = Featurizer(config)
    encodings, crops = [], []
    indices = sorted(labels)
    with inference_mode():
        featurizer.backbone  # noqa: B018 - load here (errors surface in this job)
        for i, index in enumerate(indices):
            lead = (int(index),) if is_stack else ()
            plane = LazyPlane(data, lead, any_channels=config.channel_mode == "separate")
            steps = iter_encode_labelled(featurizer, plane, labels[index], cache=cache)
            start, span = 0.8 * i / len(indices), 0.8 / len(indices)
            plane_encodings, plane_crops = yield from within(
                steps, start, span, message=f"Encoding the scribbled tiles of plane {index}"
            )
            encodings += plane_encodings
            crops += plane_crops
    yield Progress(0.8, 1, "Training")
    segmenter = make_segmenter()
    segmenter.fit(encodings, crops)
    return PredictionResult(segmenter=segmenter, config=config)


def volume_job(
    data: Any,
    labels: np.ndarray | None,
    config: FeatureConfig,
    cache: EncodingCache,
    *,
    spacing: Sequence[float] | None,
    make_segmenter: Callable[[], LinearSegmenter] | None = None,
    segmenter: Segmenter | None = None,
    predict: bool = True,
    uncertainty: bool = False,
    probabilities: bool = False,
) -> Generator[Progress | BackboneInfo, None, PredictionResult]:
    """A volume ``(Z, Y, X[, C])`` with volume features (``config.volume``): train on ``labels`` (Z, Y, X), if given,
    a new model of ``make_segmenter`` (else use ``segmenter``), then predict every plane (if ``predict``).

    Predicting one plane costs as much as all of them (the logits of every plane of every orientation), so all
    planes are predicted. ``spacing``: the layer's (dz, dy, dx) scale.
    """
    from .core.features.volume import VolumeEncoder
    from .core.segmentation.volume import iter_fit_volume, iter_predict_volume

    config = config.replace(volume=True)
    yield Progress(0.0, 1, "Loading the backbone")
    yield load_backbone_info(cache, config.replace(volume=False))
    encoder = VolumeEncoder(data, config, spacing=spacing, cache=cache)
    span = 0.5 if predict else 1.0
    if labels is not None:
        steps = iter_fit_volume(make_segmenter(), encoder, labels)
        segmenter = yield from within(steps, 0.0, span, message="Encoding the planes through the scribbles")
    result = PredictionResult(segmenter=segmenter, config=config)
    if predict:
        start = 1.0 - span if labels is not None else 0.0
        steps = iter_predict_volume(segmenter, encoder)
        predicted = yield from within(steps, start, 1.0 - start, message="Segmenting the volume")
        for z, plane in enumerate(predicted):
            result.labels[z] = plane
            if uncertainty:
                result.uncertainty[z] = np.asarray(segmenter.uncertainty(encoder.plane_source(z)), dtype=np.float32)
            if probabilities:
                result.probabilities[z] = np.asarray(segmenter.predict_proba(encoder.plane_source(z)), np.float32)
    return result


@dataclass
class RegionResult:
    """A prediction of one rectangle of a (possibly huge, lazily read) plane: paste it at ``(top, left)``."""

    segmenter: Segmenter
    plane: int
    top: int
    left: int
    labels: np.ndarray  # (h, w)
    uncertainty: np.ndarray | None = None  # (h, w) float32
    probabilities: np.ndarray | None = None  # (n_classes, h, w) float32

    @property
    def rows(self) -> slice:
        return slice(self.top, self.top + self.labels.shape[0])

    @property
    def cols(self) -> slice:
        return slice(self.left, self.left + self.labels.shape[1])


def predict_region_job(
    data: Any,
    plane: int,
    rows: tuple[int, int],
    cols: tuple[int, int],
    segmenter: Segmenter,
    config: FeatureConfig,
    *,
    is_stack: bool,
    uncertainty: bool = False,
    probabilities: bool = False,
    cache: EncodingCache | None = None,
) -> Generator[Progress, None, RegionResult]:
    """Segment only the rectangle ``rows x cols`` of plane ``plane`` ("Predict current view").

    ``data`` is the layer's array (numpy, dask or zarr; never read whole: only the tiles touching the
    rectangle are read and encoded, plus one pass over the plane for its intensity range). The result
    equals the prediction of the whole plane cropped to the rectangle (:func:`core.streaming.segment_region`).
    With ``cache`` (the dock's), a plane encoded whole before (Compute, Predict plane) is projected
    instead, and tiles and intensity ranges computed for earlier views are reused.
    """
    from .core.files.lazy import LazyPlane
    from .core.runtime.devices import inference_mode
    from .core.scale.streaming import iter_segment_region, refined_outputs_of_encoding

    separate = config.channel_mode == "separate"
    lead = (int(plane),) if is_stack else ()
    source = LazyPlane(data, lead, any_channels=separate)
    outputs = ("labels", *(("uncertainty",) if uncertainty else ()), *(("probabilities",) if probabilities else ()))
    r0, r1 = max(0, int(rows[0])), min(source.height, int(rows[1]))
    c0, c1 = max(0, int(cols[0])), min(source.width, int(cols[1]))
    yield Progress(0.0, 1, "Loading the backbone")
    with inference_mode():
        featurizer = segmenter.featurizer(
            **{name: getattr(config, name) for name in ("device", "tile_size", "tile_overlap")}
        )
        whole = None
        if cache is not None and isinstance(data, np.ndarray):
            whole = cache.cached(data[int(plane)] if is_stack else data, featurizer.config)
        if whole is not None:
            result = refined_outputs_of_encoding(segmenter, whole, (r0, r1), (c0, c1), outputs)
        else:
            featurizer.backbone  # noqa: B018
            steps = iter_segment_region(
                segmenter, source, rows, cols, featurizer=featurizer, outputs=outputs, cache=cache
            )
            result = yield from within(steps, 0.0, 1.0, message="Predicting the view")
    return RegionResult(
        segmenter, int(plane), r0, c0, result["labels"], result.get("uncertainty"), result.get("probabilities")
    )


# ---------------------------------------------------------------------------------------------- batch
@dataclass
class BatchReport(_CoreBatchReport):
    """What :func:`folder_job` did: files written, skipped (existing) and failed (with the reason)."""

    def summary(self, overwrite_hint: str = "tick Overwrite to replace them") -> str:
        return super().summary(overwrite_hint)


def folder_job(
    inputs: Sequence[str | Path],
    outdir: str | Path,
    segmenter: Segmenter,
    config: FeatureConfig,
    *,
    suffix: str = ".tif",
    overwrite: bool = False,
) -> Generator[Progress, None, BatchReport]:
    """Segment every image in ``inputs`` (files or folders) and write one label image per input.

    A thin wrapper over :func:`core.scale.in_process.iter_segment_files`: stacks become multi-page TIFFs, a bad
    file is recorded in the report and skipped, the rest are still processed.
    """
    from .core.scale.in_process import iter_segment_files

    yield Progress(0.0, 1, "Loading the backbone")
    steps = iter_segment_files(inputs, outdir, segmenter, config, suffix=suffix, overwrite=overwrite)
    report = yield from within(steps, 0.0, 1.0)
    report = BatchReport(report.written, report.skipped, report.failed, report.extra)
    yield Progress(1.0, 1, report.summary())
    return report
