"""Core results -> napari layers: names, geometry (scale/translate), metadata tags, in-place updates. No Qt.

Axis conventions (one place): an image layer is a single plane ``(H, W[, 3|4])`` or a stack
``(N, H, W[, 3|4])``. Results keep that layout; maps with several channels (attention heads,
features) put the channel axis first, ``(C, H, W)`` or ``(C, N, H, W)``, so the plane axis of a stack
stays aligned with the image's plane axis in the viewer; class probabilities are one layer per class,
laid out like the image, so they add no slider to the viewer. Every result layer
copies the source layer's ``scale`` and ``translate`` (a leading channel axis gets scale 1,
translate 0) and carries ``metadata["napari_hrdv2"] = {"kind": ..., "source": <image name>, ...}``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .core.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import napari

    from .core.features.encoding import Encoding

#: Key of the metadata entry that marks a layer as made by this plugin.
PLUGIN_KEY = "napari_hrdv2"

LayerData = tuple[Any, dict[str, Any], str]

#: Result kinds and the suffix of their layer names ("<image> PCA"...).
KINDS = ("PCA", "attention", "features", "similarity", "segmentation", "probabilities", "uncertainty")


#: Bottom-to-top order of a source image's result layers: hidden helpers low, the PCA view above them and the
#: segmentation on top (user layers such as scribbles stay above whatever was added after them).
STACKING = ("attention", "features", "probabilities", "uncertainty", "similarity", "PCA", "segmentation")


def _stacking_rank(kind: Any) -> int:
    return STACKING.index(kind) if kind in STACKING else len(STACKING)


def result_name(source_name: str, kind: str) -> str:
    """Name of the result layer of ``kind`` for the image layer ``source_name``, e.g. ``"cells PCA"``."""
    if kind not in KINDS:
        raise ValueError(f"Unknown result kind {kind!r}; known: {KINDS}")
    return f"{source_name} {kind}"


def plugin_tag(layer: Any) -> dict[str, Any] | None:
    """The plugin's metadata entry of a layer, or None for layers the plugin did not make."""
    tag = getattr(layer, "metadata", {}).get(PLUGIN_KEY)
    return tag if isinstance(tag, dict) else None


@dataclass(frozen=True)
class SourceGeometry:
    """Shape and placement of an image layer, as far as result layers need them.

    ``n_planes`` is None for a single plane and N for a stack ``(N, H, W[, C])``.
    """

    name: str
    plane_shape: tuple[int, int]
    n_planes: int | None
    scale: tuple[float, ...]
    translate: tuple[float, ...]

    #: Shapes of a multiscale (pyramid) image's levels, full resolution first; None for plain images.
    level_shapes: tuple[tuple[int, ...], ...] | None = None

    @classmethod
    def from_layer(cls, layer: Any, *, multiscale_ok: bool = False) -> SourceGeometry:
        """Geometry of a napari Image layer; 2D planes and stacks of them only.

        Multiscale (pyramid) layers are refused unless ``multiscale_ok`` (only "Predict current view" reads
        them, at full resolution); their shape is the full-resolution level's.
        """
        multiscale = bool(getattr(layer, "multiscale", False))
        if multiscale and not multiscale_ok:
            raise InputError(
                f"'{layer.name}' is a multiscale (pyramid) image: the Segmentation dock's 'View' segments the part "
                "shown; for anything else open the full-resolution level as a normal image layer (e.g. "
                "viewer.add_image(layer.data[0])) and compute on that."
            )
        spatial = tuple(int(s) for s in layer.data.shape[: layer.ndim])
        if len(spatial) not in (2, 3):
            raise InputError(
                f"'{layer.name}' has {len(spatial)} spatial axes {spatial}; HR-Dv2 works on 2D images and stacks "
                "of 2D planes (N, H, W). Split or project the extra axes first (e.g. one layer per time point)."
            )
        levels = tuple(tuple(int(s) for s in level.shape[: layer.ndim]) for level in layer.data) if multiscale else None
        return cls(
            name=str(layer.name),
            plane_shape=(spatial[-2], spatial[-1]),
            n_planes=spatial[0] if len(spatial) == 3 else None,
            scale=tuple(float(s) for s in layer.scale),
            translate=tuple(float(t) for t in layer.translate),
            level_shapes=levels,
        )

    @property
    def is_stack(self) -> bool:
        return self.n_planes is not None

    @property
    def planes_shape(self) -> tuple[int, ...]:
        """(H, W) for a single plane, (N, H, W) for a stack: the shape of a label image for this source."""
        return self.plane_shape if self.n_planes is None else (self.n_planes, *self.plane_shape)

    @property
    def plane_indices(self) -> list[int]:
        return list(range(self.n_planes or 1))

    def placement(self, *, channel_axis: bool = False) -> dict[str, tuple[float, ...]]:
        """``scale`` and ``translate`` keyword arguments for a result layer."""
        if channel_axis:
            return {"scale": (1.0, *self.scale), "translate": (0.0, *self.translate)}
        return {"scale": self.scale, "translate": self.translate}


class StackedChannels:
    """Several image layers' data ``(…, H, W)`` read as one multichannel array ``(…, H, W, C)``, lazily.

    Only what is indexed is read, from every layer, and stacked on a last channel axis (for lazily read
    dask / Zarr layers; numpy layers are stacked at once by :func:`image_data`).
    """

    def __init__(self, arrays: list[Any]):
        self.arrays = arrays
        self.shape = (*(int(s) for s in arrays[0].shape), len(arrays))
        self.dtype = np.result_type(*(np.dtype(a.dtype) for a in arrays))
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> np.ndarray:
        index = index if isinstance(index, tuple) else (index,)
        if len(index) >= self.ndim:  # an index on the channel axis
            parts = [np.asarray(a[index[:-1]], dtype=self.dtype) for a in self.arrays]
            return np.stack(parts, axis=-1)[..., index[-1]]
        return np.stack([np.asarray(a[index], dtype=self.dtype) for a in self.arrays], axis=-1)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        data = self[(slice(None),) * (self.ndim - 1)]
        return data if dtype is None else data.astype(dtype)


def channel_layers(viewer: napari.Viewer, layer: Any) -> list[Any]:
    """The image layers read as the channels of ``layer`` when channels are encoded separately.

    ``layer`` and every other *visible* Image layer of the same shape, scale and translate that is
    neither RGB nor made by this plugin, in layer-list order (bottom to top): the layers napari makes of a
    multichannel image opened with ``channel_axis`` (one per channel) are read together, channel 0 first.
    Hide a layer to leave its channel out.
    """
    from napari.layers import Image

    def fits(other: Any) -> bool:
        return (
            isinstance(other, Image)
            and (other is layer or bool(other.visible))
            and not getattr(other, "rgb", False)
            and not getattr(other, "multiscale", False)
            and plugin_tag(other) is None
            and tuple(other.data.shape) == tuple(layer.data.shape)
            and tuple(other.scale) == tuple(layer.scale)
            and tuple(other.translate) == tuple(layer.translate)
        )

    if getattr(layer, "rgb", False) or getattr(layer, "multiscale", False):
        return [layer]
    return [other for other in viewer.layers if fits(other)]


def image_data(viewer: napari.Viewer, layer: Any, channel_mode: str) -> tuple[Any, list[str]]:
    """The pixels to encode for ``layer`` and the names of the layers they come from.

    ``channel_mode="joint"``: the layer's own data. ``"separate"``: the data of :func:`channel_layers` stacked
    on a last channel axis, ``(H, W, C)`` or ``(N, H, W, C)`` (numpy layers at once, others lazily with
    :class:`StackedChannels`); a single channel layer is used as it is.
    """
    if channel_mode != "separate":
        return layer.data, [str(layer.name)]
    layers = channel_layers(viewer, layer)
    names = [str(other.name) for other in layers]
    if len(layers) == 1:
        return layer.data, names
    arrays = [other.data for other in layers]
    if all(isinstance(array, np.ndarray) for array in arrays):
        return np.stack(arrays, axis=-1), names
    return StackedChannels(arrays), names


def plane_of(layer: Any, index: int) -> np.ndarray:
    """Plane ``index`` of an image layer as a numpy array (a single-plane layer has only plane 0)."""
    geometry = SourceGeometry.from_layer(layer)
    if geometry.n_planes is None:
        if index != 0:
            raise InputError(f"'{layer.name}' is a single plane; plane {index} does not exist.")
        return np.asarray(layer.data)
    if not 0 <= index < geometry.n_planes:
        raise InputError(f"'{layer.name}' has {geometry.n_planes} planes; plane {index} does not exist.")
    return np.asarray(layer.data[index])


def current_plane(viewer: napari.Viewer, layer: Any) -> int:
    """Index of the plane of ``layer`` shown at the viewer's current dims position (0 for single planes)."""
    geometry = SourceGeometry.from_layer(layer)
    if geometry.n_planes is None:
        return 0
    data_position = layer.world_to_data(viewer.dims.point)
    return int(np.clip(round(float(data_position[0])), 0, geometry.n_planes - 1))


def assemble_planes(
    geometry: SourceGeometry,
    planes: Mapping[int, np.ndarray],
    *,
    dtype: np.dtype | type,
    base: np.ndarray | None = None,
    channel_axis: bool = False,
) -> np.ndarray:
    """Write per-plane results into one array laid out like the source.

    Plane results are ``(H, W[, 3])`` or, with ``channel_axis``, ``(C, H, W)``. For a stack the
    output is ``(N, H, W[, 3])`` / ``(C, N, H, W)``; planes not in ``planes`` keep the values of
    ``base`` (the current layer data, when its shape and dtype fit) or zeros.
    """
    if not planes:
        raise ValueError("No plane results to assemble.")
    if geometry.n_planes is None:
        return np.asarray(next(iter(planes.values())), dtype=dtype)
    sample = np.asarray(next(iter(planes.values())))
    if channel_axis:
        shape = (sample.shape[0], geometry.n_planes, *sample.shape[1:])
    else:
        shape = (geometry.n_planes, *sample.shape)
    if base is not None and isinstance(base, np.ndarray) and base.shape == shape and base.dtype == np.dtype(dtype):
        out = base.copy()
    else:
        out = np.zeros(shape, dtype=dtype)
    for index, plane in planes.items():
        if channel_axis:
            out[:, index] = plane
        else:
            out[index] = plane
    return out


def _metadata(kind: str, geometry: SourceGeometry, **extra: Any) -> dict[str, Any]:
    return result_metadata(kind, geometry.name, **extra)


def result_metadata(kind: str, source: str, **extra: Any) -> dict[str, Any]:
    """The ``metadata`` of a layer the plugin makes from the image layer ``source`` (the one tag format)."""
    return {PLUGIN_KEY: {"kind": kind, "source": str(source), **extra}}


def pca_layer_data(
    geometry: SourceGeometry, rgb: np.ndarray, *, config: dict[str, Any] | None = None, partial: bool = False
) -> LayerData:
    """RGB image layer ``"<image> PCA"``: (H, W, 3) or (N, H, W, 3) float32 in [0, 1].

    ``partial`` marks a first view from a progressive run (refined by later updates).
    """
    return (
        np.clip(np.asarray(rgb, dtype=np.float32), 0.0, 1.0),
        {
            "name": result_name(geometry.name, "PCA"),
            "rgb": True,
            "contrast_limits": (0.0, 1.0),
            "metadata": _metadata("PCA", geometry, config=config, partial=bool(partial)),
            **geometry.placement(),
        },
        "image",
    )


def attention_layer_data(
    geometry: SourceGeometry, attention: np.ndarray, *, head: int = 0, config: dict[str, Any] | None = None
) -> LayerData:
    """Image layer ``"<image> attention"``: one map of ``attention`` (0 = mean over heads, i = head i).

    ``attention`` is (1 + heads, H, W) or (1 + heads, N, H, W) (see :func:`with_mean_head`); the layer
    holds ``attention[head]``, (H, W) or (N, H, W), so heads never become a dims slider (the dock's
    head box switches them).
    """
    maps = np.asarray(attention, dtype=np.float32)
    head = min(max(int(head), 0), maps.shape[0] - 1)
    data = maps[head]
    high = float(np.percentile(data, 99.5)) if data.size else 1.0
    low = float(data.min()) if data.size else 0.0
    channel_names = ["mean"] + [f"head {i}" for i in range(1, maps.shape[0])]
    return (
        data,
        {
            "name": result_name(geometry.name, "attention"),
            "colormap": "inferno",
            "contrast_limits": (low, high if high > low else low + 1e-6),
            "visible": False,  # below and hidden: the PCA view is the first thing to look at
            "metadata": _metadata("attention", geometry, channels=channel_names, head=head, config=config),
            **geometry.placement(),
        },
        "image",
    )


def with_mean_head(attention: np.ndarray) -> np.ndarray:
    """(heads, H, W) -> (1 + heads, H, W) with the mean over heads first."""
    attention = np.asarray(attention, dtype=np.float32)
    return np.concatenate([attention.mean(axis=0, keepdims=True), attention], axis=0)


def feature_channel(geometry: SourceGeometry, encodings: Mapping[int, Encoding], channel: int) -> Any:
    """One full-resolution feature channel: (H, W) numpy for a single plane, or a dask (N, H, W) for a stack.

    A stack's planes are computed only when napari displays them (``encodings[plane].features([channel])``),
    zeros for planes not encoded yet. Browsing channels replaces this array (a spin box in the dock), so
    the channel never becomes a dims slider next to the stack's plane slider.
    """
    height, width = geometry.plane_shape
    encodings = dict(encodings)
    if geometry.n_planes is None:
        encoding = next(iter(encodings.values()))
        return _features_of(encoding, channel)[0]
    import dask.array as da
    from dask.base import tokenize

    name = "hrdv2-channel-" + tokenize(geometry, channel, sorted(encodings), [id(e) for e in encodings.values()])

    def plane(index: int) -> np.ndarray:
        encoding = encodings.get(index)
        if encoding is None:
            return np.zeros((1, height, width), dtype=np.float32)
        return _features_of(encoding, channel)

    graph = {(name, n, 0, 0): (plane, n) for n in range(geometry.n_planes)}
    chunks = ((1,) * geometry.n_planes, (height,), (width,))
    return da.Array(graph, name, chunks, dtype=np.float32)


def _features_of(encoding: Encoding, channel: int) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return encoding.features(channels=[channel])


def features_layer_data(
    geometry: SourceGeometry,
    features: Any,
    *,
    channel: int,
    n_features: int,
    contrast_limits: tuple[float, float],
    config: dict[str, Any] | None = None,
) -> LayerData:
    """Image layer ``"<image> features"``: feature ``channel`` as (H, W) or (N, H, W) (see :func:`feature_channel`)."""
    low, high = contrast_limits
    return (
        features,
        {
            "name": result_name(geometry.name, "features"),
            "colormap": "viridis",
            "contrast_limits": (float(low), float(high) if high > low else float(low) + 1e-6),
            "visible": False,
            "metadata": _metadata("features", geometry, config=config, channel=int(channel), n_features=n_features),
            **geometry.placement(),
        },
        "image",
    )


def similarity_layer_data(geometry: SourceGeometry, similarity: np.ndarray, *, pixel: tuple[int, ...]) -> LayerData:
    """Image layer ``"<image> similarity"``: cosine similarity in [-1, 1] to the clicked pixel."""
    return (
        np.asarray(similarity, dtype=np.float32),
        {
            "name": result_name(geometry.name, "similarity"),
            "colormap": "magma",
            "contrast_limits": (-1.0, 1.0),
            "metadata": _metadata("similarity", geometry, pixel=tuple(int(p) for p in pixel)),
            **geometry.placement(),
        },
        "image",
    )


def segmentation_layer_data(
    geometry: SourceGeometry,
    labels: np.ndarray,
    *,
    classes: list[int],
    class_names: Mapping[int, str] | None = None,
    opacity: float = 0.5,
    contour: int = 0,
) -> LayerData:
    """Labels layer ``"<image> segmentation"``: (H, W) or (N, H, W), uint8 (uint16 beyond 255).

    ``labels`` is numpy, or a chunked (Zarr) array for a huge image, used as it is (never read whole).

    ``contour`` > 0 draws class outlines of that width instead of filled regions (napari sets it after
    creating the layer: :func:`upsert_layer` applies ``metadata[...]["contour"]``).
    """
    from .core.files.label_images import as_label_image

    return (
        as_label_image(labels) if isinstance(labels, np.ndarray) else labels,
        {
            "name": result_name(geometry.name, "segmentation"),
            "opacity": float(opacity),
            "metadata": _metadata(
                "segmentation",
                geometry,
                classes=[int(c) for c in classes],
                class_names={str(int(k)): str(v) for k, v in (class_names or {}).items()},
                contour=int(contour),
            ),
            **geometry.placement(),
        },
        "labels",
    )


def probability_name(source_name: str, class_name: str) -> str:
    """Name of the probability layer of one class, e.g. ``"cells probabilities class 1"``."""
    return f"{result_name(source_name, 'probabilities')} {class_name}"


def probabilities_layer_data(
    geometry: SourceGeometry, probabilities: Any, *, classes: list[int], label: int, class_name: str
) -> LayerData:
    """Image layer ``"<image> probabilities <class name>"``: the probability of class ``label``, ([N,] H, W) float32
    in [0, 1], laid out like the image (one hidden layer per class, so no class slider joins the viewer's dims)."""
    return (
        _float32(probabilities),
        {
            "name": probability_name(geometry.name, class_name),
            "colormap": "viridis",
            "contrast_limits": (0.0, 1.0),
            "visible": False,
            "metadata": _metadata("probabilities", geometry, classes=[int(c) for c in classes], label=int(label)),
            **geometry.placement(),
        },
        "image",
    )


def probability_layers(viewer: napari.Viewer, source_name: str) -> dict[int, Any]:
    """{class label: layer} of the plugin's per-class probability layers of the image ``source_name``."""
    found = {}
    for layer in viewer.layers:
        tag = plugin_tag(layer)
        if tag and tag.get("kind") == "probabilities" and tag.get("source") == source_name and "label" in tag:
            found[int(tag["label"])] = layer
    return found


def uncertainty_layer_data(geometry: SourceGeometry, uncertainty: np.ndarray) -> LayerData:
    """Image layer ``"<image> uncertainty"``: ([N,] H, W) float32 in [0, 1] (normalised entropy)."""
    return (
        _float32(uncertainty),
        {
            "name": result_name(geometry.name, "uncertainty"),
            "colormap": "inferno",
            "contrast_limits": (0.0, 1.0),
            "opacity": 0.7,
            "metadata": _metadata("uncertainty", geometry),
            **geometry.placement(),
        },
        "image",
    )


def _float32(data: Any) -> Any:
    """numpy data as float32; a chunked (Zarr) result array of a huge image as it is (never read whole); the
    levels of a pyramid (a list) each so."""
    if isinstance(data, list):
        return [_float32(level) for level in data]
    return np.asarray(data, dtype=np.float32) if isinstance(data, (np.ndarray, tuple)) else data


def find_result_layer(viewer: napari.Viewer, name: str, layer_type: str) -> Any | None:
    """The plugin-made layer called ``name`` of ``layer_type``, or None."""
    for layer in viewer.layers:
        if layer.name == name and plugin_tag(layer) is not None and type(layer).__name__.lower() == layer_type:
            return layer
    return None


def upsert_layer(viewer: napari.Viewer, layer_data: LayerData) -> Any:
    """Update the plugin's layer of that name in place (data, placement, metadata), or add it."""
    data, kwargs, layer_type = layer_data
    layer = find_result_layer(viewer, kwargs["name"], layer_type)
    shown = bool(kwargs.get("visible", True))
    if layer is None:
        return record_result(_add(viewer, layer_data), shown=shown)
    expected_ndim = (np.ndim(data[0]) if isinstance(data, list) else np.ndim(data)) - (1 if kwargs.get("rgb") else 0)
    pyramid_changed = isinstance(data, list) != bool(getattr(layer, "multiscale", False))
    if layer.ndim != expected_ndim or pyramid_changed:  # e.g. the source went from a plane to a stack: replace it
        index = viewer.layers.index(layer)
        viewer.layers.remove(layer)
        new = _add(viewer, layer_data)
        viewer.layers.move(viewer.layers.index(new), index)
        return record_result(new, shown=shown)
    layer.metadata = {**layer.metadata, **kwargs.get("metadata", {})}
    layer.data = data
    layer.scale = kwargs["scale"]
    layer.translate = kwargs["translate"]
    if "contrast_limits" in kwargs and layer_type == "image" and not kwargs.get("rgb"):
        layer.contrast_limits = kwargs["contrast_limits"]
    _apply_display(layer, kwargs)
    return record_result(layer, shown=shown)


def _apply_display(layer: Any, kwargs: dict[str, Any]) -> None:
    """Display options that layer constructors do not take (a labels layer's contour width)."""
    contour = kwargs.get("metadata", {}).get(PLUGIN_KEY, {}).get("contour")
    if contour is not None and hasattr(layer, "contour"):
        layer.contour = int(contour)
    if "opacity" in kwargs:
        layer.opacity = float(kwargs["opacity"])


def _add(viewer: napari.Viewer, layer_data: LayerData) -> Any:
    """Add a result layer just above its source image and that image's other results (user layers above stay)."""
    from napari.layers import Layer

    layer = Layer.create(*layer_data)
    tag = layer_data[1].get("metadata", {}).get(PLUGIN_KEY, {})
    source, rank = tag.get("source"), _stacking_rank(tag.get("kind"))

    def below(other: Any) -> bool:
        other_tag = plugin_tag(other)
        if other_tag is None:
            return other.name == source
        return other_tag.get("source") == source and _stacking_rank(other_tag.get("kind")) <= rank

    indices = [i for i, other in enumerate(viewer.layers) if below(other)]
    if not indices:
        layer = viewer.add_layer(layer)
    else:
        viewer.layers.insert(max(indices) + 1, layer)
    _apply_display(layer, layer_data[1])
    return layer


# ---------------------------------------------------------------------------------------------- results in view
#: The open :func:`recording_results` blocks (main thread only, like every layer change).
_recorders: list[list[tuple[Any, bool]]] = []


@contextmanager
def recording_results() -> Iterator[list[tuple[Any, bool]]]:
    """Collect the result layers made or updated inside the block, as (layer, shown by design) pairs.

    A job's result handler runs inside such a block; :func:`show_results` then brings what it made into view.
    """
    made: list[tuple[Any, bool]] = []
    _recorders.append(made)
    try:
        yield made
    finally:
        _recorders.remove(made)


def record_result(layer: Any, *, shown: bool = True) -> Any:
    """Note ``layer`` as made or updated by the running result handler (``shown``: not a hidden helper)."""
    for made in _recorders:
        made.append((layer, shown))
    return layer


def bring_into_view(viewer: napari.Viewer, layer: Any) -> None:
    """Make ``layer`` visible and move it above every image and result layer, so nothing opaque covers it.

    Layers the user annotates (scribbles, points, shapes: not images, not the plugin's) stay above it.
    """
    from napari.layers import Image

    if layer not in viewer.layers:
        return
    layer.visible = True
    layers = list(viewer.layers)
    index = layers.index(layer)
    covering = [
        i
        for i, other in enumerate(layers)
        if other is not layer and (plugin_tag(other) is not None or isinstance(other, Image))
    ]
    top = max(covering, default=-1)
    if top > index:
        viewer.layers.move(index, top + 1)


def show_results(viewer: napari.Viewer, made: list[tuple[Any, bool]]) -> list[Any]:
    """Bring the layers a job made or updated into view (hidden helpers stay hidden); returns them.

    Several come up in their stacking order (the segmentation over its uncertainty).
    """
    shown: list[Any] = []
    for layer, wanted in made:
        if wanted and layer in viewer.layers and not any(layer is other for other in shown):
            shown.append(layer)
    shown.sort(key=lambda layer: _stacking_rank((plugin_tag(layer) or {}).get("kind")))
    for layer in shown:
        bring_into_view(viewer, layer)
    return shown


def result_layers_of(viewer: napari.Viewer, source: str) -> list[Any]:
    """The plugin's layers made from the image layer called ``source``."""
    return [layer for layer in viewer.layers if (plugin_tag(layer) or {}).get("source") == source]


# ---------------------------------------------------------------------------------------------- regions
#: Result arrays of lazily read (dask/zarr) images with more pixels than this are chunked in-memory Zarr arrays
#: that hold only the chunks written ("Predict current view" on a huge image allocates the predicted views only).
LAZY_RESULT_PIXELS = 2**26
#: Chunk side (pixels) of such arrays.
LAZY_RESULT_CHUNK = 1024


@dataclass(frozen=True)
class ViewRegion:
    """The part of an image plane shown in the canvas: plane ``plane``, rows ``rows`` and columns ``cols``.

    ``rows`` and ``cols`` are (start, stop) data pixel indices (stop exclusive), clipped to the image.
    """

    plane: int
    rows: tuple[int, int]
    cols: tuple[int, int]

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows[1] - self.rows[0], self.cols[1] - self.cols[0]


def visible_region(viewer: napari.Viewer, layer: Any) -> ViewRegion:
    """The rectangle of ``layer``'s current plane that the 2D canvas shows (every pixel at least partly visible).

    From the camera (``center``, ``zoom`` = screen pixels per world unit) and the canvas size (one grid
    view's size in grid mode): the four world corners of the view are mapped to data coordinates with
    ``layer.world_to_data`` (scale, translate, rotation, affine) and their bounding box is taken. Pixel
    ``i`` covers data coordinates ``[i - 0.5, i + 0.5]``. Raises :class:`InputError` in a 3D view or when
    the image is out of view.
    """
    geometry = SourceGeometry.from_layer(layer, multiscale_ok=True)
    if viewer.dims.ndisplay != 2:
        raise InputError("'Predict current view' works in the 2D view: switch the viewer to 2D (the 2D/3D button).")
    camera = viewer.scene.camera
    size = viewer.canvas.viewbox_size(viewer.layers) if viewer.canvas.grid.enabled else viewer.canvas.size
    zoom = float(camera.zoom)
    half = np.asarray(size[-2:], dtype=float) / (2.0 * zoom)
    center = np.asarray(camera.center[-2:], dtype=float)
    row_axis, col_axis = viewer.dims.displayed[-2:]
    corners = []
    for dr in (-1, 1):
        for dc in (-1, 1):
            point = np.asarray(viewer.dims.point, dtype=float)
            point[row_axis] = center[0] + dr * half[0]
            point[col_axis] = center[1] + dc * half[1]
            corners.append(np.asarray(layer.world_to_data(point), dtype=float)[-2:])
    low, high = np.min(corners, axis=0), np.max(corners, axis=0)
    height, width = geometry.plane_shape
    r0, c0 = (max(0, int(np.floor(v + 0.5))) for v in low)
    r1, c1 = min(height, int(np.ceil(high[0] + 0.5))), min(width, int(np.ceil(high[1] + 0.5)))
    if r1 <= r0 or c1 <= c0:
        raise InputError(f"'{geometry.name}' is not in view: pan or zoom so that part of it shows, then try again.")
    plane = 0
    if geometry.n_planes is not None:
        position = layer.world_to_data(viewer.dims.point)
        plane = int(np.clip(round(float(position[0])), 0, geometry.n_planes - 1))
    return ViewRegion(plane, (r0, r1), (c0, c1))


def region_index(geometry: SourceGeometry, region: ViewRegion, *, channel_axis: bool = False) -> tuple[Any, ...]:
    """Index of ``region`` in a result array laid out like the source ((N,) H, W; a leading channel axis kept whole)."""
    index: tuple[Any, ...] = (slice(*region.rows), slice(*region.cols))
    if geometry.is_stack:
        index = (region.plane, *index)
    return (slice(None), *index) if channel_axis else index


def blank_result(shape: tuple[int, ...], dtype: Any, *, lazy_source: bool) -> Any:
    """A zero result array: numpy, or (for a lazily read source of more than :data:`LAZY_RESULT_PIXELS`)
    an in-memory Zarr array whose chunks are allocated only when written."""
    if lazy_source and int(np.prod(shape, dtype=np.int64)) > LAZY_RESULT_PIXELS:
        import zarr

        chunks = tuple(min(s, LAZY_RESULT_CHUNK) if i >= len(shape) - 2 else 1 for i, s in enumerate(shape))
        return zarr.create_array(zarr.storage.MemoryStore(), shape=shape, chunks=chunks, dtype=dtype, fill_value=0)
    return np.zeros(shape, dtype=dtype)


def paste_region_levels(
    base: Any,
    geometry: SourceGeometry,
    region: ViewRegion,
    values: np.ndarray,
    *,
    channels: int | None = None,
    lazy_source: bool,
) -> list[Any]:
    """:func:`paste_region` into every level of a result pyramid shaped like a multiscale source's levels.

    Level ``k`` is level 0 subsampled by its integer factor ``f`` (nearest: its pixel ``i`` is pixel ``i * f``
    of level 0, as ``labels[::f, ::f]``), so every level shows the same labels. ``base`` is the result layer's
    current levels (or None); ``channels`` the leading channel count of probabilities.
    """
    assert geometry.level_shapes is not None
    values = np.asarray(values)
    full = geometry.level_shapes[0]
    (r0, r1), (c0, c1) = region.rows, region.cols
    base_levels = list(base) if base is not None and len(base) == len(geometry.level_shapes) else None
    out = []
    for k, level in enumerate(geometry.level_shapes):
        shape = level if channels is None else (channels, *level)
        factors = [max(1, round(full[axis] / level[axis])) for axis in (-2, -1)]
        rows = (-(-r0 // factors[0]), min(level[-2], -(-r1 // factors[0])))
        cols = (-(-c0 // factors[1]), min(level[-1], -(-c1 // factors[1])))
        row_index = np.arange(rows[0], max(rows)) * factors[0] - r0  # level-0 rows of this level's pixels
        col_index = np.arange(cols[0], max(cols)) * factors[1] - c0
        picked = values[..., row_index[:, None], col_index[None, :]]
        index = region_index(geometry, ViewRegion(region.plane, rows, cols), channel_axis=channels is not None)
        level_base = base_levels[k] if base_levels is not None else None
        out.append(paste_region(level_base, shape, index, picked, lazy_source=lazy_source))
    return out


def paste_region(
    base: Any, shape: tuple[int, ...], index: tuple[Any, ...], values: np.ndarray, *, lazy_source: bool
) -> Any:
    """Write ``values`` at ``index`` into the current layer data ``base`` and return the array written.

    ``base`` is changed in place when its shape fits and its dtype holds ``values`` (same kind, at least as
    wide); a narrower ``base`` (uint8 labels, uint16 values) is copied into a wider array first; anything
    else (no layer yet, another shape) starts from zeros (:func:`blank_result`).
    """
    values = np.asarray(values)
    if base is not None and tuple(base.shape) == tuple(shape) and np.dtype(base.dtype).kind == values.dtype.kind:
        if np.dtype(base.dtype).itemsize >= values.dtype.itemsize:
            base[index] = values
            return base
        widened = np.asarray(base).astype(values.dtype)
        widened[index] = values
        return widened
    out = blank_result(tuple(shape), values.dtype, lazy_source=lazy_source)
    out[index] = values
    return out
