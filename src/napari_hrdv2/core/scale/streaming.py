"""Segmentation of images larger than memory: one tile at a time, results written as they are finished.

The in-memory path encodes every tile of an image (:meth:`Featurizer.encode`), then
:meth:`Encoding.project` adds each tile's blended logits into one ``(n_classes, H, W)`` array. Here the
same tiles (:meth:`Featurizer.plan_tiles`, i.e. :func:`~.tiling.plan_tiles` over the whole image), with the same blending weights (a
partition of unity) and the same intensity scaling (computed over the whole image first, block by
block), are encoded one at a time: a tile's low-resolution maps are projected with the model's first
linear map (:meth:`~.segmenter.LinearSegmenter.first_layer`: the ``n_classes`` logits of a linear model, the
hidden pre-activations of an MLP) and dropped at once. Tiles are blended in that linear space, before any
nonlinearity (as the in-memory path does), and the model's per-pixel head
(:meth:`~.segmenter.LinearSegmenter.head_logits`, the identity for a linear model) turns finished rows into
logits. Tiles are visited in the order of the in-memory path (row-major), so
every pixel sums the same contributions in the same order: the logits are **bit-identical** to the
in-memory ones for a linear model, and so are labels, probabilities and uncertainty (an MLP's head may
then differ by float32 rounding).

Rows of the image are finished as soon as the last tile row covering them is done; they are turned into
labels (and probabilities / uncertainty) and written. A model that refines its probabilities
(:mod:`~..segmentation.refine`) computes every region and band with :func:`~..segmentation.refine.halo`
pixels of context on each side where the image goes on (logits and the guide, scaled with the whole
image's :class:`IntensityRange`), refines and crops the context away: the result equals the refined
prediction of the whole image (labels identical; probabilities to float rounding). Memory holds one tile's maps plus the
logits of one band of tile rows, ``n_out x tile_size x width`` float32 (``n_out``: classes, or an MLP's hidden
units) (e.g. 76 MB for 3 classes on a 12288-pixel
wide image), whatever the height.

- :func:`iter_segment_region` / :func:`segment_region`: the result on one rectangle only (napari's
  "Predict current view"): only the tiles that touch it are encoded, and it equals the full prediction
  cropped to the rectangle.
- :func:`iter_stream_segment` / :func:`stream_segment`: a whole image or stack into Zarr outputs
  (:class:`~.lazy_io.ZarrOutput`): resumable chunk row by chunk row, renamed into place when complete.
- :func:`fit_lazy`: training on a huge image encodes only the tiles that hold scribbles.

Axis convention: images ``(H, W[, 3|4])``, stacks ``(N, H, W[, 3|4])``, logits and probabilities
``(n_classes, H, W)``, labels and uncertainty ``(H, W)``.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..backbone.identity import backbone_family_of, backbone_fingerprint
from ..config import FeatureConfig
from ..errors import InputError
from ..features.cache import EncodingCache, fingerprint
from ..features.tiling import Tile
from ..files.atomic import check_not_an_input
from ..files.lazy import (
    ChannelRanges,
    IntensityRange,
    LazyPlane,
    ZarrOutput,
    channel_ranges,
    intensity_range,
    lazy_planes,
    open_lazy,
)
from ..progress import Progress, run_steps, within
from ..segmentation.compatibility import check_backbone, check_fitted, check_model_features
from ..segmentation.refine import RefineSettings, halo, refine_probabilities
from ..segmentation.segmenter import normalized_entropy, softmax_inplace

if TYPE_CHECKING:  # pragma: no cover
    from ..features.encoding import Encoding, Featurizer
    from ..segmentation.protocol import LinearModel
    from ..segmentation.segmenter import LinearSegmenter

#: Side of the square chunks of streamed Zarr outputs.
DEFAULT_CHUNK = 1024
#: What a streamed segmentation can write, and the dtype of each.
OUTPUT_KINDS = ("labels", "probabilities", "uncertainty")


# ---------------------------------------------------------------------------------------------- model identity
def model_digest(segmenter: LinearModel) -> str:
    """sha256 of what a trained model computes (weights, classes, hyper-parameters, feature settings).

    Independent of the file it was loaded from: outputs record it, so a complete output made by the same
    model is recognised (and skipped) on a rerun, on any machine.
    """
    check_fitted(segmenter)
    digest = hashlib.sha256()
    for array in (*segmenter.first_layer(), segmenter.classes_, *segmenter.head_arrays()):
        digest.update(np.ascontiguousarray(array).tobytes())
    config = segmenter.feature_config.feature_signature() if segmenter.feature_config else None
    digest.update(json.dumps([segmenter.get_params(), config], sort_keys=True).encode())
    return digest.hexdigest()


def _check_streamable(segmenter: LinearModel) -> None:
    check_fitted(segmenter)
    if segmenter.hybrid:
        raise InputError(
            "Hybrid models (classical filters) cannot segment images tile by tile yet; segment this image in memory "
            "or use a model trained without --hybrid."
        )
    if segmenter.majority_size > 1 or segmenter.min_object_size > 0:
        raise InputError(
            "This model cleans its predictions up (majority_size / min_object_size), which needs the whole label "
            "image; images segmented tile by tile need a model without clean-up."
        )


# ---------------------------------------------------------------------------------------------- tiles
class TileEncoder:
    """Encodes single tiles of a (lazy) image exactly as :meth:`Featurizer.encode` encodes them in the whole image.

    Parameters
    ----------
    featurizer : Featurizer
        Its config gives the tiles (``tile_size``, ``tile_overlap``) and the intensity scaling.
    plane : LazyPlane or array
        One image ``(H, W[, 3|4])``.
    scaling : IntensityRange, optional
        Scaling of the whole image (computed with :func:`~.lazy_io.intensity_range` if not given).
    cache : EncodingCache, optional
        Keeps the tiles' encodings (keyed by the tile's pixels, its place in the image and the config)
        and the plane's scaling, so that segmenting the same view again, or after retraining, encodes
        nothing twice.
    """

    def __init__(
        self,
        featurizer: Featurizer,
        plane: LazyPlane | np.ndarray,
        scaling: IntensityRange | ChannelRanges | None = None,
        *,
        cache: EncodingCache | None = None,
    ):
        from ..features.encoding import Featurizer

        self.featurizer = featurizer
        config = featurizer.config
        #: ``channel_mode="separate"``: tiles are encoded channel by channel with each channel's whole-image scaling.
        self.separate = config.channel_mode == "separate"
        self.plane = plane if isinstance(plane, LazyPlane) else LazyPlane(plane, any_channels=self.separate)
        patch = featurizer.patch_size
        if min(self.plane.height, self.plane.width) < patch:
            raise InputError(
                f"Image is {self.plane.height}x{self.plane.width} pixels, smaller than one {patch}-pixel patch of the "
                f"backbone. Upsample it to at least {patch}x{patch} first."
            )
        self.cache = cache
        if scaling is None:
            if cache is not None:
                scaling = cache.scaling(self.plane, config.normalize, separate=self.separate)
            elif self.separate:
                scaling = channel_ranges(self.plane, config.normalize)
            else:
                scaling = intensity_range(self.plane, config.normalize)
        self.scaling = scaling
        self.tiles = featurizer.plan_tiles(self.plane.height, self.plane.width)  # the in-memory encoder's tiles
        # One tile at a time, the whole tile, no second scaling: the tile featurizer shares the backbone.
        self._tile_featurizer = Featurizer(config.replace(tile_size=None), backbone=featurizer.backbone)

    @property
    def n_transforms(self) -> int:
        return self.featurizer.config.n_transforms

    def guide(self, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        """The refinement guide of the rectangle ``rows x cols``: its pixels scaled with the whole image's range.

        Equals :func:`~..segmentation.refine.guide_image` of the whole image in memory, cropped.
        """
        block = self.plane.read(slice(*rows), slice(*cols))
        if block.ndim == 3 and block.shape[-1] == 4 and not self.separate:
            block = block[..., :3]
        return self.scaling.apply(block)

    def iter_encode(self, tile: Tile, *, origin: tuple[int, int] = (0, 0)) -> Generator[Progress, None, Encoding]:
        """One tile's :class:`Encoding`: shape ``(tile.height, tile.width)`` with the whole image's blending weights.

        ``origin`` places the tile in a larger encoding (used by :func:`fit_lazy`): the returned
        encoding's only tile sits at ``(tile.top - origin[0], tile.left - origin[1])``.
        """
        block = self.plane.read(tile.rows, tile.cols)
        if block.ndim == 3 and block.shape[-1] == 4 and not self.separate:
            block = block[..., :3]
        key = None
        if self.cache is not None:
            # A tile's maps depend on its pixels, the scaling, its place in the image (blending weights) and the
            # config; ``origin`` only moves it, so one cached encoding serves every origin.
            place = (tile.top, tile.left, tile.height, tile.width, self.plane.height, self.plane.width)
            key = (f"tile:{fingerprint(block)}:{self.scaling!r}:{place}", self.featurizer.config)
            cached = self.cache.get(key)
            if cached is not None:
                return self._placed(cached, tile, origin)
        scaled = self.scaling.apply(block)
        encoding = yield from self._tile_featurizer.iter_encode(scaled, with_attention=False, prescaled=True)
        encoding.config = self.featurizer.config
        for block in getattr(encoding, "blocks", ()):
            block.config = self.featurizer.config
        placed = self._placed(encoding, tile, (0, 0) if key is not None else origin, in_place=True)
        if key is not None:
            self.cache.put(key, placed)
            return self._placed(placed, tile, origin)
        return placed

    def _placed(self, encoding: Encoding, tile: Tile, origin: tuple[int, int], *, in_place: bool = False) -> Encoding:
        """``encoding`` (one tile's maps) with its tile at ``(tile.top - origin[0], tile.left - origin[1])``.

        ``in_place`` sets the place and taps on ``encoding`` itself (a fresh encoding); otherwise a new
        encoding shares the maps, unless the tile already sits there. A channel encoding is placed block by block.
        """
        from ..features.channels import ChannelEncoding
        from ..features.encoding import Encoding, TileMaps, fused_taps

        if isinstance(encoding, ChannelEncoding):
            blocks = [self._placed(block, tile, origin, in_place=in_place) for block in encoding.blocks]
            if in_place:
                return encoding
            return ChannelEncoding(blocks, config=encoding.config, image=encoding.image)

        tile_maps = encoding.tiles[0]
        placed = Tile(
            tile.top - origin[0], tile.left - origin[1], tile.height, tile.width, tile.row_weights, tile.col_weights
        )
        if not in_place and (tile_maps.tile.top, tile_maps.tile.left) == (placed.top, placed.left):
            return encoding
        row_taps, col_taps = fused_taps(
            placed,
            encoding.transforms,
            tuple(tile_maps.maps.shape[2:]),
            patch_size=self.featurizer.patch_size,
            stride=self.featurizer.stride,
            resize=self.featurizer.config.resize,
        )
        if in_place:
            tile_maps.tile, tile_maps.row_taps, tile_maps.col_taps, tile_maps._plan = placed, row_taps, col_taps, None
            return encoding
        moved = Encoding(
            config=encoding.config,
            image_shape=encoding.image_shape,
            tiles=[TileMaps(placed, tile_maps.maps, tile_maps.attention, row_taps, col_taps)],
            transforms=encoding.transforms,
        )
        moved.backbone_fingerprint = encoding.backbone_fingerprint
        moved.backbone_family = encoding.backbone_family
        return moved


@dataclass
class _Rows:
    """Finished logits ``(n, rows, cols)`` of rows ``top..top+rows`` of a region."""

    top: int
    logits: np.ndarray


def _spans(tiles: Sequence[Tile], axis: int) -> list[tuple[int, int]]:
    starts = sorted({(t.top, t.height) if axis == 0 else (t.left, t.width) for t in tiles})
    return [(start, start + size) for start, size in starts]


def _iter_region_logits(
    encoder: TileEncoder,
    weight: np.ndarray,
    bias: np.ndarray,
    rows: tuple[int, int],
    cols: tuple[int, int],
    head: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Generator[Progress | _Rows, None, None]:
    """Logits of the rectangle ``rows x cols``, yielded as bands of finished rows (and Progress after every pass).

    Tiles are projected with the first linear map ``weight`` (n_out, C), ``bias`` (n_out,) and blended; ``head``
    turns a band of finished maps ``(n_out, rows, cols)`` into logits (None: the maps are the logits).
    Tiles are visited row-major like :meth:`Encoding.project`, and each pixel adds the same tile
    contributions in the same order, so the maps equal the in-memory ones bit for bit.
    """
    r0, r1 = rows
    c0, c1 = cols
    n_out = weight.shape[0]
    needed = [
        t for t in encoder.tiles if t.top < r1 and t.top + t.height > r0 and t.left < c1 and t.left + t.width > c0
    ]
    row_spans = _spans(needed, 0)
    total = len(needed) * encoder.n_transforms
    done = 0
    yield Progress(0, total, "segmenting")
    acc_top = r0
    acc = np.zeros((n_out, 0, c1 - c0), dtype=np.float32)
    bias32 = np.asarray(bias, dtype=np.float32)[:, None, None]
    for i, (top, stop) in enumerate(row_spans):
        grow = min(stop, r1) - (acc_top + acc.shape[1])
        if grow > 0:
            acc = np.concatenate([acc, np.zeros((n_out, grow, c1 - c0), dtype=np.float32)], axis=1)
        for tile in (t for t in needed if t.top == top):
            encoding = yield from within(
                encoder.iter_encode(tile), done, encoder.n_transforms, total=total, message="segmenting"
            )
            done += encoder.n_transforms
            contribution = encoding.project(weight)  # (n, tile.height, tile.width), blending weights included
            del encoding
            a, b = max(tile.top, r0), min(tile.top + tile.height, r1)
            left, right = max(tile.left, c0), min(tile.left + tile.width, c1)
            acc[:, a - acc_top : b - acc_top, left - c0 : right - c0] += contribution[
                :, a - tile.top : b - tile.top, left - tile.left : right - tile.left
            ]
        finished_until = min(row_spans[i + 1][0], r1) if i + 1 < len(row_spans) else r1
        n_finished = max(0, finished_until - acc_top)
        if n_finished:
            block = acc[:, :n_finished]
            block += bias32
            yield _Rows(acc_top, block if head is None else head(block))
            acc = acc[:, n_finished:].copy()
            acc_top += n_finished


def outputs_of_logits(segmenter: LinearModel, logits: np.ndarray, kinds: Sequence[str]) -> dict[str, np.ndarray]:
    """Labels, probabilities and/or uncertainty of logits ``(n, h, w)`` without refinement, as the segmenter does."""
    out: dict[str, np.ndarray] = {}
    if "labels" in kinds:
        out["labels"] = segmenter.labels_from_logits(logits)
    if "probabilities" in kinds or "uncertainty" in kinds:
        out.update(outputs_of_probabilities(segmenter, softmax_inplace(logits), [k for k in kinds if k != "labels"]))
    return out


def outputs_of_probabilities(
    segmenter: LinearModel, probabilities: np.ndarray, kinds: Sequence[str]
) -> dict[str, np.ndarray]:
    """Labels, probabilities and/or uncertainty of (refined) probabilities ``(n, h, w)``, as the segmenter does."""
    out: dict[str, np.ndarray] = {}
    if "labels" in kinds:
        out["labels"] = segmenter.labels_from_probabilities(probabilities)
    if "probabilities" in kinds:
        out["probabilities"] = probabilities
    if "uncertainty" in kinds:
        out["uncertainty"] = normalized_entropy(probabilities)
    return out


def _with_halo(span: tuple[int, int], size: int, context: int) -> tuple[int, int]:
    return max(0, span[0] - context), min(size, span[1] + context)


def refined_outputs_of_encoding(
    segmenter: LinearModel,
    encoding: Encoding,
    rows: tuple[int, int],
    cols: tuple[int, int],
    kinds: Sequence[str],
) -> dict[str, np.ndarray]:
    """The outputs of the rectangle ``rows x cols`` of a whole image's encoding, refined only there (plus halo).

    Equals ``segmenter.outputs(encoding, kinds)`` cropped to the rectangle (the *View* of a cached plane).
    """
    (r0, r1), (c0, c1) = rows, cols
    logits = segmenter.decision_function(encoding)
    settings: RefineSettings = segmenter.refine_settings
    if not settings.active:
        return outputs_of_logits(segmenter, np.ascontiguousarray(logits[:, r0:r1, c0:c1]), kinds)
    height, width = logits.shape[1:]
    context = halo(settings)
    (a, b), (c, d) = _with_halo((r0, r1), height, context), _with_halo((c0, c1), width, context)
    guide = segmenter.guide(encoding)[a:b, c:d]
    probabilities = softmax_inplace(np.ascontiguousarray(logits[:, a:b, c:d]))
    refined = refine_probabilities(probabilities, guide, settings)[:, r0 - a : r1 - a, c0 - c : c1 - c]
    return outputs_of_probabilities(segmenter, np.ascontiguousarray(refined), kinds)


def _iter_region_outputs(
    segmenter: LinearModel,
    encoder: TileEncoder,
    weights: tuple[np.ndarray, np.ndarray],
    rows: tuple[int, int],
    cols: tuple[int, int],
    kinds: Sequence[str],
) -> Generator[Progress | tuple[int, dict[str, np.ndarray]], None, None]:
    """The outputs of the rectangle ``rows x cols``, yielded as ``(top row, outputs)`` bands of finished rows.

    With refinement the logits are computed with :func:`halo` pixels of context, rows are refined once their
    context below is finished, and the context is cropped away (a buffer of the unfinished rows plus the halo).
    """
    weight, bias = weights
    settings: RefineSettings = segmenter.refine_settings
    if not settings.active:
        for item in _iter_region_logits(encoder, weight, bias, rows, cols, segmenter.head_logits):
            yield item if isinstance(item, Progress) else (item.top, outputs_of_logits(segmenter, item.logits, kinds))
        return
    context = halo(settings)
    (r0, r1), (c0, c1) = rows, cols
    (er0, er1), (ec0, ec1) = (
        _with_halo(rows, encoder.plane.height, context),
        _with_halo(cols, encoder.plane.width, context),
    )
    buffer, buffer_top, next_row = np.zeros((segmenter.n_classes, 0, ec1 - ec0), dtype=np.float32), er0, r0
    for item in _iter_region_logits(encoder, weight, bias, (er0, er1), (ec0, ec1), segmenter.head_logits):
        if isinstance(item, Progress):
            yield item
            continue
        buffer = np.concatenate([buffer, item.logits], axis=1)
        end = buffer_top + buffer.shape[1]
        stop = r1 if end == er1 else min(r1, end - context)
        if stop <= next_row:
            continue
        a, b = max(buffer_top, next_row - context), min(end, stop + context)
        probabilities = softmax_inplace(buffer[:, a - buffer_top : b - buffer_top].copy())
        refined = refine_probabilities(probabilities, encoder.guide((a, b), (ec0, ec1)), settings)
        block = np.ascontiguousarray(refined[:, next_row - a : stop - a, c0 - ec0 : c1 - ec0])
        yield next_row, outputs_of_probabilities(segmenter, block, kinds)
        next_row = stop
        keep = max(buffer_top, next_row - context)
        buffer, buffer_top = buffer[:, keep - buffer_top :].copy(), keep


def _check_kinds(kinds: Sequence[str]) -> tuple[str, ...]:
    kinds = tuple(kinds)
    unknown = [k for k in kinds if k not in OUTPUT_KINDS]
    if unknown or not kinds:
        raise InputError(f"outputs must be some of {OUTPUT_KINDS}, got {kinds}.")
    return kinds


def _featurizer_for(segmenter: LinearModel, featurizer: Featurizer | FeatureConfig | None) -> Featurizer:
    from ..features.encoding import Featurizer

    if featurizer is None:
        return segmenter.featurizer()
    if isinstance(featurizer, FeatureConfig):
        featurizer = Featurizer(featurizer)
    check_model_features(segmenter, featurizer.config)
    return featurizer


def _weights(segmenter: LinearModel, featurizer: Featurizer) -> tuple[np.ndarray, np.ndarray]:
    """The model's first linear map (weight, bias), after checking that ``featurizer``'s backbone fits it."""
    check_backbone(segmenter, featurizer.backbone)  # family, width and weights the model was trained on
    return segmenter.first_layer()


# ---------------------------------------------------------------------------------------------- regions
def iter_segment_region(
    segmenter: LinearModel,
    image: Any,
    rows: tuple[int, int] | None = None,
    cols: tuple[int, int] | None = None,
    *,
    featurizer: Featurizer | FeatureConfig | None = None,
    outputs: Sequence[str] = ("labels",),
    scaling: IntensityRange | ChannelRanges | None = None,
    cache: EncodingCache | None = None,
) -> Generator[Progress, None, dict[str, np.ndarray]]:
    """Segment the rectangle ``rows x cols`` of a (lazy) image: only the tiles touching it are encoded.

    The result equals the prediction of the whole image cropped to the rectangle (same tiles, same
    weights, same intensity scaling of the whole image).

    Parameters
    ----------
    image : (H, W[, 3|4]) array-like or LazyPlane
        numpy, dask or zarr array (a napari layer's data), or a plane from :func:`~.lazy_io.lazy_planes`.
    rows, cols : (start, stop) or None
        The rectangle (default the whole image), clipped to the image.
    outputs : some of ``"labels"``, ``"probabilities"``, ``"uncertainty"``
    scaling : IntensityRange, optional
        The whole image's intensity scaling; pass it when segmenting many regions of one image
        (it reads the whole image once).
    cache : EncodingCache, optional
        Reuses the tiles already encoded (and the scaling) for this image and config (see :class:`TileEncoder`).

    Returns
    -------
    dict: ``labels`` (h, w) uint8/uint16, ``probabilities`` (n_classes, h, w) float32, ``uncertainty`` (h, w) float32.
    """
    kinds = _check_kinds(outputs)
    _check_streamable(segmenter)
    featurizer = _featurizer_for(segmenter, featurizer)
    weights = _weights(segmenter, featurizer)
    separate = featurizer.config.channel_mode == "separate"
    plane = image if isinstance(image, LazyPlane) else LazyPlane(open_lazy(image), any_channels=separate)
    height, width = plane.height, plane.width
    r0, r1 = (0, height) if rows is None else (max(0, int(rows[0])), min(height, int(rows[1])))
    c0, c1 = (0, width) if cols is None else (max(0, int(cols[0])), min(width, int(cols[1])))
    if r1 <= r0 or c1 <= c0:
        raise InputError(f"The region rows {rows}, cols {cols} lies outside the {height}x{width} image.")
    encoder = TileEncoder(featurizer, plane, scaling, cache=cache)
    result: dict[str, np.ndarray] = {}
    for item in _iter_region_outputs(segmenter, encoder, weights, (r0, r1), (c0, c1), kinds):
        if isinstance(item, Progress):
            yield item
            continue
        top, values_of = item
        for kind, values in values_of.items():
            if kind not in result:
                shape = (*values.shape[:-2], r1 - r0, c1 - c0)
                result[kind] = np.zeros(shape, dtype=values.dtype)
            result[kind][..., top - r0 : top - r0 + values.shape[-2], :] = values
    return result


def segment_region(
    segmenter: LinearModel,
    image: Any,
    rows: tuple[int, int] | None = None,
    cols: tuple[int, int] | None = None,
    *,
    progress: Callable[[Progress], None] | None = None,
    cancel: threading.Event | None = None,
    **options: Any,
) -> dict[str, np.ndarray]:
    """:func:`iter_segment_region` run to the end (``progress`` callback, ``cancel`` event)."""
    return run_steps(iter_segment_region(segmenter, image, rows, cols, **options), progress=progress, cancel=cancel)


# ---------------------------------------------------------------------------------------------- streamed outputs
@dataclass
class StreamJob:
    """A streamed segmentation of one image or stack into Zarr outputs, resumable and splittable into row bands.

    Create it with :meth:`create`; :meth:`open` makes (or resumes) the ``.partial`` outputs,
    :meth:`iter_band` computes and writes the chunk rows of one plane that are not written yet (several
    bands can run in different processes at once: they write different chunks), :meth:`finish`
    renames the outputs into place.
    """

    source: Any  # path or array-like
    outputs: dict[str, Path]  # kind -> final path (``.zarr``)
    shape: tuple[int, ...]  # (N, H, W)
    single: bool
    n_classes: int
    label_dtype: str
    job: dict[str, Any]
    chunk: int = DEFAULT_CHUNK
    channels: tuple[int, ...] | None = None  # the input's channels used (``io.read_image(channels=)``)
    _zarr: dict[str, ZarrOutput] = field(default_factory=dict, repr=False)

    @classmethod
    def create(
        cls,
        segmenter: LinearModel,
        source: Any,
        outputs: dict[str, str | Path],
        *,
        config: FeatureConfig,
        chunk: int = DEFAULT_CHUNK,
        source_id: str | None = None,
        channels: Any = None,
    ) -> StreamJob:
        """Describe the job (reads only the input's shape).

        ``config`` is the runtime feature config (the model's feature settings with the tiling used);
        ``source_id`` names the input in the job description (default: its resolved path); ``channels``
        chooses the input's channels as :func:`~.io.read_image` does (recorded in the job: a partial output
        made from other channels is not resumed).
        """
        from ..files.images import parse_channels

        _check_streamable(segmenter)
        kinds = _check_kinds(tuple(outputs))
        channels = parse_channels(channels, at_most=None)
        planes, stack = lazy_planes(source, channels, separate=config.channel_mode == "separate")
        height, width = planes[0].height, planes[0].width
        if source_id is None:
            source_id = str(Path(source).resolve()) if isinstance(source, (str, Path)) else "array"
        label_dtype = "uint8" if segmenter.classes_.max() <= np.iinfo(np.uint8).max else "uint16"
        job = {
            "model_sha256": model_digest(segmenter),
            "source": source_id,
            "source_shape": [len(planes), height, width],
            "config": config.to_dict(),
            "classes": [int(c) for c in segmenter.classes_],
        }
        if channels is not None:
            job["channels"] = list(channels)
        paths = {kind: Path(outputs[kind]) for kind in kinds}
        for kind, path in paths.items():
            if path.suffix.lower() != ".zarr":
                raise InputError(f"Streamed {kind} are written as Zarr: '{path.name}' must end with .zarr.")
            if isinstance(source, (str, Path)):  # never written over (or into) the input, overwrite or not
                check_not_an_input(path, [source], option=f"The {kind} output")
        shape = (len(planes), height, width)
        return cls(source, paths, shape, not stack, segmenter.n_classes, label_dtype, job, chunk, channels)

    def _output(self, kind: str) -> ZarrOutput:
        if kind not in self._zarr:
            n, height, width = self.shape
            if kind == "probabilities":
                shape, dtype, channels = (n, self.n_classes, height, width), "float32", True
            else:
                shape, dtype, channels = (n, height, width), self.label_dtype if kind == "labels" else "float32", False
            self._zarr[kind] = ZarrOutput(
                self.outputs[kind], shape, dtype, chunks=self.chunk, job={**self.job, "kind": kind},
                single=self.single, channel_axis=channels,
            )  # fmt: skip
        return self._zarr[kind]

    def open(self, *, create: bool = True) -> StreamJob:
        """Create the ``.partial`` outputs, or resume them if they belong to this job."""
        for kind in self.outputs:
            self._output(kind).open(create=create)
        return self

    @property
    def n_chunk_rows(self) -> int:
        return -(-self.shape[1] // self.chunk)

    def missing_rows(self, plane: int) -> list[int]:
        """Chunk rows of ``plane`` not written in every output."""
        done = set.intersection(*(self._output(kind).done_rows(plane) for kind in self.outputs))
        return [r for r in range(self.n_chunk_rows) if r not in done]

    def bands(self, rows_per_band: int) -> list[tuple[int, int, int]]:
        """``(plane, first chunk row, end chunk row)`` bands covering everything, ``rows_per_band`` chunk rows each."""
        return [
            (p, start, min(start + rows_per_band, self.n_chunk_rows))
            for p in range(self.shape[0])
            for start in range(0, self.n_chunk_rows, rows_per_band)
        ]

    def iter_band(
        self,
        segmenter: LinearModel,
        featurizer: Featurizer,
        plane_index: int = 0,
        chunk_rows: tuple[int, int] | None = None,
        *,
        scaling: IntensityRange | ChannelRanges | None = None,
    ) -> Generator[Progress, None, int]:
        """Compute and write the missing chunk rows in ``chunk_rows`` (default all) of one plane.

        Returns the number of chunk rows written. Each chunk row is recorded once its data is written,
        so an interrupted band resumes after its last finished chunk row.
        """
        first, end = chunk_rows if chunk_rows is not None else (0, self.n_chunk_rows)
        missing = [r for r in self.missing_rows(plane_index) if first <= r < end]
        if not missing:
            return 0
        weights = _weights(segmenter, featurizer)
        planes, _ = lazy_planes(self.source, self.channels, separate=featurizer.config.channel_mode == "separate")
        plane = planes[plane_index]
        encoder = TileEncoder(featurizer, plane, scaling)
        height = self.shape[1]
        # Contiguous runs of missing chunk rows, each streamed on its own.
        runs: list[list[int]] = []
        for r in missing:
            if runs and runs[-1][-1] == r - 1:
                runs[-1].append(r)
            else:
                runs.append([r])
        written = 0
        kinds = tuple(self.outputs)
        for run in runs:
            top, stop = run[0] * self.chunk, min((run[-1] + 1) * self.chunk, height)
            pending: dict[str, list[np.ndarray]] = {kind: [] for kind in kinds}
            pending_top = top
            for item in _iter_region_outputs(segmenter, encoder, weights, (top, stop), (0, self.shape[2]), kinds):
                if isinstance(item, Progress):
                    yield item
                    continue
                for kind, values in item[1].items():
                    pending[kind].append(values)
                n_pending = sum(v.shape[-2] for v in pending[kinds[0]])
                end_row = pending_top + n_pending
                complete = end_row if end_row == stop else pending_top + (n_pending // self.chunk) * self.chunk
                if complete > pending_top:
                    for kind in kinds:
                        block = np.concatenate(pending[kind], axis=-2)
                        self._output(kind).write_rows(plane_index, pending_top, block[..., : complete - pending_top, :])
                        rest = block[..., complete - pending_top :, :]
                        pending[kind] = [rest] if rest.shape[-2] else []
                    written += (complete - pending_top + self.chunk - 1) // self.chunk
                    pending_top = complete
        return written

    def complete(self) -> bool:
        return all(not self.missing_rows(p) for p in range(self.shape[0]))

    def finish(self) -> dict[str, Path]:
        """Mark every output complete and rename it into place; returns kind -> final path."""
        if not self.complete():
            raise InputError("Some chunks are not written yet; run the missing bands first.")
        return {kind: self._output(kind).finish() for kind in self.outputs}


def iter_stream_segment(
    segmenter: LinearModel,
    source: Any,
    outputs: dict[str, str | Path],
    *,
    featurizer: Featurizer | FeatureConfig | None = None,
    chunk: int = DEFAULT_CHUNK,
    source_id: str | None = None,
    channels: Any = None,
) -> Generator[Progress, None, dict[str, Path]]:
    """Segment an image or stack larger than memory into Zarr outputs, tile by tile.

    Parameters
    ----------
    source : path (``.zarr``, ``.tif``, ``.npy``) or array-like ``(H, W[, C])`` / ``(N, H, W[, C])``
    outputs : dict kind -> path ending in ``.zarr``
        Kinds ``"labels"`` (uint8/uint16 class values), ``"probabilities"`` (``(n_classes, H, W)`` float32 per
        plane), ``"uncertainty"`` (float32 normalised entropy). Written as ``<path>.partial`` and renamed
        when complete; an existing output is replaced.
    chunk : int
        Chunk side of the outputs; also the unit of resumption.
    channels : int, "0,2", sequence or None
        The input's channels to use, as :func:`~.io.read_image` chooses them (one grey, two red and green,
        three RGB); the result equals the in-memory one of ``read_image(path, channels=...)``.

    Yields Progress after every forward pass (stop iterating or set ``cancel`` with :func:`stream_segment`
    to stop: the ``.partial`` outputs stay and the next run with the same model, input and settings
    resumes after the last finished chunk row).

    Returns
    -------
    dict kind -> final path.
    """
    featurizer = _featurizer_for(segmenter, featurizer)
    job = StreamJob.create(
        segmenter, source, outputs, config=featurizer.config, chunk=chunk, source_id=source_id, channels=channels
    )
    job.open()
    n_planes = job.shape[0]
    for p in range(n_planes):
        yield from within(job.iter_band(segmenter, featurizer, p), p, 1.0, total=n_planes)
    return job.finish()


def stream_segment(
    segmenter: LinearModel,
    source: Any,
    outputs: dict[str, str | Path],
    *,
    progress: Callable[[Progress], None] | None = None,
    cancel: threading.Event | None = None,
    **options: Any,
) -> dict[str, Path]:
    """:func:`iter_stream_segment` run to the end (``progress`` callback, ``cancel`` event)."""
    return run_steps(iter_stream_segment(segmenter, source, outputs, **options), progress=progress, cancel=cancel)


# ---------------------------------------------------------------------------------------------- training
def _tile_clusters(tiles: Sequence[Tile]) -> list[list[Tile]]:
    """Groups of overlapping tiles (connected components of the overlap graph)."""
    remaining = list(tiles)
    clusters = []
    while remaining:
        cluster = [remaining.pop(0)]
        grew = True
        while grew:
            grew = False
            for t in list(remaining):
                if any(
                    t.top < c.top + c.height and c.top < t.top + t.height and t.left < c.left + c.width
                    and c.left < t.left + t.width
                    for c in cluster
                ):  # fmt: skip
                    cluster.append(t)
                    remaining.remove(t)
                    grew = True
        clusters.append(cluster)
    return clusters


def iter_encode_labelled(
    featurizer: Featurizer, image: Any, labels: Any, *, cache: EncodingCache | None = None
) -> Generator[Progress, None, tuple[list[Encoding], list[np.ndarray]]]:
    """Encodings of only the tiles of a (huge) image that hold labels, with the label crops to train on.

    A labelled pixel gets its exact features from every tile that covers it, so all those tiles are
    encoded; overlapping tiles are grouped, and each group gives one encoding of its bounding box (with
    only its own tiles) and the labels cropped to it. ``LinearSegmenter.fit(encodings, crops)`` then trains
    on exactly the features of the in-memory path. ``cache`` reuses tiles encoded before (see :class:`TileEncoder`).
    """
    from ..features.channels import ChannelEncoding
    from ..features.encoding import Encoding

    separate = featurizer.config.channel_mode == "separate"
    plane = image if isinstance(image, LazyPlane) else LazyPlane(open_lazy(image), any_channels=separate)
    labels_array = open_lazy(labels) if isinstance(labels, (str, Path)) else labels
    if tuple(labels_array.shape) != (plane.height, plane.width):
        raise InputError(
            f"The labels have shape {tuple(labels_array.shape)} but the image is {(plane.height, plane.width)}."
        )
    encoder = TileEncoder(featurizer, plane, cache=cache)
    labelled = [t for t in encoder.tiles if np.asarray(labels_array[t.rows, t.cols]).any()]
    if not labelled:
        raise InputError("No pixels are labelled: paint a few strokes of at least two classes (0 = unlabelled).")
    clusters = _tile_clusters(labelled)
    total = len(labelled) * encoder.n_transforms
    done = 0
    encodings, crops = [], []
    for cluster in clusters:
        top = min(t.top for t in cluster)
        left = min(t.left for t in cluster)
        bottom = max(t.top + t.height for t in cluster)
        right = max(t.left + t.width for t in cluster)
        tile_maps: list[list[Any]] = []  # per tile, its maps (one per channel when channels are separate)
        for tile in sorted(cluster, key=lambda t: (t.top, t.left)):
            steps = encoder.iter_encode(tile, origin=(top, left))
            encoding = yield from within(
                steps, done, encoder.n_transforms, total=total, message="encoding labelled tiles"
            )
            tile_maps.append([block.tiles[0] for block in getattr(encoding, "blocks", [encoding])])
            done += encoder.n_transforms
        blocks = []
        for c in range(len(tile_maps[0])):
            block = Encoding(
                config=featurizer.config,
                image_shape=(bottom - top, right - left),
                tiles=[maps[c] for maps in tile_maps],
                transforms=featurizer.config.transforms,
            )
            block.backbone_fingerprint = backbone_fingerprint(featurizer.backbone.model)
            block.backbone_family = backbone_family_of(featurizer.backbone)
            blocks.append(block)
        encodings.append(ChannelEncoding(blocks, config=featurizer.config) if encoder.separate else blocks[0])
        crops.append(np.asarray(labels_array[top:bottom, left:right]))
    return encodings, crops


def fit_lazy(
    segmenter: LinearSegmenter,
    image: Any,
    labels: Any,
    config: FeatureConfig | Featurizer,
    *,
    progress: Callable[[Progress], None] | None = None,
    cancel: threading.Event | None = None,
) -> LinearSegmenter:
    """Train on a huge image ``(H, W[, C])`` and its labels ``(H, W)``, encoding only the tiles that hold labels."""
    from ..features.encoding import Featurizer

    if segmenter.hybrid:
        raise InputError("Hybrid models need the whole image in memory; train them with LinearSegmenter.fit.")
    featurizer = Featurizer(config) if isinstance(config, FeatureConfig) else config
    encodings, crops = run_steps(iter_encode_labelled(featurizer, image, labels), progress=progress, cancel=cancel)
    return segmenter.fit(encodings, crops)


# ---------------------------------------------------------------------------------------------- files
#: Planes with more pixels than this are segmented tile by tile (streamed) by ``segment_files``; smaller
#: ones in memory. 2**25 pixels (about 5800 x 5800) keep the in-memory path under ~3.5 GB.
STREAM_PIXELS = 1 << 25


def plane_shape(path: str | Path, channels: Any = None, *, separate: bool = False) -> tuple[int, tuple[int, int]]:
    """(number of planes, (H, W)) of an image file or Zarr input (with ``channels`` chosen), from its metadata only."""
    planes, _ = lazy_planes(path, channels, separate=separate)
    return len(planes), (planes[0].height, planes[0].width)


@dataclass
class StreamedFile:
    """Where a streamed segmentation of one input file goes.

    ``finals`` maps each output kind to its final file: ``.zarr`` outputs are the streamed Zarr images
    themselves; ``.tif`` outputs are written as tiled BigTIFFs from a hidden intermediate Zarr
    (``.<name>.zarr``, removed afterwards).
    """

    source: Path
    finals: dict[str, Path]
    channels: tuple[int, ...] | None = None  # the input's channels used (``io.read_image(channels=)``)

    @property
    def zarr_outputs(self) -> dict[str, Path]:
        return {
            kind: final if final.suffix == ".zarr" else final.with_name(f".{final.name}.zarr")
            for kind, final in self.finals.items()
        }

    def iter_run(
        self, segmenter: LinearModel, featurizer: Featurizer, *, chunk: int = DEFAULT_CHUNK
    ) -> Generator[Progress, None, dict[str, Path]]:
        """Stream the segmentation (resuming a partial one) and write the final files; returns kind -> path."""
        job = self.job(segmenter, featurizer.config, chunk=chunk)
        if not self.intermediate_done(job):
            job.open()
            n_planes = job.shape[0]
            for p in range(n_planes):
                yield from within(job.iter_band(segmenter, featurizer, p), p, 1.0, total=n_planes)
            job.finish()
        return self.convert()

    def job(self, segmenter: LinearModel, config: FeatureConfig, *, chunk: int = DEFAULT_CHUNK) -> StreamJob:
        return StreamJob.create(
            segmenter, self.source, self.zarr_outputs, config=config, chunk=chunk, channels=self.channels
        )

    def intermediate_done(self, job: StreamJob) -> bool:
        """True when the hidden intermediate Zarr images of TIFF outputs are complete (only the copy is left)."""
        from ..files.lazy import zarr_output_info

        hidden = {k: p for k, p in self.zarr_outputs.items() if p != self.finals[k]}
        if not hidden or len(hidden) != len(self.finals):
            return False
        for kind, path in hidden.items():
            info = zarr_output_info(path)
            if info is None or {k: v for k, v in info.items() if k != "complete"} != {**job.job, "kind": kind}:
                return False
        return True

    def convert(self) -> dict[str, Path]:
        """Copy finished intermediate Zarr images to their tiled TIFF outputs (atomically) and remove them."""
        import zarr

        from ..files.lazy import remove_tree, write_tiled_tiff

        for kind, final in self.finals.items():
            zarr_path = self.zarr_outputs[kind]
            if zarr_path != final:
                write_tiled_tiff(final, zarr.open_group(str(zarr_path), mode="r")["0"])
                remove_tree(zarr_path)
        return dict(self.finals)


def streamed_file(
    source: str | Path, labels_path: Path, uncertainty_path: Path | None = None, channels: Any = None
) -> StreamedFile:
    """A :class:`StreamedFile` writing labels (and uncertainty) to the given ``.zarr`` or ``.tif`` paths.

    ``channels``: the input's channels to use, as :func:`~.io.read_image` chooses them.
    """
    from ..files.images import parse_channels

    finals = {"labels": Path(labels_path)}
    if uncertainty_path is not None:
        finals["uncertainty"] = Path(uncertainty_path)
    for kind, path in finals.items():
        if path.suffix.lower() not in (".zarr", ".tif", ".tiff"):
            raise InputError(
                f"'{Path(source).name}' is segmented tile by tile, so its {kind} are written as .zarr or tiled .tif, "
                f"not '{path.suffix}': use --format zarr or tif."
            )
    return StreamedFile(Path(source), finals, parse_channels(channels, at_most=None))
