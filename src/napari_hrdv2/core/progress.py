"""Progress reporting and cancellation for long computations, without any GUI.

Long-running functions are generators that yield :class:`Progress` and return their result
(napari's thread workers drive them directly). This module holds the one progress type and the
only code that steps such generators by hand:

- :func:`run_steps` drives one to its result from plain Python, with an optional progress
  callback and a :class:`threading.Event` to cancel;
- :func:`relabel` and :func:`within` re-yield a sub-task's progress inside a larger task
  (``result = yield from within(sub_task, start, span, total=n)``).
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
    """``done`` of ``total`` steps, and what is being done.

    Units depend on the task: transformed copies of tiles when encoding, files (fractional while a
    file is in progress) in a batch, or simply ``total=1`` with ``done`` a fraction.
    """

    done: float
    total: float
    message: str = ""

    @property
    def fraction(self) -> float:
        """``done / total`` in [0, 1] (1 when there is nothing to do)."""
        return min(max(self.done / self.total, 0.0), 1.0) if self.total else 1.0


def map_steps(steps: Generator[Any, None, Result], convert: Callable[[Any], Any]) -> Generator[Any, None, Result]:
    """Re-yield every item of ``steps`` as ``convert(item)``, dropping items converted to None.

    Returns what ``steps`` returns. This is the one place where a generator of steps is driven by
    hand: closing the returned generator, an error in ``convert`` or a cancellation raised by it
    closes ``steps`` (nothing is left running).
    """
    try:
        while True:
            try:
                item = next(steps)
            except StopIteration as finished:
                return finished.value
            converted = convert(item)
            if converted is not None:
                yield converted
    finally:
        steps.close()


def relabel(
    steps: Generator[Any, None, Result], convert: Callable[[Any], Progress]
) -> Generator[Progress, None, Result]:
    """Re-yield every :class:`Progress` item of ``steps`` as ``convert(item)``; returns what ``steps`` returns.

    Other items (partial results, e.g. a progressive encode's ``PartialEncoding``) pass through
    unchanged. Closing the returned generator closes ``steps`` (nothing is left running).
    """
    return (yield from map_steps(steps, lambda item: convert(item) if isinstance(item, Progress) else item))


def within(
    steps: Generator[Progress, None, Result],
    start: float,
    span: float,
    *,
    total: float = 1.0,
    message: str | None = None,
) -> Generator[Progress, None, Result]:
    """Re-yield a sub-task's progress as ``start + span * fraction`` of a task of ``total`` steps.

    ``message`` replaces the sub-task's own messages when given.
    """
    return (
        yield from relabel(
            steps,
            lambda update: Progress(
                start + span * update.fraction, total, update.message if message is None else message
            ),
        )
    )


def run_steps(
    steps: Generator[Any, None, Result],
    *,
    progress: Callable[[Any], None] | None = None,
    cancel: threading.Event | None = None,
) -> Result:
    """Drive a progress generator (of :class:`Progress` items) to its result.

    ``progress`` is called with every item the generator yields.

    Raises :class:`Cancelled` as soon as ``cancel`` is set. The generator is closed on every way
    out (cancel, or an error in ``progress``), so nothing keeps running.
    """

    def observe(update: Any) -> None:
        if progress is not None:
            progress(update)
        if cancel is not None and cancel.is_set():
            raise Cancelled("Cancelled.")

    # Every item is consumed by ``observe`` (converted to None), so the driver yields nothing: its first
    # step runs ``steps`` to the end and stops with the result.
    driver = map_steps(steps, observe)
    try:
        next(driver)
    except StopIteration as finished:
        return finished.value
    raise AssertionError("unreachable: map_steps yielded an item that observe consumed")  # pragma: no cover
