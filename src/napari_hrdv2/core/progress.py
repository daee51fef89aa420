"""Progress reporting and cancellation for long computations, without any GUI.

Long-running core functions are generators that yield :class:`Progress` and return their
result (napari's thread workers drive them directly); :func:`run_steps` drives one from plain
Python with an optional progress callback and a :class:`threading.Event` to cancel.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

from .errors import Cancelled

Result = TypeVar("Result")


@dataclass(frozen=True)
class Progress:
    """``done`` of ``total`` steps of ``stage`` (for encoding, one step = one transformed copy of one tile)."""

    done: int
    total: int
    stage: str = "encoding"

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


def run_steps(
    steps: Generator[Any, None, Result],
    *,
    progress: Callable[[Any], None] | None = None,
    cancel: threading.Event | None = None,
) -> Result:
    """Drive a progress generator (of :class:`Progress` or any other report) to its result.

    ``progress`` is called with every item the generator yields.

    Raises :class:`Cancelled` (after closing the generator, so nothing keeps running) as soon
    as ``cancel`` is set.
    """
    while True:
        try:
            update = next(steps)
        except StopIteration as finished:
            return finished.value
        if progress is not None:
            progress(update)
        if cancel is not None and cancel.is_set():
            steps.close()
            raise Cancelled("Cancelled.")
