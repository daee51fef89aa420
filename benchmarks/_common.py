"""Shared helpers for the benchmark scripts (``bench_features.py``, ``bench_defaults.py``, ``bench_segment.py``).

Everything here is small and dependency-light on purpose:

- :func:`random_vits14` builds a randomly initialised DINOv2 ViT-S/14 (384 dims, 12 layers,
  6 heads, 518 px native grid) once, saves it with ``save_pretrained`` into a cache folder
  (``$HRDV2_BENCH_CACHE`` or ``~/.cache/napari-hrdv2-bench``) and returns that folder, which is
  then passed as ``FeatureConfig(backbone=...)`` exactly like a user's local weights.
  :func:`backbone_or_random` turns a ``--backbone`` option into a path/id (None = random ViT-S).
- :data:`SHARED_DATA`, :func:`read_grey`, :func:`read_index_labels`, :func:`nasa_pairs`: the real
  micrographs in ``/work/shared/data`` (see its README).
- :func:`run_with_peak_rss`: run a Python snippet in a fresh interpreter and return its stdout and
  its own peak resident set size (:func:`peak_rss_self`: ``VmHWM``, not ``ru_maxrss``, which on
  Linux inherits the parent's size through fork + exec).
- :func:`timed`, :func:`median`: wall-clock timing with repeats (the benchmark machine is shared:
  always report medians and ratios measured in the same run).
- :func:`print_table`, :func:`machine_line`: plain-text output.

Random weights give the speed and memory of the real model (same shapes) but not DINOv2 feature
quality; every script prints that caveat when it uses them.
"""

from __future__ import annotations

import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: Real micrographs shared by the project (``../shared/data`` relative to the repository).
SHARED_DATA = Path(os.environ.get("HRDV2_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
#: Where the random benchmark model is saved once.
CACHE_DIR = Path(os.environ.get("HRDV2_BENCH_CACHE", Path.home() / ".cache" / "napari-hrdv2-bench"))
REPO_SRC = Path(__file__).resolve().parents[1] / "src"

RANDOM_WEIGHTS_NOTE = (
    "NOTE: random-init ViT-S/14 weights (no network for real DINOv2 weights): timings and memory are those of "
    "the real model shape; quality numbers are NOT DINOv2 quality. Pass --backbone for real weights."
)

# ---------------------------------------------------------------- model


def random_vits14(cache_dir: Path | None = None, *, seed: int = 0) -> str:
    """Folder of a random-init DINOv2 ViT-S/14 saved with ``save_pretrained`` (built on first call).

    Written to a temporary folder and renamed into place, so concurrent scripts never see half a model.
    """
    folder = Path(cache_dir or CACHE_DIR) / f"random-dinov2-vits14-seed{seed}"
    if (folder / "config.json").exists() and any(folder.glob("*.safetensors")):
        return str(folder)
    from napari_hrdv2.testing import save_random_vits14

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder.parent))
    save_random_vits14(staging, seed=seed)
    try:
        staging.rename(folder)
    except OSError:  # another process won the race: use its copy
        shutil.rmtree(staging, ignore_errors=True)
    return str(folder)


def random_vits16(cache_dir: Path | None = None, *, seed: int = 1) -> str:
    """Folder of a random-init DINOv3 ViT-S/16 (4 registers, RoPE), built on first call like :func:`random_vits14`."""
    folder = Path(cache_dir or CACHE_DIR) / f"random-dinov3-vits16-seed{seed}"
    if (folder / "config.json").exists() and any(folder.glob("*.safetensors")):
        return str(folder)
    from napari_hrdv2.testing import save_random_vits16

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder.parent))
    save_random_vits16(staging, seed=seed)
    try:
        staging.rename(folder)
    except OSError:  # another process won the race: use its copy
        shutil.rmtree(staging, ignore_errors=True)
    return str(folder)


def backbone_or_random(backbone: str | None) -> tuple[str, bool]:
    """``(backbone source, is_random)`` for a ``--backbone`` option.

    None or "random" = random DINOv2 ViT-S/14; "random-dinov3" = random DINOv3 ViT-S/16.
    """
    if backbone in (None, "", "random"):
        return random_vits14(), True
    if backbone == "random-dinov3":
        return random_vits16(), True
    return backbone, False


# ---------------------------------------------------------------- data


def read_grey(path: str | Path) -> np.ndarray:
    """A micrograph as a 2D array (first plane / first channel of anything bigger)."""
    from napari_hrdv2.core.files.images import read_image

    image = np.asarray(read_image(path))
    while image.ndim > 2:
        image = image[..., 0] if image.shape[-1] in (3, 4) else image[0]
    return image


def read_index_labels(path: str | Path) -> np.ndarray:
    """A dense index label PNG/TIFF (values 0..N-1) as int64 (H, W)."""
    return np.asarray(read_grey(path)).astype(np.int64)


def nasa_pairs(name: str = "nasa_super", limit: int | None = None) -> list[tuple[Path, Path]]:
    """Sorted ``(image, dense label)`` paths of ``nasa_super`` or ``nasa_ebc``."""
    images = sorted((SHARED_DATA / name / "images").iterdir())
    pairs = [(p, SHARED_DATA / name / "labels" / p.name) for p in images]
    pairs = [pair for pair in pairs if pair[1].exists()]
    return pairs[:limit] if limit else pairs


# ---------------------------------------------------------------- timing and memory


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """``(seconds, result)`` of one call."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def peak_rss_self() -> int:
    """This process's peak resident set size in bytes since it started (its own ``exec``).

    Reads ``VmHWM`` from ``/proc/self/status`` on Linux: ``getrusage(...).ru_maxrss`` is not used there
    because Linux carries the parent's RSS at ``fork`` into the child's ``ru_maxrss`` across ``exec``,
    so a child of a big benchmark process would report the parent's size. Elsewhere ``ru_maxrss``.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    factor = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * factor


_PEAK_PRELUDE = """
import atexit as _atexit, os as _os, sys as _sys
_sys.path.insert(0, {bench!r})
from _common import peak_rss_self as _peak
_atexit.register(lambda: open(_os.environ["HRDV2_PEAK_FILE"], "w").write(str(_peak())))
"""


def run_with_peak_rss(code: str, *, timeout: float | None = None, env: dict[str, str] | None = None) -> tuple[str, int]:
    """Run ``code`` with ``python -c`` in a fresh interpreter; return ``(stdout, peak RSS in bytes)``.

    The peak is the child's own high-water mark (:func:`peak_rss_self`, written at exit), so it
    includes the interpreter, torch and the model but not the calling process. ``src/`` and this
    folder are put on ``sys.path``. Raises ``RuntimeError`` on failure or timeout.
    """
    child_env = {**os.environ, **(env or {})}
    child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_SRC), child_env.get("PYTHONPATH", "")]))
    with tempfile.TemporaryDirectory() as tmp:
        peak_file = Path(tmp) / "peak"
        child_env["HRDV2_PEAK_FILE"] = str(peak_file)
        prelude = _PEAK_PRELUDE.format(bench=str(Path(__file__).resolve().parent))
        try:
            proc = subprocess.run(
                [sys.executable, "-c", prelude + code], capture_output=True, text=True, env=child_env, timeout=timeout
            )
        except subprocess.TimeoutExpired as err:
            raise RuntimeError(f"subprocess timed out after {timeout} s") from err
        if proc.returncode != 0:
            raise RuntimeError(f"subprocess failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        return proc.stdout, int(peak_file.read_text())


# ---------------------------------------------------------------- output


def machine_line() -> str:
    """Date, CPU count, Python/torch versions and GPU (if any), for the table headers."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{datetime.date.today().isoformat()} | {platform.machine()} {os.cpu_count()} CPU cores "
        f"(torch threads {torch.get_num_threads()}) | {gpu} | Python {platform.python_version()} | "
        f"torch {torch.__version__}"
    )


def print_table(rows: Sequence[Sequence[Any]], headers: Sequence[str], *, title: str | None = None) -> None:
    """Print a Markdown-style table (floats with 3 significant digits unless already strings)."""

    def fmt(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
        return str(value)

    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    if title:
        print(f"\n### {title}")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
    sys.stdout.flush()


def gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.2f} GiB"
