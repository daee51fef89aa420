"""Core results -> napari layers: names, geometry (scale/translate), metadata tags, in-place updates. No Qt.

Axis conventions (one place): an image layer is a single plane ``(H, W[, 3|4])`` or a stack
``(N, H, W[, 3|4])``. Results keep that layout; maps with several channels (attention heads,
features, class probabilities) put the channel axis first, ``(C, H, W)`` or ``(C, N, H, W)``, so the
plane axis of a stack stays aligned with the image's plane axis in the viewer. Every result layer
copies the source layer's ``scale`` and ``translate`` (a leading channel axis gets scale 1,
translate 0) and carries ``metadata["napari_hrdv2"] = {"kind": ..., "source": <image name>, ...}``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .core.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import napari

    from .core.encoding import Encoding

#: Key of the metadata entry that marks a layer as made by this plugin.
PLUGIN_KEY = "napari_hrdv2"

LayerData = tuple[Any, dict[str, Any], str]

#: Result kinds and the suffix of their layer names ("<image> PCA"...).
KINDS = ("PCA", "attention", "features", "similarity", "segmentation", "probabilities", "uncertainty")


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

    @classmethod
    def from_layer(cls, layer: Any) -> SourceGeometry:
        """Geometry of a napari Image layer; 2D planes and stacks of them only."""
        if getattr(layer, "multiscale", False):
            raise InputError(
                f"'{layer.name}' is a multiscale (pyramid) image. Open the full-resolution level as a normal "
                "image layer (e.g. viewer.add_image(layer.data[0])) and compute on that."
            )
        spatial = tuple(int(s) for s in layer.data.shape[: layer.ndim])
        if len(spatial) not in (2, 3):
            raise InputError(
                f"'{layer.name}' has {len(spatial)} spatial axes {spatial}; HR-Dv2 works on 2D images and stacks "
                "of 2D planes (N, H, W). Split or project the extra axes first (e.g. one layer per time point)."
            )
        return cls(
            name=str(layer.name),
            plane_shape=(spatial[-2], spatial[-1]),
            n_planes=spatial[0] if len(spatial) == 3 else None,
            scale=tuple(float(s) for s in layer.scale),
            translate=tuple(float(t) for t in layer.translate),
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
    return {PLUGIN_KEY: {"kind": kind, "source": geometry.name, **extra}}


def pca_layer_data(geometry: SourceGeometry, rgb: np.ndarray, *, config: dict[str, Any] | None = None) -> LayerData:
    """RGB image layer ``"<image> PCA"``: (H, W, 3) or (N, H, W, 3) float32 in [0, 1]."""
    return (
        np.clip(np.asarray(rgb, dtype=np.float32), 0.0, 1.0),
        {
            "name": result_name(geometry.name, "PCA"),
            "rgb": True,
            "contrast_limits": (0.0, 1.0),
            "metadata": _metadata("PCA", geometry, config=config),
            **geometry.placement(),
        },
        "image",
    )


def attention_layer_data(
    geometry: SourceGeometry, attention: np.ndarray, *, config: dict[str, Any] | None = None
) -> LayerData:
    """Image layer ``"<image> attention"``: channel 0 = mean over heads, channel i = head i.

    ``attention`` is (1 + heads, H, W) or (1 + heads, N, H, W); see :func:`with_mean_head`.
    """
    data = np.asarray(attention, dtype=np.float32)
    high = float(np.percentile(data, 99.5)) if data.size else 1.0
    low = float(data.min()) if data.size else 0.0
    channel_names = ["mean"] + [f"head {i}" for i in range(1, data.shape[0])]
    return (
        data,
        {
            "name": result_name(geometry.name, "attention"),
            "colormap": "inferno",
            "contrast_limits": (low, high if high > low else low + 1e-6),
            "metadata": _metadata("attention", geometry, channels=channel_names, config=config),
            **geometry.placement(channel_axis=True),
        },
        "image",
    )


def with_mean_head(attention: np.ndarray) -> np.ndarray:
    """(heads, H, W) -> (1 + heads, H, W) with the mean over heads first."""
    attention = np.asarray(attention, dtype=np.float32)
    return np.concatenate([attention.mean(axis=0, keepdims=True), attention], axis=0)


def lazy_features(geometry: SourceGeometry, encodings: Mapping[int, Encoding], n_features: int) -> Any:
    """Dask array of full-resolution features, computed one channel of one plane at a time.

    Shape (C, H, W) for a single plane or (C, N, H, W) for a stack; each chunk is
    ``encodings[plane].features(channels=[c])`` (zeros for planes not encoded yet), so only the
    slices napari displays are ever materialised.
    """
    import dask.array as da
    from dask.base import tokenize

    height, width = geometry.plane_shape
    encodings = dict(encodings)
    name = "hrdv2-features-" + tokenize(geometry, sorted(encodings), [id(e) for e in encodings.values()])

    def chunk(channel: int, plane: int) -> np.ndarray:
        encoding = encodings.get(plane)
        if encoding is None:
            return np.zeros((1, height, width), dtype=np.float32)
        return _features_of(encoding, channel)

    graph: dict[tuple, tuple[Callable[..., np.ndarray], int, int]] = {}
    if geometry.n_planes is None:
        for c in range(n_features):
            graph[(name, c, 0, 0)] = (chunk, c, 0)
        chunks: tuple[tuple[int, ...], ...] = ((1,) * n_features, (height,), (width,))
    else:
        reshape = _add_plane_axis
        for c in range(n_features):
            for n in range(geometry.n_planes):
                graph[(name, c, n, 0, 0)] = (reshape, (chunk, c, n))
        chunks = ((1,) * n_features, (1,) * geometry.n_planes, (height,), (width,))
    return da.Array(graph, name, chunks, dtype=np.float32)


def _features_of(encoding: Encoding, channel: int) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return encoding.features(channels=[channel])


def _add_plane_axis(block: np.ndarray) -> np.ndarray:
    return block[:, None]


def features_layer_data(
    geometry: SourceGeometry,
    features: Any,
    *,
    contrast_limits: tuple[float, float],
    config: dict[str, Any] | None = None,
) -> LayerData:
    """Image layer ``"<image> features"`` over a lazy (C, [N,] H, W) array; browse channels with the slider."""
    low, high = contrast_limits
    return (
        features,
        {
            "name": result_name(geometry.name, "features"),
            "colormap": "viridis",
            "contrast_limits": (float(low), float(high) if high > low else float(low) + 1e-6),
            "visible": False,
            "metadata": _metadata("features", geometry, config=config),
            **geometry.placement(channel_axis=True),
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


def segmentation_layer_data(geometry: SourceGeometry, labels: np.ndarray, *, classes: list[int]) -> LayerData:
    """Labels layer ``"<image> segmentation"``: (H, W) or (N, H, W), uint8 (uint16 beyond 255)."""
    from .core.labels import as_label_image

    return (
        as_label_image(labels),
        {
            "name": result_name(geometry.name, "segmentation"),
            "opacity": 0.5,
            "metadata": _metadata("segmentation", geometry, classes=[int(c) for c in classes]),
            **geometry.placement(),
        },
        "labels",
    )


def probabilities_layer_data(geometry: SourceGeometry, probabilities: np.ndarray, *, classes: list[int]) -> LayerData:
    """Image layer ``"<image> probabilities"``: (n_classes, [N,] H, W) float32 in [0, 1], channel i = classes[i]."""
    return (
        np.asarray(probabilities, dtype=np.float32),
        {
            "name": result_name(geometry.name, "probabilities"),
            "colormap": "viridis",
            "contrast_limits": (0.0, 1.0),
            "visible": False,
            "metadata": _metadata("probabilities", geometry, classes=[int(c) for c in classes]),
            **geometry.placement(channel_axis=True),
        },
        "image",
    )


def uncertainty_layer_data(geometry: SourceGeometry, uncertainty: np.ndarray) -> LayerData:
    """Image layer ``"<image> uncertainty"``: ([N,] H, W) float32 in [0, 1] (normalised entropy)."""
    return (
        np.asarray(uncertainty, dtype=np.float32),
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
    if layer is None:
        return _add(viewer, layer_data)
    expected_ndim = np.ndim(data) - (1 if kwargs.get("rgb") else 0)
    if layer.ndim != expected_ndim:  # e.g. the source went from a plane to a stack: replace the layer
        index = viewer.layers.index(layer)
        viewer.layers.remove(layer)
        new = _add(viewer, layer_data)
        viewer.layers.move(viewer.layers.index(new), index)
        return new
    layer.metadata = {**layer.metadata, **kwargs.get("metadata", {})}
    layer.data = data
    layer.scale = kwargs["scale"]
    layer.translate = kwargs["translate"]
    if "contrast_limits" in kwargs and layer_type == "image" and not kwargs.get("rgb"):
        layer.contrast_limits = kwargs["contrast_limits"]
    return layer


def _add(viewer: napari.Viewer, layer_data: LayerData) -> Any:
    from napari.layers import Layer

    return viewer.add_layer(Layer.create(*layer_data))
