"""The one progress type and its driver/adapters (core.progress)."""

import threading

import pytest

from napari_hrdv2.core.errors import Cancelled
from napari_hrdv2.core.progress import Progress, relabel, run_steps, within


def counting(n, closed):
    try:
        for i in range(n):
            yield Progress(i, n, f"step {i}")
        return "result"
    finally:
        closed.append(True)


def test_within_maps_sub_progress_into_a_part_of_the_task():
    closed = []

    def outer():
        result = yield from within(counting(4, closed), 2, 1, total=10, message="sub")
        yield Progress(10, 10, "done")
        return result

    seen = []
    assert run_steps(outer(), progress=seen.append) == "result"
    assert [(p.done, p.total, p.message) for p in seen] == [
        (2.0, 10, "sub"), (2.25, 10, "sub"), (2.5, 10, "sub"), (2.75, 10, "sub"), (10, 10, "done"),
    ]  # fmt: skip
    assert closed == [True]


def test_closing_an_adapter_closes_the_sub_task():
    closed = []
    steps = relabel(counting(5, closed), lambda p: Progress(p.done, p.total, "x"))
    assert next(steps).message == "x"
    steps.close()
    assert closed == [True]


def test_run_steps_cancels_and_closes_the_generator():
    closed, cancel, seen = [], threading.Event(), []

    def on_progress(update):
        seen.append(update.done)
        if update.done == 1:
            cancel.set()

    with pytest.raises(Cancelled):
        run_steps(counting(5, closed), progress=on_progress, cancel=cancel)
    assert seen == [0, 1] and closed == [True]


def test_fraction_is_clipped_and_defined_for_empty_tasks():
    assert Progress(3, 4).fraction == 0.75
    assert Progress(0, 0).fraction == 1.0
    assert Progress(5, 4).fraction == 1.0
