"""The Features dock's similarity click: the cosine similarity of every pixel to a clicked one.

While picking, the user's Labels layers (the scribbles) are switched to pan/zoom, so a pick never paints into
them; their modes come back when picking ends.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox

from .._layers import (
    SourceGeometry,
    assemble_planes,
    find_result_layer,
    plane_of,
    result_name,
    similarity_layer_data,
    upsert_layer,
)
from .._workers import similarity_job
from ..core.errors import HRDv2Error, InputError
from ._common import keep_active_layer, labels_layer_choices
from ._runner import JobRunner, notify_error

if TYPE_CHECKING:  # pragma: no cover
    from napari.qt.threading import GeneratorWorker

#: Mode of a Labels layer that takes no paint.
PAN_ZOOM = "pan_zoom"


class SimilarityPicker:
    """The "Similarity: click a pixel" check box, its viewer mouse callback and the similarity job.

    Parameters
    ----------
    viewer, session
        The viewer and its shared HR-Dv2 session (cache, backbone card).
    runner : JobRunner
        Runs the dock's jobs.
    messages : DockMessages
        The dock's status line and download question.
    settings : callable
        Returns the dock's FeatureConfig (InputError if a field is invalid).
    image : callable
        Returns the image chosen in the dock (clicks pick its pixels).
    on_item : callable
        Gets the job's non-progress reports (the loaded backbone's card).
    """

    def __init__(
        self,
        viewer: Any,
        session: Any,
        *,
        runner: JobRunner,
        messages: Any,
        settings: Callable[[], Any],
        image: Callable[[], Any],
        on_item: Callable[[Any], None],
    ):
        self._viewer = viewer
        self._session = session
        self._runner = runner
        self._messages = messages
        self._settings = settings
        self._image = image
        self._on_item = on_item
        #: Labels layers switched to pan/zoom while picking, with the mode to restore.
        self._paused_modes: list[tuple[Any, str]] = []
        self.mode = CheckBox(
            text="Similarity: click a pixel",
            tooltip="Click the image to map the cosine similarity of every pixel to it",
        )
        self.mode.changed.connect(self.toggle)

    def similarity(self, layer: Any, row: int, col: int, *, plane: int = 0) -> GeneratorWorker | None:
        """Map the cosine similarity of every pixel of ``plane`` to pixel (row, col) as "<image> similarity"."""
        try:
            geometry = SourceGeometry.from_layer(layer)
            config = self._settings()
            pixels = plane_of(layer, plane)
            height, width = geometry.plane_shape
            if not (0 <= row < height and 0 <= col < width):
                raise InputError(f"Pixel ({row}, {col}) lies outside the {height}x{width} image.")
        except HRDv2Error as err:
            notify_error(err)
            return None
        if not self._messages.may_download(config.backbone):
            return None
        return self._runner.start(
            similarity_job,
            pixels,
            row,
            col,
            config,
            self._session.cache,
            description=f"HR-Dv2 similarity on {geometry.name}",
            on_returned=partial(self._show, geometry, plane, (row, col)),
            on_yielded=self._on_item,
            source=layer,
        )

    def _show(self, geometry: SourceGeometry, plane: int, pixel: tuple[int, int], similarity: Any) -> None:
        existing = find_result_layer(self._viewer, result_name(geometry.name, "similarity"), "image")
        base = existing.data if existing is not None else None
        data = assemble_planes(geometry, {plane: similarity}, dtype=np.float32, base=base)
        where = (plane, *pixel) if geometry.is_stack else pixel
        with keep_active_layer(self._viewer):
            upsert_layer(self._viewer, similarity_layer_data(geometry, data, pixel=where))
        self._messages.set_status(f"Similarity to pixel {where} of {geometry.name}.")

    def toggle(self, enabled: bool) -> None:
        """Picking on: clicks map similarities and paint nothing. Off: the Labels layers' modes come back."""
        callbacks = self._viewer.mouse_drag_callbacks
        if enabled and self.on_click not in callbacks:
            callbacks.append(self.on_click)
            self._pause_painting()
            self._messages.set_status("Click a pixel of the image to map its feature similarity.")
        elif not enabled and self.on_click in callbacks:
            callbacks.remove(self.on_click)
            self.resume_painting()

    def _pause_painting(self) -> None:
        """Switch the user's Labels layers (scribbles) to pan/zoom, remembering their modes."""
        for _name, layer in labels_layer_choices(self._viewer):
            if layer.mode != PAN_ZOOM:
                self._paused_modes.append((layer, str(layer.mode)))
                layer.mode = PAN_ZOOM

    def resume_painting(self) -> None:
        """Give the Labels layers switched by :meth:`_pause_painting` their modes back (those still there)."""
        paused, self._paused_modes = self._paused_modes, []
        for layer, mode in paused:
            if layer in self._viewer.layers and layer.mode == PAN_ZOOM:
                layer.mode = mode

    def on_click(self, _viewer: Any, event: Any) -> None:
        """The viewer's mouse callback: a left press on the chosen image maps the similarity to that pixel."""
        layer = self._image()
        if layer is None or event.type != "mouse_press" or getattr(event, "button", 1) != 1:
            return
        try:
            geometry = SourceGeometry.from_layer(layer)
        except HRDv2Error:
            return
        coords = np.asarray(layer.world_to_data(event.position), dtype=float)
        row, col = int(round(coords[-2])), int(round(coords[-1]))
        height, width = geometry.plane_shape
        if not (0 <= row < height and 0 <= col < width):
            return
        plane = int(np.clip(round(coords[0]), 0, geometry.n_planes - 1)) if geometry.is_stack else 0
        self.similarity(layer, row, col, plane=plane)
