"""Start generator jobs in napari thread workers: progress, partial results, errors, cancellation, shutdown.

A job belongs to the layer it reads (its *source*): when that layer is removed the job is cancelled and
whatever it still yields or returns is dropped. When the dock (or the viewer window) closes, every job is
cancelled and the runner waits a little for them, so no worker touches a deleted widget afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from napari.qt.threading import GeneratorWorker, create_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_info, show_warning

from .._layers import recording_results
from ..core.errors import HRDv2Error
from ..core.progress import Progress

logger = logging.getLogger(__name__)

#: Resolution of the napari progress bars (fractions are mapped to 0..PROGRESS_STEPS).
PROGRESS_STEPS = 1000
#: How long closing a dock or the viewer waits for running jobs to stop (seconds).
SHUTDOWN_WAIT_S = 5.0


class QuietGeneratorWorker(GeneratorWorker):
    """A napari generator worker whose errors are shown by the widget (a message with the fix).

    napari's own worker relays every exception to the notification manager with a traceback;
    expected problems (missing weights, bad shapes, out of memory) deserve a plain message instead.
    ``done`` is set when the worker thread has emitted its last signal.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.done = threading.Event()

    def run(self) -> None:  # noqa: D401 - Qt hook
        """Run the job, then mark it done (also on errors and aborts)."""
        try:
            super().run()
        finally:
            self.done.set()

    def _relay_error(self, exc: Exception) -> None:  # noqa: D401 - napari hook
        """Do nothing: :class:`JobRunner` shows the error."""


def user_message(error: BaseException) -> str:
    """What to tell the user about ``error``: our messages as they are, others with a hint."""
    if isinstance(error, HRDv2Error):
        return str(error)
    from ..core.runtime.devices import is_out_of_memory

    if is_out_of_memory(error):
        return (
            "Out of memory. Pick a smaller tile size or backbone, the 'fast' quality preset, "
            "or the cpu device in HR-Dv2 Features' advanced settings, then try again."
        )
    if isinstance(error, MemoryError):
        return "Out of memory. Compute the current plane only, or use a smaller tile size or backbone."
    return f"{type(error).__name__}: {error} (details in the terminal log)."


#: Characters of a headline that napari's collapsed notification (one line of a 400 px toast) shows whole.
TOAST_HEADLINE_CHARS = 27
_CLAUSE_END = re.compile(r"(: |\. |; | \(|, |\.$)")


def first_clause(message: str) -> str | None:
    """The first clause of ``message`` (up to ": ", ". ", "; ", " (" or ", ") if it fits a collapsed toast."""
    first = _CLAUSE_END.split(" ".join(message.split()), maxsplit=1)[0].strip()
    return first if len(first) <= TOAST_HEADLINE_CHARS else None


def toast_text(message: str, *, headline: str | None = None) -> str:
    """The text of a notification: a headline that fits the collapsed toast, then the whole ``message``.

    napari shows a notification as one elided line until the user expands it, so a long message would be
    cut mid-sentence. The headline is ``headline`` if given, else the message's :func:`first_clause`, else
    the first words that fit followed by "...". The full message follows on the next lines (and stays in
    the dock's message line).
    """
    message = " ".join(message.split())
    headline = headline or first_clause(message)
    if headline is None:
        headline = message[: TOAST_HEADLINE_CHARS - 3].rsplit(" ", 1)[0] + "..."
    if headline.rstrip(".") == message.rstrip("."):
        return f"HR-Dv2: {message}"
    return f"HR-Dv2: {headline}\n{message}"


def notify(message: str, *, severity: str = "info", headline: str | None = None) -> None:
    """Show ``message`` as a napari notification of ``severity`` ("info", "warning" or "error"), headline first."""
    show = {"info": show_info, "warning": show_warning, "error": show_error}[severity]
    show(toast_text(message, headline=headline))


def notify_error(error: BaseException, *, headline: str | None = None) -> None:
    """Show ``error`` as a napari error notification (no traceback dialog); log the traceback."""
    if not isinstance(error, HRDv2Error):
        logger.error("HR-Dv2 job failed", exc_info=error)
    notify(user_message(error), severity="error", headline=headline or getattr(error, "headline", None))


def _failure_headline(description: str, error: BaseException) -> str | None:
    """The error's first clause if it fits a collapsed notification, else "<job> failed" if that fits."""
    if getattr(error, "headline", None) or first_clause(user_message(error)) is not None:
        return None
    headline = f"{description} failed"
    return headline if len(headline) <= TOAST_HEADLINE_CHARS else None


def _unwrapped(layer: Any) -> Any:
    """The layer itself, not napari's public-API proxy of it (plugins may be handed proxies)."""
    return getattr(layer, "__wrapped__", layer)


def format_duration(seconds: float) -> str:
    """'12 s', '3 min', '1 h 05 min' (rounded for humans)."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{max(1, round(seconds))} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


@dataclass
class _Job:
    """Book-keeping of one started worker."""

    worker: QuietGeneratorWorker
    description: str
    bar: Any
    source: weakref.ref | None
    on_returned: Callable[[Any], None]
    on_yielded: Callable[[Any], None] | None
    quiet_errors: bool
    started: float = field(default_factory=time.monotonic)
    #: (time, fraction) when the first real step (after loading the backbone) reported progress.
    first_step: tuple[float, float] | None = None
    ended: bool = False
    dropped: bool = False

    def source_alive(self, is_alive: Callable[[Any], bool]) -> bool:
        if self.source is None:
            return True
        layer = self.source()
        return layer is not None and is_alive(layer)


class JobRunner:
    """Runs a widget's jobs; keeps the active workers and reports busy/idle, progress and errors.

    Parameters
    ----------
    on_busy : called with True when the first job starts and False when the last one finishes.
    on_status : called with short status texts (progress messages, errors, "Cancelled").
    on_progress : called with (fraction in [0, 1], message, remaining seconds or None) on every step.
    on_error : called with the exception of a failed job (after the notification).
    is_alive : tells whether a source layer is still in the viewer (results of removed ones are dropped).
    on_results : called with the (layer, shown by design) pairs that a job's result handler made or updated
        (see :func:`.._layers.recording_results`), to bring them into view.
    status_now : returns the status line as shown now. Every job ends with a final status line: the one its
        result handler wrote, else "<description>: done." (or "cancelled", "stopped", "failed: ...").
    """

    def __init__(
        self,
        on_busy: Callable[[bool], None],
        on_status: Callable[[str], None],
        *,
        on_progress: Callable[[float, str, float | None], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        is_alive: Callable[[Any], bool] | None = None,
        on_results: Callable[[list[tuple[Any, bool]]], None] | None = None,
        status_now: Callable[[], str] | None = None,
    ):
        self._on_busy = on_busy
        self._on_status = on_status
        self._on_progress_cb = on_progress
        self._on_error_cb = on_error
        self._is_alive = is_alive or (lambda layer: True)
        self._on_results = on_results
        self._status_now = status_now
        self._jobs: list[_Job] = []
        self.closed = False

    @property
    def active(self) -> list[GeneratorWorker]:
        return [job.worker for job in self._jobs]

    @property
    def busy(self) -> bool:
        return bool(self._jobs)

    def start(
        self,
        job: Callable[..., Any],
        *args: Any,
        description: str,
        on_returned: Callable[[Any], None],
        on_yielded: Callable[[Any], None] | None = None,
        source: Any = None,
        quiet_errors: bool = False,
        **kwargs: Any,
    ) -> GeneratorWorker | None:
        """Start ``job(*args, **kwargs)`` in a thread worker with a napari progress bar; returns the worker.

        ``on_returned`` runs on the main thread with the job's result and ``on_yielded`` with every
        yielded item that is not a :class:`~..core.progress.Progress` (partial results); both are skipped once
        ``source`` (a layer) has left the viewer. Errors become notifications (or only a status
        text with ``quiet_errors``, for background live updates).
        """
        if self.closed:
            return None
        worker = create_worker(
            job, *args, _worker_class=QuietGeneratorWorker, _ignore_errors=True, _start_thread=False, **kwargs
        )
        bar = progress(total=PROGRESS_STEPS, desc=description)
        entry = _Job(
            worker=worker,
            description=description,
            bar=bar,
            source=weakref.ref(_unwrapped(source)) if source is not None else None,
            on_returned=on_returned,
            on_yielded=on_yielded,
            quiet_errors=quiet_errors,
        )
        # Updating a napari progress bar can process pending Qt events, so a later signal of this worker
        # (its result, or the next progress step) may be handled inside an earlier one's handler. `ended`
        # makes progress that arrives after the result/error/abort a no-op, so the final status stays.
        worker.yielded.connect(partial(self._on_yielded, entry))
        worker.returned.connect(partial(self._on_returned, entry))
        worker.errored.connect(partial(self._on_error, entry))
        worker.aborted.connect(partial(self._on_aborted, entry))
        worker.finished.connect(partial(self._on_finished, entry))
        was_busy = self.busy
        self._jobs.append(entry)
        if not was_busy:
            self._on_busy(True)
        self._on_status(f"{description}...")
        if self._on_progress_cb is not None:
            self._on_progress_cb(0.0, f"{description}...", None)
        worker.start()
        return worker

    # ------------------------------------------------------------------ cancellation
    def cancel(self) -> None:
        """Ask every active job to stop at its next step."""
        for job in list(self._jobs):
            job.worker.quit()

    def cancel_for(self, layer: Any) -> int:
        """Cancel the jobs reading ``layer`` and drop their results; returns how many were cancelled."""
        cancelled = 0
        layer = _unwrapped(layer)
        for job in list(self._jobs):
            if job.source is not None and job.source() is layer:
                job.dropped = True
                job.worker.quit()
                cancelled += 1
        return cancelled

    def shutdown(self, wait_s: float = SHUTDOWN_WAIT_S) -> bool:
        """Cancel every job, stop reporting to the widget and wait up to ``wait_s`` for the jobs to stop.

        Returns True when every job stopped in time. Called when the dock or the viewer closes.
        """
        self.closed = True
        workers = [job.worker for job in self._jobs]
        for job in self._jobs:
            job.dropped = True
            job.worker.quit()
        deadline = time.monotonic() + wait_s
        for worker in workers:
            worker.done.wait(max(0.0, deadline - time.monotonic()))
        return all(worker.done.is_set() for worker in workers)

    # ------------------------------------------------------------------ worker signals (main thread)
    def _usable(self, job: _Job) -> bool:
        """Whether a job's reports still concern someone: the widget is open and its source layer is there."""
        if self.closed or job.dropped:
            return False
        if not job.source_alive(self._is_alive):
            job.dropped = True
            job.worker.quit()
            return False
        return True

    def _on_yielded(self, job: _Job, update: Any) -> None:
        if job.ended or not self._usable(job):
            return
        if not isinstance(update, Progress):
            if job.on_yielded is not None:
                self._call(job.on_yielded, update, reveal=True)
            return
        fraction = min(max(update.fraction, 0.0), 1.0)
        remaining = self._remaining(job, fraction, update)
        # Step messages go to the progress bars (the dock's and napari's); the status line keeps what matters.
        if self._on_progress_cb is not None:
            self._on_progress_cb(fraction, update.message, remaining)
        else:
            self._on_status(update.message)
        self._update_bar(job, fraction, update.message)

    @staticmethod
    def _remaining(job: _Job, fraction: float, update: Progress) -> float | None:
        """Seconds left, extrapolated from the steps since loading ended (loading time is not a step)."""
        now = time.monotonic()
        if job.first_step is None:
            if not update.message.startswith("Loading"):
                job.first_step = (now, fraction)
            return None
        since, start_fraction = job.first_step
        done = fraction - start_fraction
        if done <= 1e-6 or fraction >= 1.0:
            return None
        return (now - since) * (1.0 - fraction) / done

    @staticmethod
    def _update_bar(job: _Job, fraction: float, message: str) -> None:
        try:
            target = int(round(fraction * PROGRESS_STEPS))
            job.bar.set_description(message)
            if target > job.bar.n:
                job.bar.update(target - job.bar.n)
        except RuntimeError:  # the activity dock was deleted with the window
            pass

    def _call(self, callback: Callable[[Any], None], value: Any, *, reveal: bool = False) -> bool:
        """Run a result handler; the layers it made or updated come into view. False if it failed."""
        try:
            with recording_results() as made:
                callback(value)
        except Exception as error:  # noqa: BLE001 - e.g. a layer the user changed meanwhile: a message, not a crash
            self._on_status(user_message(error))
            notify_error(error)
            return False
        if reveal and self._on_results is not None and made:
            self._call_quietly(self._on_results, made)
        return True

    @staticmethod
    def _call_quietly(callback: Callable[[Any], None], value: Any) -> None:
        try:
            callback(value)
        except Exception:  # noqa: BLE001 - showing results must never turn a finished job into an error
            logger.warning("HR-Dv2 could not bring results into view", exc_info=True)

    def _on_returned(self, job: _Job, result: Any) -> None:
        job.ended = True
        if not self._usable(job):
            return
        before = self._status_now() if self._status_now is not None else None
        if not self._call(job.on_returned, result, reveal=True):
            return
        if self._status_now is None or self._status_now() in (before, f"{job.description}..."):
            self._on_status(f"{job.description}: done.")

    def _on_error(self, job: _Job, error: BaseException) -> None:
        job.ended = True
        if self.closed or job.dropped:
            logger.info("HR-Dv2 job ended with %r after it was cancelled", error)
            return
        self._on_status(f"{job.description} failed: {user_message(error)}")
        if not job.quiet_errors:
            notify_error(error, headline=_failure_headline(job.description, error))
        if self._on_error_cb is not None:
            self._on_error_cb(error)

    def _on_aborted(self, job: _Job) -> None:
        job.ended = True
        if self.closed:
            return
        self._on_status(f"{job.description}: cancelled." if not job.dropped else f"{job.description}: stopped.")

    def _on_finished(self, job: _Job) -> None:
        job.ended = True
        with contextlib.suppress(RuntimeError):  # the activity dock may be gone with the window
            job.bar.close()
        if job in self._jobs:
            self._jobs.remove(job)
        if not self._jobs and not self.closed:
            self._on_busy(False)
