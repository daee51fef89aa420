"""Start generator jobs in napari thread workers: progress bars, error notifications, busy state."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any

from napari.qt.threading import GeneratorWorker, create_worker
from napari.utils import progress
from napari.utils.notifications import show_error

from ..core.errors import HRDv2Error
from ..core.progress import Progress

logger = logging.getLogger(__name__)

#: Resolution of the napari progress bars (fractions are mapped to 0..PROGRESS_STEPS).
PROGRESS_STEPS = 1000


class QuietGeneratorWorker(GeneratorWorker):
    """A napari generator worker whose errors are shown by the widget (a message with the fix).

    napari's own worker relays every exception to the notification manager with a traceback;
    expected problems (missing weights, bad shapes, out of memory) deserve a plain message instead.
    """

    def _relay_error(self, exc: Exception) -> None:  # noqa: D401 - napari hook
        """Do nothing: :class:`JobRunner` shows the error."""


def user_message(error: BaseException) -> str:
    """What to tell the user about ``error``: our messages as they are, others with a hint."""
    if isinstance(error, HRDv2Error):
        return str(error)
    from ..core.devices import is_out_of_memory

    if is_out_of_memory(error):
        return (
            "Out of memory. Pick a smaller tile size or backbone, the 'fast' quality preset, "
            "or the cpu device in HR-Dv2 Features' advanced settings, then try again."
        )
    if isinstance(error, MemoryError):
        return "Out of memory. Compute the current plane only, or use a smaller tile size or backbone."
    return f"{type(error).__name__}: {error} (details in the terminal log)."


def notify_error(error: BaseException) -> None:
    """Show ``error`` as a napari error notification (no traceback dialog); log the traceback."""
    if not isinstance(error, HRDv2Error):
        logger.error("HR-Dv2 job failed", exc_info=error)
    show_error(f"HR-Dv2: {user_message(error)}")


class JobRunner:
    """Runs a widget's jobs; keeps the list of active workers and reports busy/idle changes.

    Parameters
    ----------
    on_busy : called with True when the first job starts and False when the last one finishes.
    on_status : called with short status texts (progress messages, errors, "Cancelled").
    """

    def __init__(self, on_busy: Callable[[bool], None], on_status: Callable[[str], None]):
        self._on_busy = on_busy
        self._on_status = on_status
        self.active: list[GeneratorWorker] = []

    @property
    def busy(self) -> bool:
        return bool(self.active)

    def start(
        self,
        job: Callable[..., Any],
        *args: Any,
        description: str,
        on_returned: Callable[[Any], None],
        quiet_errors: bool = False,
        **kwargs: Any,
    ) -> GeneratorWorker:
        """Start ``job(*args, **kwargs)`` in a thread worker with a napari progress bar; returns the worker.

        ``on_returned`` runs on the main thread with the job's result. Errors become notifications
        (or only a status text with ``quiet_errors``, for background live updates).
        """
        worker = create_worker(
            job, *args, _worker_class=QuietGeneratorWorker, _ignore_errors=True, _start_thread=False, **kwargs
        )
        bar = progress(total=PROGRESS_STEPS, desc=description)
        # Updating a napari progress bar can process pending Qt events, so a later signal of this worker
        # (its result, or the next progress step) may be handled inside an earlier one's handler. `ended`
        # makes progress that arrives after the result/error/abort a no-op, so the final status stays.
        ended = [False]
        worker.yielded.connect(partial(self._on_progress, bar, ended))
        worker.returned.connect(partial(self._on_returned, ended, on_returned))
        worker.errored.connect(partial(self._on_error, ended, quiet=quiet_errors))
        worker.aborted.connect(partial(self._on_aborted, ended, f"{description}: cancelled."))
        worker.finished.connect(partial(self._on_finished, worker, bar, ended))
        was_busy = self.busy
        self.active.append(worker)
        if not was_busy:
            self._on_busy(True)
        self._on_status(f"{description}...")
        worker.start()
        return worker

    def cancel(self) -> None:
        """Ask every active job to stop at its next step."""
        for worker in list(self.active):
            worker.quit()

    def _on_progress(self, bar: progress, ended: list[bool], update: Any) -> None:
        if ended[0] or not isinstance(update, Progress):
            return
        self._on_status(update.message)  # before touching the bar (see start)
        target = int(round(min(max(update.fraction, 0.0), 1.0) * PROGRESS_STEPS))
        bar.set_description(update.message)
        if target > bar.n:
            bar.update(target - bar.n)

    def _on_returned(self, ended: list[bool], on_returned: Callable[[Any], None], result: Any) -> None:
        ended[0] = True
        try:
            on_returned(result)
        except Exception as error:  # noqa: BLE001 - e.g. a layer the user changed meanwhile: a message, not a crash
            self._on_status(user_message(error))
            notify_error(error)

    def _on_error(self, ended: list[bool], error: BaseException, *, quiet: bool) -> None:
        ended[0] = True
        self._on_status(user_message(error))
        if not quiet:
            notify_error(error)

    def _on_aborted(self, ended: list[bool], message: str) -> None:
        ended[0] = True
        self._on_status(message)

    def _on_finished(self, worker: GeneratorWorker, bar: progress, ended: list[bool]) -> None:
        ended[0] = True
        bar.close()
        if worker in self.active:
            self.active.remove(worker)
        if not self.active:
            self._on_busy(False)
