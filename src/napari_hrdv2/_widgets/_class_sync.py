"""Keeps the Segmentation dock's class table in step with the scribbles layer and the model."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import numpy as np

from ._classes import ClassTable


class ClassSync:
    """Fills ``table`` with the classes painted in the watched scribbles layer, those the model knows, and at
    least 1 and 2; picks the class painted next.

    Parameters
    ----------
    table : ClassTable
        The class table to fill.
    session : ViewerSession
        Holds the class names and the model.
    scribbles : callable
        Returns the scribbles layer chosen in the dock (or None).
    """

    def __init__(self, table: ClassTable, session: Any, scribbles: Callable[[], Any]):
        self._table = table
        self._session = session
        self._scribbles = scribbles
        self._watched: weakref.ref | None = None

    def watch(self, layer: Any) -> None:
        """Follow ``layer`` (new label values, the label being painted; None: no layer) and show the classes."""
        previous = self._watched() if self._watched is not None else None
        if previous is not layer:
            if previous is not None:
                for emitter in (previous.events.data, previous.events.paint, previous.events.selected_label):
                    emitter.disconnect(self.refresh)
            self._watched = None
            if layer is not None:
                for emitter in (layer.events.data, layer.events.paint, layer.events.selected_label):
                    emitter.connect(self.refresh)
                self._watched = weakref.ref(layer)
        self.refresh()

    def refresh(self, *_: Any) -> None:
        """Show the classes of the scribbles and the model (colours from the scribbles layer)."""
        layer = self._scribbles()
        labels = {1, 2}
        if layer is not None:
            labels |= {int(v) for v in np.unique(np.asarray(layer.data)) if v > 0}
            labels.add(int(layer.selected_label))
        segmenter = self._session.segmenter
        if segmenter is not None:
            labels |= {int(c) for c in getattr(segmenter, "classes_", [])}
        colors = {}
        for label in labels:
            if layer is not None:
                try:
                    colors[label] = layer.get_color(label)
                except Exception:  # noqa: BLE001 - colour is decoration only
                    colors[label] = None
        self._table.set_classes(sorted(labels), colors, dict(self._session.class_names))
        if layer is not None:
            self._table.select(int(layer.selected_label))

    def pick(self, viewer: Any, label: int) -> str | None:
        """Paint ``label`` next (the layer selected, in paint mode); the status text, None without a layer."""
        layer = self._scribbles()
        if layer is None:
            return None
        layer.selected_label = int(label)
        if layer in viewer.layers:
            viewer.layers.selection.active = layer
            layer.mode = "paint"
        self.refresh()
        return f"Painting {self._session.class_names.get(int(label), f'class {label}')} (label {label})."

    def rename(self, names: dict[int, str], segmentation: Any) -> None:
        """The user renamed classes: the session, the model and the ``segmentation`` layer (or None) take the names."""
        self._session.class_names = dict(names)
        segmenter = self._session.segmenter
        if segmenter is not None:
            segmenter.class_names = {c: names[c] for c in (int(k) for k in segmenter.classes_) if c in names}
        if segmentation is not None:
            tag = dict(segmentation.metadata.get("napari_hrdv2", {}))
            tag["class_names"] = {str(k): v for k, v in names.items()}
            segmentation.metadata = {**segmentation.metadata, "napari_hrdv2": tag}
