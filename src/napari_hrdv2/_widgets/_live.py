"""Live mode of the Segmentation dock: retrain and segment the current plane a moment after each stroke."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QTimer

#: Quiet time after the last paint stroke before a live retrain starts (milliseconds).
LIVE_DELAY_MS = 400


class LiveRetrain:
    """Watches the scribbles layer and calls ``on_due`` once the painting pauses (a debouncing timer).

    Parameters
    ----------
    on_due : callable
        Starts the live retrain (the dock's job); called on the main thread.

    Attributes
    ----------
    timer : QTimer
        The single-shot debouncing timer (:data:`LIVE_DELAY_MS`).
    generation : int
        Counts live runs; results of a run older than the newest are dropped.
    """

    def __init__(self, on_due: Callable[[], None]):
        self.generation = 0
        self._watched: weakref.ref | None = None
        self.timer = QTimer()
        self.timer.setSingleShot(True)
        self.timer.setInterval(LIVE_DELAY_MS)
        self.timer.timeout.connect(on_due)

    def toggle(self, enabled: bool, layer: Any) -> None:
        """Live mode on (watch ``layer`` and retrain soon) or off (watch nothing; no retrain pending)."""
        if enabled:
            self.watch(layer)
            self.timer.start()
        else:
            self.stop()

    def stop(self) -> None:
        """Live mode off: stop watching; no retrain is pending."""
        self.watch(None)
        self.timer.stop()

    def next_generation(self) -> int:
        """A new live run starts: its number (older runs' results are then stale)."""
        self.generation += 1
        return self.generation

    def is_stale(self, generation: int | None) -> bool:
        """True for a result of a live run that a newer one superseded (None: not a live run)."""
        return generation is not None and generation != self.generation

    def watch(self, layer: Any) -> None:
        """Retrain after edits of ``layer`` (None: of no layer)."""
        previous = self._watched() if self._watched is not None else None
        if previous is not None:
            previous.events.paint.disconnect(self._on_edited)
            previous.events.data.disconnect(self._on_edited)
        self._watched = None
        if layer is not None:
            layer.events.paint.connect(self._on_edited)
            layer.events.data.connect(self._on_edited)
            self._watched = weakref.ref(layer)

    def _on_edited(self, *_: Any) -> None:
        self.timer.start()  # restarting the single-shot timer debounces a burst of strokes
