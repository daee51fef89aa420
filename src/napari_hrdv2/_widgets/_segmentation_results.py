"""Segmentation results -> the "<image> segmentation / uncertainty / probabilities" layers (main thread only)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .._layers import (
    SourceGeometry,
    ViewRegion,
    assemble_planes,
    find_result_layer,
    paste_region,
    paste_region_levels,
    probabilities_layer_data,
    probability_layers,
    region_index,
    result_name,
    segmentation_layer_data,
    uncertainty_layer_data,
    upsert_layer,
)
from .._workers import PredictionResult, RegionResult
from ..core.files.label_images import label_dtype
from ._common import keep_active_layer


class SegmentationResults:
    """Puts predictions into result layers over the image; the layer the user had selected stays selected.

    Parameters
    ----------
    viewer : napari.Viewer
        Where the layers go.
    session : ViewerSession
        Holds the class names.
    display : callable
        Returns the ``opacity`` and ``contour`` keywords of a new segmentation layer.
    """

    def __init__(self, viewer: Any, session: Any, display: Callable[[], dict[str, Any]]):
        self._viewer = viewer
        self._session = session
        self._display = display

    def class_names(self, classes: list[int]) -> dict[int, str]:
        """{label: name} of ``classes`` ('class N' unless named)."""
        return {c: self._session.class_names.get(c, f"class {c}") for c in classes}

    def show_labels(self, geometry: SourceGeometry, planes: dict[int, np.ndarray], classes: list[int]) -> None:
        """Put predicted planes into "<image> segmentation", over the grey image (the scribbles stay selected)."""
        layer = find_result_layer(self._viewer, result_name(geometry.name, "segmentation"), "labels")
        base = layer.data if layer is not None else None
        labels = assemble_planes(geometry, planes, dtype=label_dtype(max(classes)), base=base)
        with keep_active_layer(self._viewer):
            created = layer is None
            layer = upsert_layer(
                self._viewer,
                segmentation_layer_data(
                    geometry, labels, classes=classes, class_names=self.class_names(classes), **self._display()
                ),
            )
            if created:
                self.reveal_grey_image(geometry)

    def show_prediction(self, geometry: SourceGeometry, result: PredictionResult) -> None:
        """Labels, and uncertainty / probabilities when the job made them, of the predicted planes."""
        classes = result.classes
        self.show_labels(geometry, result.labels, classes)
        with keep_active_layer(self._viewer):
            if result.uncertainty:
                layer = find_result_layer(self._viewer, result_name(geometry.name, "uncertainty"), "image")
                data = assemble_planes(
                    geometry, result.uncertainty, dtype=np.float32, base=getattr(layer, "data", None)
                )
                upsert_layer(self._viewer, uncertainty_layer_data(geometry, data))
            if result.probabilities:
                self._show_probabilities(geometry, result.probabilities, classes)

    def _show_probabilities(self, geometry: SourceGeometry, planes: dict[int, np.ndarray], classes: list[int]) -> None:
        """One hidden "<image> probabilities <class name>" layer per class, laid out like the image (no slider)."""
        layers = self._probability_layers(geometry, classes)
        for i, label in enumerate(classes):
            layer = layers.get(label)
            data = assemble_planes(
                geometry, {index: plane[i] for index, plane in planes.items()}, dtype=np.float32,
                base=getattr(layer, "data", None),
            )  # fmt: skip
            upsert_layer(self._viewer, self._probability_data(geometry, data, classes, label))

    def _probability_layers(self, geometry: SourceGeometry, classes: list[int]) -> dict[int, Any]:
        """The image's per-class probability layers, renamed after their class; those of gone classes removed."""
        layers = probability_layers(self._viewer, geometry.name)
        for label, layer in list(layers.items()):
            if label not in classes:
                self._viewer.layers.remove(layer)
                del layers[label]
            else:
                name = self._probability_data(geometry, None, classes, label)[1]["name"]
                if layer.name != name and name not in self._viewer.layers:
                    layer.name = name
        return layers

    def _probability_data(self, geometry: SourceGeometry, data: Any, classes: list[int], label: int) -> Any:
        name = self.class_names([label])[label]
        return probabilities_layer_data(geometry, data, classes=classes, label=label, class_name=name)

    def reveal_grey_image(self, geometry: SourceGeometry) -> None:
        """Hide the PCA view under a new segmentation, so the labels are read over the grey image."""
        pca = find_result_layer(self._viewer, result_name(geometry.name, "PCA"), "image")
        if pca is not None and pca.visible:
            pca.visible = False

    def show_region(self, geometry: SourceGeometry, region: ViewRegion, result: RegionResult, image: Any) -> str:
        """Paste a view's prediction into the result layers (created when missing; other pixels kept).

        ``image`` is the source layer (None if gone); returns the status text.
        """
        full_resolution = None if image is None else image.data[0] if geometry.level_shapes else image.data
        lazy = full_resolution is not None and not isinstance(full_resolution, np.ndarray)
        classes = [int(c) for c in result.segmenter.classes_]
        done = ViewRegion(region.plane, (result.top, result.top + result.labels.shape[0]),
                          (result.left, result.left + result.labels.shape[1]))  # fmt: skip
        outputs = [("segmentation", "labels", result.labels, None)]
        if result.uncertainty is not None:
            outputs.append(("uncertainty", "image", result.uncertainty, None))
        with keep_active_layer(self._viewer):
            if result.probabilities is not None:
                self._probability_layers(geometry, classes)
                outputs += [("probabilities", "image", result.probabilities[i], c) for i, c in enumerate(classes)]
            for kind, layer_type, values, label in outputs:
                self._paste(geometry, done, kind, layer_type, values, label=label, classes=classes, lazy=lazy)
        rows, cols = done.shape
        where = f" plane {region.plane}" if geometry.is_stack else ""
        return (
            f"Segmented the view of {geometry.name}{where}: rows {done.rows[0]}-{done.rows[1] - 1}, "
            f"columns {done.cols[0]}-{done.cols[1] - 1} ({rows}x{cols} px)."
        )

    def _paste(
        self,
        geometry: SourceGeometry,
        done: ViewRegion,
        kind: str,
        layer_type: str,
        values: np.ndarray,
        *,
        label: int | None,
        classes: list[int],
        lazy: bool,
    ) -> None:
        """Paste one output of a view's prediction into its result layer (a pyramid like the image's if it is one);
        ``label`` is the class of a probability output."""
        if label is None:
            layer = find_result_layer(self._viewer, result_name(geometry.name, kind), layer_type)
        else:
            layer = probability_layers(self._viewer, geometry.name).get(label)
        base = getattr(layer, "data", None)
        if geometry.level_shapes is not None:
            base = list(base) if base is not None and getattr(layer, "multiscale", False) else None
            data = paste_region_levels(base, geometry, done, values, lazy_source=lazy)
        else:
            index = region_index(geometry, done)
            data = paste_region(base, geometry.planes_shape, index, values, lazy_source=lazy)
        if kind == "segmentation":
            layer_data = segmentation_layer_data(
                geometry, data, classes=classes, class_names=self.class_names(classes), **self._display()
            )
        elif kind == "uncertainty":
            layer_data = uncertainty_layer_data(geometry, data)
        else:
            layer_data = self._probability_data(geometry, data, classes, int(label or 0))
        if isinstance(data, list):
            layer_data[1]["multiscale"] = True
        created = layer is None
        layer = upsert_layer(self._viewer, layer_data)
        if layer.data is data and not created:
            layer.refresh()
        if created and kind == "segmentation":
            self.reveal_grey_image(geometry)
