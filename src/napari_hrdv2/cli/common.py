"""What every ``napari-hrdv2`` command shares: exit codes, messages, errors, progress bars, output checks.

Torch-free at import (``--help`` stays instant); heavy modules are imported inside the functions.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from ..core.features.encoding import Encoding, Featurizer
    from ..core.progress import Progress

PROG = "napari-hrdv2"

#: Exit codes.
EXIT_OK = 0
EXIT_FAILED_INPUTS = 1  # segment: some inputs could not be processed (the others were written)
EXIT_USAGE = 2  # bad options or input (missing file, wrong label shape, existing output...)
EXIT_WEIGHTS = 3  # backbone weights not found (offline, wrong path, checksum mismatch)
EXIT_MODEL = 4  # the model file is missing, corrupt or does not fit
EXIT_UNEXPECTED = 5  # a bug: an error the package did not anticipate (still one line; --debug shows it)
EXIT_INTERRUPTED = 130  # Ctrl-C

EPILOG = (
    "Exit codes: 0 success, 1 some inputs failed (segment; the others were written), 2 bad options or "
    "input, 3 backbone weights not found, 4 model file missing or corrupt, 5 unexpected error (a bug), "
    "130 interrupted. "
    "Add --debug to see the traceback of an error."
)


# ---------------------------------------------------------------------------------------------- messages
def say(args: argparse.Namespace, message: str) -> None:
    """A summary line on stdout (not with ``--quiet``)."""
    if not args.quiet:
        print(message, flush=True)


def say_precision(args: argparse.Namespace, featurizer: Any) -> None:
    """``--verbose``: the device and compute dtype of ``featurizer`` and why (e.g. native bfloat16 on this CPU)."""
    if getattr(args, "verbose", False):
        print(f"{PROG}: device and compute dtype: {featurizer.precision}", file=sys.stderr, flush=True)


def print_error(args: argparse.Namespace, message: str, *, show_traceback: bool = True) -> None:
    """``napari-hrdv2: error: <message on one line>`` on stderr; ``--debug`` adds the traceback."""
    if show_traceback and getattr(args, "debug", False):
        traceback.print_exc()
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)


def print_failures(failed: Sequence[tuple[Any, str]]) -> None:
    """One ``napari-hrdv2: failed: <path>: <reason>`` line on stderr per input that failed."""
    for path, reason in failed:
        print(f"{PROG}: failed: {path}: {' '.join(reason.split())}", file=sys.stderr)


@contextmanager
def one_line_warnings() -> Iterator[None]:
    """Warnings of the package and its libraries as ``napari-hrdv2: warning: ...`` lines on stderr."""
    import warnings

    def show(message: Warning | str, category: type[Warning], *_args: Any, **_kwargs: Any) -> None:
        print(f"{PROG}: warning: {' '.join(str(message).split())}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


def describe_error(err: BaseException) -> tuple[int, str]:
    """The exit code and the one-line message of an error that ended a command.

    Errors of the package (:class:`HRDv2Error`) carry their own message; the others are mapped by
    class (out of memory, file system), and anything unexpected still gives one line.
    """
    from ..core.errors import Cancelled, HRDv2Error, ModelFileError, WeightsNotFoundError

    for kind, code in ((Cancelled, EXIT_INTERRUPTED), (WeightsNotFoundError, EXIT_WEIGHTS),
                       (ModelFileError, EXIT_MODEL), (HRDv2Error, EXIT_USAGE)):  # fmt: skip
        if isinstance(err, kind):
            return code, str(err)
    if isinstance(err, MemoryError) or (isinstance(err, RuntimeError) and is_allocation_error(err)):
        return EXIT_USAGE, (
            "Out of memory. Use --preset fast (fewer passes), --storage-dtype float16, a smaller backbone, "
            "or crop the image into parts."
        )
    if isinstance(err, OSError):
        where = f": '{err.filename}'" if getattr(err, "filename", None) else ""
        return EXIT_USAGE, f"{err.strerror}{where}." if err.strerror else str(err) or type(err).__name__
    text = " ".join(str(err).split())
    text = text if len(text) < 300 else text[:300] + "..."
    return EXIT_UNEXPECTED, (
        f"unexpected {type(err).__name__}: {text or 'no message'} (a bug: add --debug for the traceback and "
        "please report it)."
    )


def is_allocation_error(err: BaseException) -> bool:
    """True for a RuntimeError that reports an allocation failure (torch's CPU or GPU out of memory)."""
    text = str(err).lower()
    return "out of memory" in text or "can't allocate" in text or "cannot allocate" in text


# ---------------------------------------------------------------------------------------------- progress
def progress_enabled(args: argparse.Namespace) -> bool:
    """``--progress`` / ``--no-progress`` / ``--quiet``; by default only when stderr is a terminal."""
    if args.quiet or args.progress is False:
        return False
    if args.progress:
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # pragma: no cover (closed or replaced stderr)
        return False


@contextmanager
def library_progress_bars(enabled: bool) -> Iterator[None]:
    """Hide transformers' and huggingface_hub's own bars ("Loading weights") when ours are hidden."""
    if enabled:
        yield
        return
    from transformers.utils import logging as transformers_logging

    was_enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            transformers_logging.enable_progress_bar()


def plural(unit: str, count: float) -> str:
    """``unit`` for one, else its plural (``pass`` -> ``passes``, ``image`` -> ``images``)."""
    if count == 1:
        return unit
    return unit + ("es" if unit.endswith(("s", "x", "sh", "ch")) else "s")


def format_count(done: float, total: float | None, unit: str) -> str:
    """Whole items done (of ``total``): ``"1/2 images"``, never ``"1.3333333333333333/2"``.

    ``done`` may be fractional (a partly processed image); it is rounded down, so an item is only
    counted once it is finished.
    """
    whole = int(max(done, 0) + 1e-9)
    if total is None or total <= 0:
        return f"{whole} {plural(unit, whole)}"
    count = int(round(total))
    return f"{min(whole, count)}/{count} {plural(unit, count)}"


def format_duration(seconds: float) -> str:
    """A duration for people: ``"0.4 s"``, ``"12 s"``, ``"1 min 54 s"``, ``"2 h 05 min"``."""
    seconds = max(float(seconds), 0.0)
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = int(round(seconds))
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def format_pace(rate: float | None, unit: str) -> str:
    """Speed from ``rate`` items per second: ``"1 min 54 s/image"`` when slow, ``"3.2 passes/s"`` when fast."""
    if not rate or rate <= 0:
        return ""
    if rate >= 1:
        return f"{rate:.1f} {plural(unit, 2)}/s"
    return f"{format_duration(1 / rate)}/{unit}"


#: Layout of every bar: "desc: 50%|█████     | 1/2 images [00:57<00:57, 57 s/image]".
BAR_FORMAT = "{l_bar}{bar}| {count} [{elapsed}<{remaining}{pace}]"


def _bar_class() -> type:
    """tqdm with whole-item counts and a readable pace (tqdm's are raw floats such as 114.38s/image)."""
    from tqdm.auto import tqdm

    class CountingBar(tqdm):  # type: ignore[misc, valid-type]
        @property
        def format_dict(self) -> dict[str, Any]:
            values = super().format_dict
            pace = format_pace(values.get("rate") or self._average_rate(values), values["unit"])
            values["count"] = format_count(values["n"], values["total"], values["unit"])
            values["pace"] = f", {pace}" if pace else ""
            return values

        @staticmethod
        def _average_rate(values: dict[str, Any]) -> float | None:
            elapsed = values.get("elapsed") or 0
            return values["n"] / elapsed if elapsed > 0 and values["n"] > 0 else None

    return CountingBar


def progress_bar(args: argparse.Namespace, *, unit: str, bar_format: str = BAR_FORMAT, **kwargs: Any) -> Any:
    """A tqdm bar on stderr (hidden unless :func:`progress_enabled`) counting whole ``unit`` items."""
    return _bar_class()(
        file=sys.stderr,
        disable=not progress_enabled(args),
        dynamic_ncols=True,
        leave=False,
        unit=unit,
        bar_format=bar_format,
        **kwargs,
    )


def progress_callback(args: argparse.Namespace, unit: str) -> tuple[Callable[[Progress], None], Callable[[], None]]:
    """``(show, close)``: ``show(progress)`` drives a bar (made on the first update), ``close()`` ends it.

    The bar's description follows ``progress.message``; ``done`` may be fractional (shown whole).
    """
    state: dict[str, Any] = {"bar": None}

    def show(update: Progress) -> None:
        if state["bar"] is None:
            state["bar"] = progress_bar(args, total=update.total or None, unit=unit)
        bar = state["bar"]
        if update.total and bar.total != update.total:
            bar.total = update.total
        if update.message:
            bar.set_description_str(update.message, refresh=False)
        bar.update(update.done - bar.n)

    def close() -> None:
        if state["bar"] is not None:
            state["bar"].close()

    return show, close


@contextmanager
def status(args: argparse.Namespace, message: str) -> Iterator[None]:
    """Show ``message`` on stderr (where progress is shown) while a step without progress runs."""
    bar = progress_bar(args, total=None, unit="step", desc=message, bar_format="{desc}...")
    try:
        yield
    finally:
        bar.close()


def encode_with_progress(
    args: argparse.Namespace, featurizer: Featurizer, plane: np.ndarray, desc: str, *, with_attention: bool
) -> Encoding:
    """Encode one plane with a progress bar driven by ``Featurizer.iter_encode``."""
    from ..core.progress import run_steps

    bar = None

    def show(update: Progress) -> None:
        nonlocal bar
        if bar is None:
            bar = progress_bar(args, total=update.total, desc=desc, unit="pass")
        bar.update(update.done - bar.n)

    try:
        return run_steps(featurizer.iter_encode(plane, with_attention=with_attention), progress=show)
    finally:
        if bar is not None:
            bar.close()


# ---------------------------------------------------------------------------------------------- outputs
def check_output(path: str | Path, suffixes: Sequence[str], option: str, overwrite: bool) -> Path:
    """``path`` as a Path, if it ends with one of ``suffixes`` and may be written (see ``check_target``)."""
    from ..core.errors import InputError
    from ..core.files.atomic import check_target

    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise InputError(f"{option} '{path}' must end with {' or '.join(suffixes)}.")
    return check_target(path, overwrite=overwrite, what=f"{option} output")


def check_folders(needed: dict[Any, int]) -> None:
    """Pre-flight: the folder of every output path (``None`` keys ignored) is writable and has room for it."""
    from ..core.files.atomic import check_output_folder

    totals: dict[Path, int] = {}
    for path, n_bytes in needed.items():
        if path:
            folder = Path(path).parent
            totals[folder] = totals.get(folder, 0) + int(n_bytes)
    for folder, n_bytes in totals.items():
        check_output_folder(folder, n_bytes)
