"""Thread counts of the interactive steps: idle cores, at least 1, restored afterwards."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
import torch

from napari_hrdv2.core.runtime import threads
from napari_hrdv2.core.runtime.threads import available_cores, interactive_thread_count, interactive_threads


@pytest.mark.parametrize(("elsewhere", "expected"), [(0, 2), (1, 1), (2, 1), (7, 1), (None, 2)])
def test_thread_count_is_the_idle_cores_between_one_and_the_default(monkeypatch, elsewhere, expected):
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert interactive_thread_count(2, elsewhere=elsewhere) == expected
    assert interactive_thread_count(1, elsewhere=0) == 1  # never more than torch's count


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/loadavg is Linux only")
def test_busy_cores_are_seen():
    """With one busy process per core, an interactive step gets one thread."""
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(available_cores())]
    try:
        time.sleep(0.5)
        assert threads.runnable_elsewhere() >= available_cores()
        if not threads.openmp_waits_passive():
            assert interactive_thread_count(4) == 1
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()


def test_context_sets_and_restores_the_count_of_this_thread_only(monkeypatch):
    monkeypatch.setattr(threads, "interactive_thread_count", lambda default: 1)
    previous = torch.get_num_threads()
    seen_elsewhere = []
    other_ready, other_check = threading.Event(), threading.Event()

    def other_worker() -> None:  # an already running worker (e.g. an encoding) keeps its count
        torch.ones(1 << 16).sum()  # torch sets up a thread's count on its first parallel operation
        other_ready.set()
        other_check.wait(5)
        seen_elsewhere.append(torch.get_num_threads())

    worker = threading.Thread(target=other_worker)
    worker.start()
    other_ready.wait(5)
    with interactive_threads() as count:
        assert count == 1 and torch.get_num_threads() == 1
        other_check.set()
        worker.join(5)
    assert torch.get_num_threads() == previous
    assert seen_elsewhere == [previous]
    with interactive_threads(threads=1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == previous


def test_a_worker_started_during_a_lowered_step_gets_the_usual_count_back(monkeypatch):
    monkeypatch.setattr(threads, "interactive_thread_count", lambda default: 1)
    usual = torch.get_num_threads()
    seen = []

    def new_worker() -> None:  # first torch use while the count is lowered: it inherits 1
        seen.append(torch.get_num_threads())
        threads.restore_usual_threads()  # what every forward pass of an encoding does first
        seen.append(torch.get_num_threads())

    with interactive_threads():
        worker = threading.Thread(target=new_worker)
        worker.start()
        worker.join(5)
    assert seen == [1, usual]


def test_passive_waits_keep_the_default_count(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "passive")
    assert interactive_thread_count(2, elsewhere=7) == 2


@pytest.mark.parametrize(
    ("code", "env", "expected"),
    [
        ("", {}, "True PASSIVE"),  # torch not loaded yet: set
        ("", {"OMP_WAIT_POLICY": "ACTIVE"}, "False ACTIVE"),  # the user's choice wins
        ("import torch;", {}, "False None"),  # too late: OpenMP has read its settings
    ],
)
def test_prefer_passive_openmp_only_before_torch_loads(code, env, expected):
    import os

    script = f"{code}from napari_hrdv2.core.runtime.threads import prefer_passive_openmp as p; import os; "
    script += "print(p(), os.environ.get('OMP_WAIT_POLICY'))"
    child_env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | env
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=child_env, check=True)
    assert out.stdout.strip() == expected
