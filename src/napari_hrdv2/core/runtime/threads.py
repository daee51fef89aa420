"""Thread counts for the interactive CPU steps (retrain, predict a plane, PCA of a plane, similarity).

Every large torch operation on the CPU is an OpenMP parallel region whose threads wait for each
other at its end. On a machine whose cores are busy with other work, one of those threads is often
descheduled, and every region then lasts a scheduler time slice: an L-BFGS retrain runs thousands
of such regions, and ``benchmarks/bench_cpu.py`` measured it several times slower with torch's
default two threads than with one thread while two other processes kept the two cores busy.

:func:`interactive_threads` therefore runs a step with as many threads as there are idle cores
(at least one, at most torch's count), judged from the number of runnable tasks the kernel
reports at that moment (``/proc/loadavg`` on Linux; elsewhere torch's count is kept). Long
encodings keep torch's own count: they are dominated by large matrix products, and they are not
interactive.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

#: Where Linux reports the number of runnable tasks (4th field, "running/total").
_LOADAVG = "/proc/loadavg"


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def runnable_elsewhere(samples: int = 3, interval: float = 0.001) -> int | None:
    """Runnable tasks other than the calling thread, the largest of a few samples; None where unknown.

    Reads the "running" count of ``/proc/loadavg`` (all runnable threads of the system, the reader
    included) ``samples`` times ``interval`` seconds apart: a single sample is noisy, and counting too
    few competitors costs much more (a stalled parallel region) than counting too many (one thread).
    """
    counts = []
    for i in range(samples):
        try:
            with open(_LOADAVG) as handle:
                running = int(handle.read().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return None
        counts.append(running - 1)
        if i + 1 < samples:
            time.sleep(interval)
    return max(counts)


def openmp_waits_passive() -> bool:
    """True if this process's OpenMP threads sleep while they wait (``OMP_WAIT_POLICY=PASSIVE``)."""
    return os.environ.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE"


def prefer_passive_openmp() -> bool:
    """Let idle OpenMP threads sleep instead of spinning (for the napari process); returns whether they do.

    OpenMP reads ``OMP_WAIT_POLICY`` once, when torch loads it, so this only has an effect before
    torch is imported, and it never overrides a value the user set. ``benchmarks/bench_cpu.py``
    (threads): retrain + predict of a 1022 x 1022 plane with two torch threads took 65 s with
    spinning waits and 7.9 s with passive ones on a heavily shared 2-core machine (load 12-17),
    and 182 s vs 24 s with two more busy processes; one thread took 12.9 s / 47 s there.
    """
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return openmp_waits_passive()


def interactive_thread_count(default: int | None = None, *, elsewhere: int | None = -1) -> int:
    """Threads for an interactive step now: the idle cores, between 1 and ``default`` (torch's count).

    With passive OpenMP waits (:func:`prefer_passive_openmp`) ``default`` is kept: sleeping threads
    cost a busy machine nothing, and two passive threads beat one thread there (see above). With
    spinning waits, threads beyond the idle cores stall every parallel region.
    ``elsewhere`` is the number of other runnable tasks (``-1``: read it, :func:`runnable_elsewhere`;
    ``None``: unknown, keep ``default``).
    """
    if default is None:
        import torch

        default = torch.get_num_threads()
    if openmp_waits_passive():
        return default
    if elsewhere == -1:
        elsewhere = runnable_elsewhere()
    if elsewhere is None:
        return default
    return max(1, min(default, available_cores() - elsewhere))


#: The thread count interactive steps found before lowering it (the user's or torch's own count).
_usual_threads: int | None = None


@contextmanager
def interactive_threads(threads: int | None = None) -> Iterator[int]:
    """Run the block with :func:`interactive_thread_count` torch threads (or ``threads``); yields the count.

    Usable as a decorator. Restores the calling thread's previous count afterwards. torch's count is
    per thread for threads that have already run torch code, so a concurrent encoding in another
    worker keeps its own; a thread that starts using torch while the count is lowered inherits the
    lower count, which :func:`restore_usual_threads` undoes at the start of an encoding.
    """
    import torch

    global _usual_threads
    previous = torch.get_num_threads()
    _usual_threads = previous
    count = interactive_thread_count(previous) if threads is None else max(1, int(threads))
    if count != previous:
        torch.set_num_threads(count)
    try:
        yield count
    finally:
        if count != previous:
            torch.set_num_threads(previous)


def restore_usual_threads() -> None:
    """Give the calling thread back the usual count if it inherited a lowered one (see :func:`interactive_threads`)."""
    if _usual_threads is None:
        return
    import torch

    if torch.get_num_threads() < _usual_threads:
        torch.set_num_threads(_usual_threads)
