"""Try hostile and careless inputs and faults against the API and the CLI, and classify each outcome.

    PYTHONPATH=src python benchmarks/hostile_inputs.py [--only SUBSTRING] [--verbose] [--json out.json]

Every case runs in this process (CLI cases through ``napari_hrdv2.cli.main``), under a 60 s alarm
(``hang``), except the few that need a fresh process (a full disk memory-mapped, an address-space
limit), which run as subprocesses (``crash`` = killed by a signal). The outcome of a case is one of:

clear      a one-line error from the package (``HRDv2Error`` / ``napari-hrdv2: error: ...``, exit != 0)
           that names the problem, with no "pip install" advice
defined    the call succeeded and its result passed the case's check (a warning may have been given)
unclear    an error, but a raw one (a numpy/OS exception from the API, a multi-line or misleading
           message, a documented choice refused)
traceback  the CLI let an exception escape (a user sees a Python traceback)
crash      the process died of a signal (SIGBUS, SIGSEGV, out-of-memory kill)
hang       no result within the time limit
silent     succeeded but the result is wrong (NaN features, a stack of 2-pixel planes, a model file
           with class 0, a download nobody asked for, an output skipped on the re-run...)
lost       a file that existed before (an input, a previous good result) was destroyed, or a file
           that looks complete is incomplete

Full-disk and read-only cases need a small tmpfs (``mount``, i.e. root in a container); without it they
are reported as ``skipped``. The room cases pretend the disk is nearly full (``shutil.disk_usage`` mocked, as the
tests do). Two cases start a dask LocalCluster of one worker process (``--scheduler local:1``, ~20 s each);
"tile by tile" cases lower ``streaming.STREAM_PIXELS`` so that a 56x56 image is streamed like a large one. Random-init tiny backbone (no real weights): this measures behaviour, not quality.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CATEGORIES = ("clear", "defined", "unclear", "traceback", "crash", "hang", "silent", "lost", "skipped")
TIME_LIMIT_S = 60


@dataclass
class Outcome:
    category: str
    detail: str = ""


class Hang(BaseException):
    """Raised by the alarm."""


def _alarm(_signum: int, _frame: Any) -> None:
    raise Hang()


# ---------------------------------------------------------------------------------------------- fixtures
def tiny_backbone(folder: Path, *, seed: int = 0, hidden: int = 64) -> str:
    """A random-init DINOv2 (hidden dims, 2 layers, 2 heads, patch 14) saved with save_pretrained."""
    import torch
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    config = Dinov2Config(
        hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, patch_size=14, image_size=224
    )
    model = Dinov2Model(config)
    model.save_pretrained(folder)
    return str(folder)


def two_textures(size: int = 56) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    image = np.zeros((size, size), np.float32)
    half = size // 2
    image[:, :half] = 60 + 5 * rng.standard_normal((size, half))
    image[:, half:] = 160 + 40 * rng.standard_normal((size, size - half))
    strokes = np.zeros((size, size), np.uint8)
    strokes[4:-4, size // 4] = 1
    strokes[4:-4, 3 * size // 4] = 2
    return np.clip(image, 0, 255).astype(np.uint8), strokes


def digest(path: Path) -> str | None:
    if not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextlib.contextmanager
def tmpfs(size: str, *, read_only: bool = False):
    """A fresh tmpfs mount (or ``None`` when mounting is not allowed)."""
    folder = Path(tempfile.mkdtemp(prefix="hostile-tmpfs-"))
    options = f"size={size}" + (",ro" if read_only else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        folder.rmdir()
        yield None
        return
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)
        folder.rmdir()


# ---------------------------------------------------------------------------------------------- runners
def _message_is_clear(message: str) -> bool:
    text = message.strip()
    return bool(text) and "pip install" not in text and "Traceback" not in text and len(text) < 600


def run_api(
    call: Callable[[], Any], check: Callable[[Any], bool | str] | None = None, *, expect: str = "either"
) -> Outcome:
    """Call the API; classify its exception or check its result.

    ``expect``: "result" (an error is ``unclear``: a valid input was refused), "error" (a result is
    ``silent``) or "either" (a correct result or a clear error).
    """
    from napari_hrdv2.core.errors import HRDv2Error

    signal.alarm(TIME_LIMIT_S)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = call()
    except Hang:
        return Outcome("hang", f"no result after {TIME_LIMIT_S} s")
    except HRDv2Error as err:
        message = str(err)
        if expect == "result":
            return Outcome("unclear", f"refused a valid input: {type(err).__name__}: {message}")
        return Outcome("clear" if _message_is_clear(message) else "unclear", f"{type(err).__name__}: {message}")
    except Exception as err:  # noqa: BLE001
        return Outcome("unclear", f"raw {type(err).__name__}: {str(err)[:200]}")
    finally:
        signal.alarm(0)
    if expect == "error":
        return Outcome("silent", "accepted although it should be refused")
    return _checked(result, check, [str(w.message) for w in caught])


def _checked(result: Any, check: Callable[[Any], bool | str] | None, warned: list[str]) -> Outcome:
    verdict = True if check is None else check(result)
    note = f" (warned: {warned[0][:120]})" if warned else ""
    if verdict is True:
        return Outcome("defined", f"ok{note}")
    if verdict == "lost":
        return Outcome("lost", f"data lost{note}")
    return Outcome("silent", f"{verdict if isinstance(verdict, str) else 'wrong result'}{note}")


def run_cli(
    argv: list[Any],
    check: Callable[[str, str], bool | str] | None = None,
    *,
    protect: tuple[Path, ...] = (),
    expect: str = "either",
) -> Outcome:
    """Run ``main(argv)`` in this process; classify the exit, the stderr text and the protected files.

    ``expect`` as in :func:`run_api`.
    """
    from napari_hrdv2.cli import main

    before = {path: digest(path) for path in protect}
    stdout, stderr = io.StringIO(), io.StringIO()
    signal.alarm(TIME_LIMIT_S)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), warnings.catch_warnings():
            warnings.simplefilter("default")
            code = main([str(a) for a in argv])
    except Hang:
        return Outcome("hang", f"no result after {TIME_LIMIT_S} s")
    except BaseException as err:  # noqa: BLE001
        outcome = Outcome("traceback", f"{type(err).__name__}: {str(err)[:200]}")
    else:
        err_text = stderr.getvalue()
        # segment reports an input it could not process as "napari-hrdv2: failed: PATH: reason" (the others go on)
        error_lines = [line for line in err_text.splitlines() if "error:" in line or ": failed: " in line]
        if "Traceback" in err_text:
            outcome = Outcome("traceback", err_text.strip().splitlines()[-1][:200])
        elif code == 0:
            outcome = _checked((stdout.getvalue(), err_text), (lambda r: check(*r)) if check else None,
                               [line for line in err_text.splitlines() if "arning" in line])  # fmt: skip
            if expect == "error" and outcome.category == "defined":
                outcome = Outcome("silent", "accepted although it should be refused")
        elif expect == "result":
            outcome = Outcome("unclear", f"refused a valid input: exit {code}: {err_text.strip()[-240:]}")
        elif len(error_lines) == 1 and _message_is_clear(error_lines[0]):
            outcome = Outcome("clear", f"exit {code}: {error_lines[0][:240]}")
        else:
            outcome = Outcome("unclear", f"exit {code}: {err_text.strip()[:240]}")
    finally:
        signal.alarm(0)
    lost = [path.name for path in protect if digest(path) != before[path]]
    if lost:
        return Outcome("lost", f"changed or destroyed: {', '.join(lost)}; {outcome.category}: {outcome.detail}")
    return outcome


def run_subprocess(argv: list[Any], *, limit_as: int | None = None, timeout: float = TIME_LIMIT_S) -> Outcome:
    """Run the CLI in a fresh interpreter (for crashes and memory limits)."""
    code = "import sys; from napari_hrdv2.cli import main; sys.exit(main(sys.argv[1:]))"

    def limits() -> None:
        if limit_as:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (limit_as, limit_as))

    try:
        done = subprocess.run(
            [sys.executable, "-c", code, *map(str, argv)], capture_output=True, text=True, timeout=timeout,
            preexec_fn=limits,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return Outcome("hang", f"no result after {timeout} s")
    err_text = done.stderr.strip()
    if done.returncode < 0:
        return Outcome("crash", f"killed by signal {-done.returncode}: {err_text[-200:]}")
    if "Traceback" in err_text:
        return Outcome("traceback", err_text.splitlines()[-1][:200])
    if done.returncode == 0:
        return Outcome("defined", "ok")
    lines = [line for line in err_text.splitlines() if "error:" in line]
    if len(lines) == 1 and _message_is_clear(lines[0]):
        return Outcome("clear", f"exit {done.returncode}: {lines[0][:240]}")
    return Outcome("unclear", f"exit {done.returncode}: {err_text[-240:]}")


# ---------------------------------------------------------------------------------------------- the cases
class _ChannelCases:
    """Multichannel inputs (OME-TIFF, ImageJ, .npy, OME-Zarr) segmented tile by tile or on a cluster, and room checks."""

    def _channel_files(self) -> dict[str, Path]:
        """Files holding one 5-channel 56x56 image whose channel 1 is the reference texture (others noise)."""
        if getattr(self, "_multichannel", None) is not None:
            return self._multichannel
        import tifffile
        import zarr

        folder = self.fresh("multichannel")
        data = np.random.default_rng(7).integers(0, 255, (*self.image.shape, 5), dtype=np.uint8)
        data[..., 1] = self.image
        planar = np.ascontiguousarray(np.moveaxis(data, -1, 0))
        files = {"ome": folder / "m5.tif", "imagej": folder / "ij.tif", "npy": folder / "m5npy.npy",
                 "zarr": folder / "m5zarr.zarr", "grey": folder / "grey.tif"}  # fmt: skip
        tifffile.imwrite(files["ome"], planar, ome=True, metadata={"axes": "CYX"})
        tifffile.imwrite(files["imagej"], np.stack([planar, planar]), imagej=True, metadata={"axes": "ZCYX"})
        np.save(files["npy"], data)
        group = zarr.open_group(str(files["zarr"]), mode="w", zarr_format=2)
        group.attrs["multiscales"] = [
            {"version": "0.4", "axes": [{"name": n} for n in "cyx"], "datasets": [{"path": "0"}]}
        ]
        group.create_array("0", shape=planar.shape, chunks=(1, 32, 32), dtype="uint8")[:] = planar
        tifffile.imwrite(files["grey"], self.image)
        self._multichannel = files
        return files

    def _reference_labels(self) -> np.ndarray:
        """The in-memory segmentation of channel 1 (the grey texture) with the reference model."""
        if getattr(self, "_reference", None) is None:
            import tifffile

            out = self.fresh("multichannel reference")
            outcome = run_cli(["segment", self._channel_files()["grey"], "--model", self.model, "-o", out, "-q",
                               "--overwrite"])  # fmt: skip
            assert outcome.category == "defined", outcome
            self._reference = tifffile.imread(out / "grey_labels.tif")
        return self._reference

    def _channel_model(self) -> Path:
        """The reference model, recording that it reads channel 1 of its inputs."""
        path = self.root / "model_channel1.hrdv2"
        if not path.exists():
            from napari_hrdv2.core.segmentation.segmenter import LinearSegmenter

            model = LinearSegmenter.load(self.model)
            model.channels = (1,)
            model.save(path)
        return path

    def _labels_equal_reference(self, path: Path, planes: int = 1) -> Callable[[str, str], bool | str]:
        def check(_out: str, err: str) -> bool | str:
            import tifffile
            import zarr

            if not path.exists():
                return f"{path.name} was not written"
            labels = zarr.open_group(str(path), mode="r")["0"][:] if path.suffix == ".zarr" else tifffile.imread(path)
            expected = self._reference_labels() if planes == 1 else np.stack([self._reference_labels()] * planes)
            if labels.shape != expected.shape:
                return f"labels of shape {labels.shape}, expected {expected.shape}"
            if not np.array_equal(labels, expected):
                return f"labels differ from the in-memory run on channel 1 ({(labels != expected).mean():.1%})"
            if "using channel 1" not in err:
                return "did not say which channels were used"
            return True

        return check

    def _channel_cases(self) -> None:
        def segment(name: str, key: str, extra: list[Any], *, expect: str, stream: bool = False,
                    model: Path | None = None, planes: int = 1) -> None:  # fmt: skip
            def case() -> Outcome:
                files = self._channel_files()
                out = self.fresh(f"channels {name}")
                source = files[key]
                suffix = ".zarr" if "zarr" in extra else ".tif"
                target = out / f"{source.name.split('.')[0]}_labels{suffix}"
                argv = ["segment", source, "--model", model or self.model, "-o", out, "--overwrite", *extra]
                check = None
                if expect != "error":
                    self._reference_labels()  # computed before the run under test
                    check = self._labels_equal_reference(target, planes)
                if not stream:
                    return run_cli(argv, check, expect=expect, protect=(source,) if source.is_file() else ())
                from napari_hrdv2.core.scale import streaming

                saved = streaming.STREAM_PIXELS
                streaming.STREAM_PIXELS = 32 * 32  # the 56x56 image is "large": segmented tile by tile
                try:
                    return run_cli(argv, check, expect=expect, protect=(source,))
                finally:
                    streaming.STREAM_PIXELS = saved

            self.add(f"channels/{name}/cli segment", case)

        zarr_out = ["--format", "zarr"]
        segment("OME-TIFF CYX 5, --channels 1, zarr output (tile by tile)", "ome", [*zarr_out, "--channels", "1"],
                expect="result")  # fmt: skip
        segment("OME-TIFF CYX 5, --channels 1, large TIFF (tile by tile to tiled tif)", "ome", ["--channels", "1"],
                expect="result", stream=True)  # fmt: skip
        segment(".npy (H,W,5), --channels 1, zarr output", "npy", [*zarr_out, "--channels", "1"], expect="result")
        segment(".npy (H,W,5), --channels 1, read whole", "npy", ["--channels", "1"], expect="result")
        segment("OME-Zarr c=5, --channels 1, zarr output", "zarr", [*zarr_out, "--channels", "1"], expect="result")
        segment("OME-Zarr c=5, --channels 1, tif output (read whole)", "zarr", ["--channels", "1"], expect="result")
        segment("ImageJ ZCYX 2x5, --channels 1, zarr output", "imagej", [*zarr_out, "--channels", "1"],
                expect="result", planes=2)  # fmt: skip
        segment("model trained on channel 1, OME-TIFF, no option, zarr output", "ome", zarr_out, expect="result",
                model=self._channel_model())  # fmt: skip
        segment("model trained on channel 1, .npy, no option, zarr output", "npy", zarr_out, expect="result",
                model=self._channel_model())  # fmt: skip
        segment("model trained on channel 1, --channels 0, zarr output", "npy", [*zarr_out, "--channels", "0"],
                expect="error", model=self._channel_model())  # fmt: skip
        segment("OME-TIFF CYX 5, no --channels, zarr output", "ome", zarr_out, expect="error")
        segment("OME-TIFF CYX 5, no --channels, large TIFF", "ome", [], expect="error", stream=True)
        segment("ImageJ ZCYX 2x5, no --channels, zarr output", "imagej", zarr_out, expect="error")
        segment(".npy (H,W,5), no --channels, zarr output", "npy", zarr_out, expect="error")
        segment("OME-Zarr c=5, no --channels, zarr output", "zarr", zarr_out, expect="error")
        segment("OME-TIFF CYX 5, --channels 7, zarr output", "ome", [*zarr_out, "--channels", "7"], expect="error")
        segment(".npy (H,W,5), --channels 7, zarr output", "npy", [*zarr_out, "--channels", "7"], expect="error")
        segment("OME-Zarr c=5, --channels 5", "zarr", [*zarr_out, "--channels", "5"], expect="error")
        segment("grey TIFF, --channels 2, zarr output", "grey", [*zarr_out, "--channels", "2"], expect="error")
        segment("OME-TIFF, --channels 0,1,2,3", "ome", [*zarr_out, "--channels", "0,1,2,3"], expect="error")
        segment("OME-TIFF, --channels ''", "ome", [*zarr_out, "--channels", ""], expect="error")

        def features_shape(out: Path, shape: tuple[int, ...], planes: int = 0) -> Callable[[str, str], bool | str]:
            """(C, H, W) features of one image, or (planes, C, H, W) of a stack."""

            def check(_out: str, err: str) -> bool | str:
                found = np.load(out).shape
                if found[-2:] != shape or len(found) != (4 if planes else 3) or (planes and found[0] != planes):
                    return f"features of shape {found}"
                return True if "using channel" in err else "did not say which channels were used"

            return check

        def in_memory(name: str, argv: Callable[[dict[str, Path], Path], list[Any]], expect: str,
                      check: Callable[[Path], Callable[[str, str], bool | str]] | None = None) -> None:  # fmt: skip
            def case() -> Outcome:
                files = self._channel_files()
                out = self.fresh(f"channels in memory {name}")
                return run_cli(argv(files, out), check(out) if check else None, expect=expect,
                               protect=(files["ome"],))  # fmt: skip

            self.add(f"channels/{name}/cli", case)

        in_memory("features --channels 1 on OME-TIFF CYX 5",
                  lambda f, out: ["features", f["ome"], "-o", out / "f.npy", "--channels", "1", *self.opts], "result",
                  lambda out: features_shape(out / "f.npy", self.image.shape))  # fmt: skip
        in_memory("features --channels 0,3 on ImageJ ZCYX 2x5 (a stack)",
                  lambda f, out: ["features", f["imagej"], "-o", out / "f.npy", "--channels", "0,3", *self.opts],
                  "result", lambda out: features_shape(out / "f.npy", self.image.shape, planes=2))  # fmt: skip
        in_memory(
            "features --channels 9 on OME-TIFF CYX 5",
            lambda f, out: ["features", f["ome"], "-o", out / "f.npy", "--channels", "9", *self.opts],
            "error",
        )
        in_memory("train --channels 5 on OME-TIFF CYX 5",
                  lambda f, out: ["train", f["ome"], "--labels", self.files / "tex_strokes.tif", "-o", out / "m.hrdv2",
                                  "--channels", "5", *self.opts], "error")  # fmt: skip
        in_memory("pca fit --channels 1,x",
                  lambda f, out: ["pca", "fit", f["ome"], "-o", out / "b.npz", "--channels", "1,x", *self.opts],
                  "error")  # fmt: skip
        long_name = "x" * 300
        in_memory(
            "features -o a 300-byte name",
            lambda f, out: ["features", f["grey"], "-o", out / f"{long_name}.npy", *self.opts],
            "error",
        )
        in_memory(
            "segment an input with a 300-byte name",
            lambda f, out: ["segment", out / f"{long_name}.tif", "--model", self.model, "-o", out],
            "error",
        )
        in_memory(
            "segment -o a folder name with a NUL",
            lambda f, out: ["segment", f["grey"], "--model", self.model, "-o", f"{out}/a\0b"],
            "error",
        )

        def lazy_file(name: str, writer: Callable[[Path], None], suffix: str, expect: str = "error") -> None:
            def case() -> Outcome:
                folder = self.fresh(f"lazy {name}")
                path = folder / f"in{suffix}"
                if not path.exists():
                    writer(path)
                return run_cli(["segment", path, "--model", self.model, "-o", folder / "out", "--format", "zarr",
                                "--overwrite", "--channels", "0"], expect=expect)  # fmt: skip

            self.add(f"lazy input/{name}/cli segment --channels 0", case)

        grey_stack = np.stack([self.image] * 3)
        lazy_file("grey .npy stack (3,H,W) with --channels 0", lambda p: np.save(p, grey_stack), ".npy", "result")
        lazy_file(".npy object array", lambda p: np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True),
                  ".npy")  # fmt: skip
        lazy_file(".npy 1-D", lambda p: np.save(p, np.arange(100)), ".npy")
        lazy_file(".npy truncated", lambda p: (np.save(p, grey_stack), p.write_bytes(p.read_bytes()[:200])), ".npy")
        lazy_file(".npy float with NaN", lambda p: np.save(p, np.where(self.image > 200, np.nan, 1.0)), ".npy")
        lazy_file(".npy complex", lambda p: np.save(p, self.image.astype(np.complex64)), ".npy")
        lazy_file("empty folder named .zarr", lambda p: p.mkdir(), ".zarr")
        lazy_file("text file named .zarr", lambda p: p.write_text("x"), ".zarr")

        def zarr_named_with_a_tif() -> Outcome:
            import zarr

            files = self._channel_files()
            folder = self.fresh("zarr named as an input")
            image = folder / "plain.zarr"
            if not image.exists():
                zarr.create_array(str(image), shape=self.image.shape, chunks=(32, 32), dtype="uint8")[:] = self.image
            out = folder / "out"
            argv = ["segment", image, files["grey"], "--model", self.model, "-o", out, "--overwrite", "-q"]

            def both_written(_out: str, _err: str) -> bool | str:
                names = sorted(p.name for p in out.iterdir())
                return True if names == ["grey_labels.tif", "plain_labels.tif"] else f"wrote only {names}"

            return run_cli(argv, both_written, expect="result")

        self.add("lazy input/a .zarr image named next to a .tif/cli segment", zarr_named_with_a_tif)

        def cluster_case() -> Outcome:
            files = self._channel_files()
            out = self.fresh("channels cluster")
            argv = ["segment", files["ome"], files["npy"], "--model", self._channel_model(), "-o", out,
                    "--overwrite", "--scheduler", "local:1", "-q"]  # fmt: skip
            self._reference_labels()
            first = self._labels_equal_reference(out / "m5_labels.tif")
            second = self._labels_equal_reference(out / "m5npy_labels.tif")

            def both(stdout: str, err: str) -> bool | str:
                verdict = first(stdout, err)
                return second(stdout, err) if verdict is True else verdict

            return run_cli(argv, both, expect="result", protect=(files["ome"], files["npy"]))

        self.add("channels/model trained on channel 1, OME-TIFF + .npy, local cluster/cli segment --scheduler",
                 cluster_case)  # fmt: skip

    def _room_cases(self) -> None:
        def room(name: str, argv: Callable[[Path], list[Any]], free: int) -> None:
            def case() -> Outcome:
                out = self.fresh(f"room {name}")
                with _free_bytes(free):
                    outcome = run_cli(argv(out), expect="error")
                left = [p.name for p in out.rglob("*") if p.is_file()]
                if outcome.category == "clear" and "room" not in outcome.detail:
                    return Outcome("unclear", f"refused, but not for the room: {outcome.detail}")
                if left:
                    return Outcome("silent", f"files written although refused: {left}; {outcome.detail[:100]}")
                return outcome

            self.add(f"room/{name}/cli", case)

        image = self.files / "tex.tif"
        room("segment --uncertainty, 1 kB free", lambda out: ["segment", image, "--model", self.model, "-o", out / "o",
                                                               "--uncertainty", "-q"], 1_000)  # fmt: skip
        room("features -o f.tif, 100 kB free", lambda out: ["features", image, "-o", out / "f.tif", *self.opts],
             100_000)  # fmt: skip
        room("segment --format zarr --channels 1 on OME-TIFF, 1 kB free (tile by tile)",
             lambda out: ["segment", self._channel_files()["ome"], "--model", self.model, "-o", out / "o", "--format",
                          "zarr", "--channels", "1", "--uncertainty", "-q"], 1_000)  # fmt: skip
        room("segment --scheduler local:1 --uncertainty, 1 kB free",
             lambda out: ["segment", image, "--model", self.model, "-o", out / "o", "--uncertainty", "--scheduler",
                          "local:1", "-q"], 1_000)  # fmt: skip


class Cases(_ChannelCases):
    """Builds the files once and lists the cases (name -> thunk returning an Outcome)."""

    def __init__(self, root: Path):
        self.root = root
        self.backbone = tiny_backbone(root / "tiny")
        self.other_backbone = tiny_backbone(root / "tiny-other", seed=1)  # same width, other weights
        self.opts = ["--backbone", self.backbone, "--device", "cpu", "--shifts", "neumann", "--distances", "3",
                     "--tile-size", "none", "-q"]  # fmt: skip
        self.image, self.strokes = two_textures()
        self.files = root / "files"
        self.files.mkdir()
        import tifffile

        tifffile.imwrite(self.files / "tex.tif", self.image)
        tifffile.imwrite(self.files / "tex_strokes.tif", self.strokes)
        self.model = root / "model.hrdv2"
        from napari_hrdv2.cli import main

        with contextlib.redirect_stdout(io.StringIO()):
            code = main([str(a) for a in ["train", self.files / "tex.tif", "--labels", self.files / "tex_strokes.tif",
                                          "-o", self.model, *self.opts]])  # fmt: skip
        assert code == 0, "training the reference model failed"
        self.cases: dict[str, Callable[[], Outcome]] = {}
        self._image_cases()
        self._label_cases()
        self._model_cases()
        self._output_cases()
        self._option_cases()
        self._channel_cases()
        self._room_cases()
        self._second_pass_cases()
        self._runtime_cases()

    def fresh(self, name: str) -> Path:
        folder = self.root / "cases" / name.replace("/", "_")
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def add(self, name: str, thunk: Callable[[], Outcome]) -> None:
        assert name not in self.cases, name
        self.cases[name] = thunk

    # ------------------------------------------------------------------ images
    def _image_cases(self) -> None:
        import tifffile

        rng = np.random.default_rng(1)
        grey = (rng.random((40, 44)) * 255).astype(np.uint8)

        def single(features: np.ndarray) -> bool | str:
            if features.ndim != 3:
                return f"features of shape {features.shape}: read as a stack"
            if features.shape[1:] != (40, 44):
                return f"features of shape {features.shape}"
            if not np.isfinite(features).all():
                return "non-finite features"
            return True

        def stack_of(n: int) -> Callable[[np.ndarray], bool | str]:
            return lambda f: True if f.ndim == 4 and f.shape[0] == n and f.shape[2:] == (40, 44) else f"shape {f.shape}"

        def png(path: Path, data: np.ndarray, mode: str | None = None) -> None:
            from PIL import Image

            Image.fromarray(data, mode=mode).save(path) if mode else Image.fromarray(data).save(path)

        writers: dict[str, tuple[Callable[[Path], None], str, Callable[[np.ndarray], bool | str] | None]] = {
            # name: (writer, suffix, check of the (C, H, W) / (N, C, H, W) features; None = must be an error)
            "float64 beyond float32": (lambda p: tifffile.imwrite(p, grey * 1e300), ".tif", single),
            "float64 negative beyond float32": (lambda p: tifffile.imwrite(p, grey * -1e39), ".tif", single),
            "float32 with inf": (
                lambda p: tifffile.imwrite(p, np.where(grey > 250, np.inf, grey).astype(np.float32)),
                ".tif",
                None,
            ),  # fmt: skip
            "float with NaN": (lambda p: tifffile.imwrite(p, np.where(grey > 250, np.nan, grey)), ".tif", None),
            "LA png (grey+alpha)": (lambda p: png(p, np.dstack([grey, np.full_like(grey, 255)])), ".png", single),
            "RGBA png": (lambda p: png(p, np.dstack([grey, grey, grey, np.full_like(grey, 200)])), ".png", single),
            "RGB png": (lambda p: png(p, np.dstack([grey, grey // 2, grey])), ".png", single),
            "16-bit png": (lambda p: png(p, grey.astype(np.uint16) * 250), ".png", single),
            "2-channel tif (H,W,2)": (
                lambda p: tifffile.imwrite(p, np.dstack([grey, grey]), photometric="minisblack", planarconfig="contig"),
                ".tif",
                single,
            ),  # fmt: skip
            "5-channel tif (H,W,5)": (
                lambda p: tifffile.imwrite(p, np.dstack([grey] * 5), photometric="minisblack", planarconfig="contig"),
                ".tif",
                single,
            ),  # fmt: skip
            "OME-TIFF CYX 3 channels": (
                lambda p: tifffile.imwrite(p, np.stack([grey] * 3), ome=True, metadata={"axes": "CYX"}),
                ".ome.tif",
                single,
            ),  # fmt: skip
            "OME-TIFF ZYX 3 planes": (
                lambda p: tifffile.imwrite(p, np.stack([grey] * 3), ome=True, metadata={"axes": "ZYX"}),
                ".ome.tif",
                stack_of(3),
            ),  # fmt: skip
            "OME-TIFF ZCYX 2x3": (
                lambda p: tifffile.imwrite(
                    p, np.stack([np.stack([grey] * 3)] * 2), ome=True, metadata={"axes": "ZCYX"}
                ),
                ".ome.tif",
                stack_of(2),
            ),  # fmt: skip
            "ImageJ CYX 2 channels": (
                lambda p: tifffile.imwrite(p, np.stack([grey] * 2), imagej=True, metadata={"axes": "CYX"}),
                ".tif",
                single,
            ),  # fmt: skip
            "ImageJ ZYX 4 planes": (
                lambda p: tifffile.imwrite(p, np.stack([grey] * 4), imagej=True, metadata={"axes": "ZYX"}),
                ".tif",
                stack_of(4),
            ),  # fmt: skip
            "plain multipage tif 3 planes": (lambda p: tifffile.imwrite(p, np.stack([grey] * 3)), ".tif", stack_of(3)),
            "bool tif": (lambda p: tifffile.imwrite(p, grey > 128), ".tif", single),
            "uint64 tif": (lambda p: tifffile.imwrite(p, grey.astype(np.uint64) << 40), ".tif", single),
            "int16 negative tif": (lambda p: tifffile.imwrite(p, grey.astype(np.int16) - 300), ".tif", single),
            "complex tif": (lambda p: tifffile.imwrite(p, grey.astype(np.complex64)), ".tif", None),
            "constant tif": (lambda p: tifffile.imwrite(p, np.full((40, 44), 7, np.uint8)), ".tif", single),
            "tiny 10x10 tif": (lambda p: tifffile.imwrite(p, grey[:10, :10]), ".tif", None),
            "1-pixel-wide tif": (lambda p: tifffile.imwrite(p, grey[:, :1]), ".tif", None),
            "empty png": (lambda p: p.write_bytes(b""), ".png", None),
            "empty tif": (lambda p: p.write_bytes(b""), ".tif", None),
            "empty jpg": (lambda p: p.write_bytes(b""), ".jpg", None),
            "random bytes png": (lambda p: p.write_bytes(rng.bytes(500)), ".png", None),
            "random bytes tif": (lambda p: p.write_bytes(rng.bytes(500)), ".tif", None),
            "text file named .tif": (lambda p: p.write_text("hello\n"), ".tif", None),
            "truncated png": (lambda p: (png(p, grey), p.write_bytes(p.read_bytes()[:200])), ".png", None),
            "truncated tif": (
                lambda p: (tifffile.imwrite(p, grey), p.write_bytes(p.read_bytes()[:300])),
                ".tif",
                None,
            ),  # fmt: skip
            "gif file": (lambda p: p.write_bytes(b"GIF89a"), ".gif", None),
            "folder named img.tif": (lambda p: p.mkdir(), ".tif", None),
        }
        either = {"float64 beyond float32", "float64 negative beyond float32", "2-channel tif (H,W,2)",
                  "5-channel tif (H,W,5)", "ImageJ CYX 2 channels"}  # fmt: skip
        for name, (writer, suffix, check) in writers.items():
            folder = self.fresh(f"image {name}")
            path = folder / f"img{suffix}"
            writer(path)
            out = folder / "f.npy"
            expect = "error" if check is None else "either" if name in either else "result"

            def cli_case(path=path, out=out, check=check, expect=expect) -> Outcome:
                return run_cli(["features", path, "-o", out, "--overwrite", *self.opts],
                               None if check is None else (lambda *_: check(np.load(out))), expect=expect)  # fmt: skip

            def api_case(path=path, check=check, expect=expect) -> Outcome:
                import napari_hrdv2 as hr
                from napari_hrdv2.core.files.images import is_stack, read_image

                def call() -> np.ndarray:
                    image = read_image(path)
                    featurizer = hr.Featurizer(self.config())
                    planes = list(image) if is_stack(image) else [image]
                    features = [featurizer.encode(plane, with_attention=False).features() for plane in planes]
                    return np.stack(features) if is_stack(image) else features[0]

                return run_api(call, check, expect=expect)

            self.add(f"image/{name}/cli features", cli_case)
            self.add(f"image/{name}/api read+encode", api_case)
        # in-memory arrays given to the API
        arrays = {
            "array float64 1e300": (grey * 1e300, True),
            "array (H,W,2)": (np.dstack([grey, grey]), True),
            "array empty channel slice": (None, False),
        }
        for name, (array, _) in arrays.items():
            if array is None:
                continue

            def api_array(array=array) -> Outcome:
                import napari_hrdv2 as hr

                return run_api(
                    lambda: hr.Featurizer(self.config()).encode(array, with_attention=False).features(),
                    lambda f: True if np.isfinite(f).all() and f.shape[1:] == (40, 44) else "non-finite or wrong",
                )

            self.add(f"image/{name}/api encode", api_array)

        def empty_channels() -> Outcome:
            import napari_hrdv2 as hr

            encoding = hr.Featurizer(self.config()).encode(grey, with_attention=False)
            return run_api(lambda: encoding.features(channels=slice(5, 5)), expect="error")

        self.add("image/empty channel slice/api features", empty_channels)

        def huge_image() -> Outcome:
            folder = self.fresh("huge")
            path = folder / "huge.tif"
            if not path.exists():
                import tifffile

                tifffile.imwrite(path, np.zeros((20000, 20000), np.uint8), compression="zlib")
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from _common import random_vits14

            return run_subprocess(["features", path, "--pca", folder / "pca.png", "--overwrite",
                                   "--backbone", random_vits14(), "--device", "cpu", "-q"],
                                  limit_as=12 << 30, timeout=120)  # fmt: skip

        self.add("image/20000x20000 ViT-S under a 12 GiB address-space limit/cli features --pca", huge_image)

    def config(self) -> Any:
        import napari_hrdv2 as hr

        return hr.FeatureConfig(backbone=self.backbone, device="cpu", shifts="neumann", shift_distances=(3,),
                                tile_size=None)  # fmt: skip

    # ------------------------------------------------------------------ labels
    def _label_cases(self) -> None:
        import tifffile

        image, strokes = self.image, self.strokes
        cases: dict[str, tuple[np.ndarray | Callable[[Path], None], bool]] = {
            # name: (labels or writer, should train)
            "image as its own labels": (image, "warn"),
            "hundreds of classes": ((np.arange(image.size).reshape(image.shape) % 300).astype(np.uint16), "warn"),
            "fractional float labels": (strokes.astype(np.float32) * 0.5, False),
            "negative labels": (strokes.astype(np.int16) - 1, False),
            "labels 70000": (np.where(strokes == 2, np.uint32(70000), strokes.astype(np.uint32)), False),
            "labels wrong shape": (strokes[:-3], False),
            "labels all zero": (np.zeros_like(strokes), False),
            "one class only": (np.minimum(strokes, 1), False),
            "RGB labels": (np.dstack([strokes] * 3), False),
            "labels NaN": (np.where(strokes == 0, np.nan, strokes).astype(np.float32), False),
            "labels uint8 valid": (strokes, True),
            "empty labels file": (lambda p: p.write_bytes(b""), False),
        }
        for name, (labels, should) in cases.items():
            folder = self.fresh(f"labels {name}")
            path = folder / "labels.tif"
            if callable(labels):
                labels(path)
            else:
                tifffile.imwrite(path, labels)
            out = folder / "model.hrdv2"

            def check(_out: str, err: str, should=should) -> bool | str:
                if should == "warn":
                    return True if "arning" in err else "trained on image-like labels without a warning"
                return True

            self.add(
                f"labels/{name}/cli train",
                lambda path=path, out=out, should=should, check=check: run_cli(
                    ["train", self.files / "tex.tif", "--labels", path, "-o", out, "--overwrite", *self.opts],
                    check, expect={False: "error", True: "result", "warn": "result"}[should], protect=(path, self.files / "tex.tif"),
                ),
            )  # fmt: skip

        def labels_mismatch() -> Outcome:
            return run_cli(["train", self.files / "tex.tif", self.files / "tex.tif", "--labels",
                            self.files / "tex_strokes.tif", "-o", self.fresh("mismatch") / "m.hrdv2", *self.opts],
                           expect="error")  # fmt: skip

        self.add("labels/two images one label file/cli train", labels_mismatch)

    # ------------------------------------------------------------------ model files
    def _model_cases(self) -> None:
        from safetensors import safe_open
        from safetensors.numpy import save_file

        with safe_open(str(self.model), framework="numpy") as handle:
            meta = dict(handle.metadata())
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        config = json.loads(meta["feature_config"])

        def variant(name: str, tensors_change: dict[str, Any] | None = None, meta_change: dict[str, Any] | None = None,
                    config_change: dict[str, Any] | None = None) -> Path:  # fmt: skip
            t = dict(tensors, **(tensors_change or {}))
            m = dict(meta, **(meta_change or {}))
            if config_change is not None:
                m["feature_config"] = json.dumps(dict(config, **config_change))
            path = self.fresh(f"model {name}") / "model.hrdv2"
            save_file({k: np.ascontiguousarray(v) for k, v in t.items()}, str(path), metadata=m)
            return path

        classes = tensors["classes"]
        models: dict[str, Path] = {
            "class value 0": variant("c0", {"classes": np.array([0, 2], np.int64)}),
            "class value 70000": variant("c70000", {"classes": np.array([1, 70000], np.int64)}),
            "class value -3": variant("cneg", {"classes": np.array([-3, 2], np.int64)}),
            "duplicate classes": variant("cdup", {"classes": np.array([2, 2], np.int64)}),
            "float classes": variant("cfloat", {"classes": classes.astype(np.float32) + 0.5}),
            "NaN weights": variant("nan", {"coef": np.full_like(tensors["coef"], np.nan)}),
            "inf intercept": variant("inf", {"intercept": np.array([np.inf, 0], np.float32)}),
            "format_version abc": variant("vabc", meta_change={"format_version": "abc"}),
            "format_version 1.5": variant("v15", meta_change={"format_version": "1.5"}),
            "format_version -1": variant("vneg", meta_change={"format_version": "-1"}),
            "format_version 99": variant("v99", meta_change={"format_version": "99"}),
            "n_hr_features x": variant("nhrx", meta_change={"n_hr_features": "x"}),
            "n_hr_features mismatch": variant("nhrm", meta_change={"n_hr_features": "7"}),
            "coef 3-D": variant("c3d", {"coef": tensors["coef"][None]}),
            "params l2 -1": variant("l2", meta_change={"params": json.dumps({"l2": -1})}),
            "params unknown key": variant("pk", meta_change={"params": json.dumps({"colour": 1})}),
            "params JSON garbage": variant("pj", meta_change={"params": "{not json"}),
            "8001 passes": variant(
                "passes", config_change={"shifts": "moore", "flips": False, "shift_distances": list(range(1, 1001))}
            ),  # fmt: skip
            "stride 1 on the model": variant("stride1", config_change={"stride": 1}),
            "tile_size abc": variant("tsabc", config_change={"tile_size": "abc"}),
            "tile_overlap huge": variant("tohuge", config_change={"tile_overlap": 10**9, "tile_size": None}),
            "batch_size 10**9": variant("bs", config_change={"batch_size": 10**9}),
            "unknown config field": variant("cfu", config_change={"colour": "red"}),
            "Hugging Face backbone": variant("hf", config_change={"backbone": "facebook/dinov2-giant"}),
            "summary garbage": variant("sg", meta_change={"summary": json.dumps({"x": 1})}),
            "no format": variant("nofmt", meta_change={"format": "something-else"}),
        }
        raw = self.fresh("model raw")
        (raw / "empty.hrdv2").write_bytes(b"")
        (raw / "random.hrdv2").write_bytes(np.random.default_rng(2).bytes(300))
        (raw / "truncated.hrdv2").write_bytes(self.model.read_bytes()[: self.model.stat().st_size // 2])
        (raw / "folder.hrdv2").mkdir(exist_ok=True)
        marker = self.root / "PWNED"
        payload = raw / "pickle.hrdv2"
        _write_pickle_payload(payload, marker)
        models.update({"empty file": raw / "empty.hrdv2", "random bytes": raw / "random.hrdv2",
                       "truncated file": raw / "truncated.hrdv2", "a folder": raw / "folder.hrdv2",
                       "missing file": raw / "missing.hrdv2", "pickle payload": payload})  # fmt: skip

        def valid_model(model: Any) -> bool | str:
            classes = np.asarray(model.classes_)
            if classes.min() < 1 or classes.max() > 65535 or len(set(classes.tolist())) != classes.size:
                return f"loaded with classes {classes.tolist()}"
            if not (np.isfinite(model.coef_).all() and np.isfinite(model.intercept_).all()):
                return "loaded with non-finite weights"
            if marker.exists():
                return "lost"
            return True

        download_calls: list[str] = []

        for name, path in models.items():

            def api_case(path=path) -> Outcome:
                from napari_hrdv2.core.segmentation.segmenter import LinearSegmenter

                outcome = run_api(lambda: LinearSegmenter.load(path), valid_model)
                if marker.exists():
                    return Outcome("lost", "the pickle payload ran (marker file created)")
                return outcome

            def cli_case(path=path, name=name) -> Outcome:
                folder = self.fresh(f"model-out {name}")
                image = folder / "img.tif"
                import tifffile

                tifffile.imwrite(image, self.image)
                download_calls.clear()
                with _recording_downloads(download_calls):
                    outcome = run_cli(["segment", image, "--model", path, "--overwrite", "-q"])
                if download_calls:
                    return Outcome("silent", f"tried to download {download_calls[0]} without being asked")
                if outcome.category == "defined":
                    labels = folder / "img_labels.tif"
                    values = set(np.unique(tifffile.imread(labels)).tolist()) if labels.exists() else set()
                    if not values <= {1, 2}:
                        return Outcome("silent", f"wrote labels {sorted(values)}")
                if marker.exists():
                    return Outcome("lost", "the pickle payload ran (marker file created)")
                return outcome

            self.add(f"model/{name}/api load", api_case)
            self.add(f"model/{name}/cli segment", cli_case)

        def other_weights() -> Outcome:
            folder = self.fresh("model other weights")
            import tifffile

            tifffile.imwrite(folder / "img.tif", self.image)
            return run_cli(["segment", folder / "img.tif", "--model", self.model, "--backbone-path",
                            self.other_backbone, "--overwrite"],
                           lambda _out, err: True if "arning" in err else "applied with other weights silently")  # fmt: skip

        self.add("model/other backbone weights of the same width/cli segment", other_weights)

    # ------------------------------------------------------------------ outputs and faults
    def _output_cases(self) -> None:
        import tifffile

        image, strokes = self.image, self.strokes

        def features_onto_input() -> Outcome:
            folder = self.fresh("features onto input")
            stack = folder / "stack.tif"
            tifffile.imwrite(stack, np.stack([image] * 2))
            return run_cli(["features", stack, "-o", stack, "--overwrite", *self.opts], protect=(stack,),
                           expect="error")  # fmt: skip

        def train_onto_labels() -> Outcome:
            folder = self.fresh("train onto labels")
            labels = folder / "labels.tif"
            tifffile.imwrite(labels, strokes)
            return run_cli(["train", self.files / "tex.tif", "--labels", labels, "-o", labels, "--overwrite",
                            *self.opts], protect=(labels,), expect="error")  # fmt: skip

        def train_onto_image() -> Outcome:
            folder = self.fresh("train onto image")
            img = folder / "img.tif"
            tifffile.imwrite(img, image)
            return run_cli(["train", img, "--labels", self.files / "tex_strokes.tif", "-o", img, "--overwrite",
                            *self.opts], protect=(img,), expect="error")  # fmt: skip

        def onto_folder(command: str) -> Callable[[], Outcome]:
            def case() -> Outcome:
                folder = self.fresh(f"{command} onto folder")
                target = folder / "out.npy" if command == "features" else folder / "model.hrdv2"
                target.mkdir(exist_ok=True)
                (target / "keep.txt").write_text("keep")
                if command == "features":
                    argv = ["features", self.files / "tex.tif", "-o", target, "--overwrite", *self.opts]
                else:
                    argv = ["train", self.files / "tex.tif", "--labels", self.files / "tex_strokes.tif", "-o",
                            target, "--overwrite", *self.opts]  # fmt: skip
                return run_cli(argv, protect=(target / "keep.txt",), expect="error")

            return case

        def segment_outdir_is_file() -> Outcome:
            folder = self.fresh("segment outdir file")
            (folder / "out").write_text("x")
            return run_cli(["segment", self.files / "tex.tif", "--model", self.model, "-o", folder / "out"],
                           protect=(folder / "out",), expect="error")  # fmt: skip

        def api_save_onto_folder() -> Outcome:
            from napari_hrdv2.core.segmentation.segmenter import LinearSegmenter

            folder = self.fresh("api save folder") / "m.hrdv2"
            folder.mkdir(exist_ok=True)
            model = LinearSegmenter.load(self.model)
            return run_api(lambda: model.save(folder, overwrite=True), expect="error")

        def api_write_labels_onto_folder() -> Outcome:
            from napari_hrdv2.core.files.images import write_labels

            folder = self.fresh("api labels folder") / "l.tif"
            folder.mkdir(exist_ok=True)
            return run_api(lambda: write_labels(folder, strokes, overwrite=True), expect="error")

        def same_stem() -> Outcome:
            folder = self.fresh("same stem")
            for sub in ("a", "b"):
                (folder / sub).mkdir(exist_ok=True)
                tifffile.imwrite(folder / sub / "x.tif", image if sub == "a" else image[:, ::-1].copy())
            out = folder / "out"
            argv = ["segment", folder / "a" / "x.tif", folder / "b" / "x.tif", "--model", self.model, "-o", out, "-q"]
            first = run_cli(argv)
            second = run_cli(argv)
            if first.category in ("clear",) and second.category == "clear":
                return first
            if (out / "x_labels.tif").exists() and second.category == "defined":
                return Outcome("silent", f"first run: {first.category} {first.detail[:80]}; the re-run skips both")
            return Outcome(second.category, f"first: {first.detail[:100]}; second: {second.detail[:100]}")

        self.add("output/features -o the input stack --overwrite/cli", features_onto_input)
        self.add("output/train -o the labels file --overwrite/cli", train_onto_labels)
        self.add("output/train -o the image file --overwrite/cli", train_onto_image)
        self.add("output/features -o onto a folder/cli", onto_folder("features"))
        self.add("output/train -o onto a folder/cli", onto_folder("train"))
        self.add("output/segment -o is a file/cli", segment_outdir_is_file)
        self.add("output/save a model onto a folder/api", api_save_onto_folder)
        self.add("output/write labels onto a folder/api", api_write_labels_onto_folder)
        self.add("output/two inputs with one stem, one -o/cli segment", same_stem)

        # interrupted writes (Ctrl-C in the middle of writing), with and without a previous good result
        for command in ("segment", "features", "train"):
            for previous in (False, True):
                self.add(f"fault/interrupt while writing ({'--overwrite' if previous else 'first run'})/cli {command}",
                         lambda command=command, previous=previous: self._interrupted(command, previous))  # fmt: skip
        # full disk and read-only output folders
        for command in ("segment", "features", "train", "features --pca", "segment --uncertainty"):
            self.add(f"fault/full disk/cli {command}", lambda command=command: self._full_disk(command))
            self.add(f"fault/read-only output folder/cli {command}", lambda command=command: self._read_only(command))

    def _argv(self, command: str, out: Path, *, source: Path | None = None) -> tuple[list[Any], list[Path]]:
        """argv of a writing command with its outputs under ``out``; and the files it writes."""
        source = source or self.files / "tex.tif"
        if command.startswith("segment"):
            extra = ["--uncertainty"] if "uncertainty" in command else []
            targets = [out / "tex_labels.tif"] + ([out / "tex_uncertainty.tif"] if extra else [])
            return ["segment", source, "--model", self.model, "-o", out, "-q", *extra], targets
        if command.startswith("features"):
            if "pca" in command:
                return ["features", source, "--pca", out / "pca.png", *self.opts], [out / "pca.png"]
            return ["features", source, "-o", out / "f.npy", *self.opts], [out / "f.npy"]
        return ["train", source, "--labels", self.files / "tex_strokes.tif", "-o", out / "m.hrdv2", *self.opts], [
            out / "m.hrdv2"
        ]

    def _interrupted(self, command: str, previous: bool) -> Outcome:
        import tifffile

        folder = self.fresh(f"interrupt {command} {previous}")
        stack = folder / "stack.tif"
        tifffile.imwrite(stack, np.stack([self.image] * 3))
        argv, targets = self._argv(command, folder, source=stack if command != "train" else None)
        if command == "segment":
            targets = [folder / "stack_labels.tif"]
        for target in targets:
            target.unlink(missing_ok=True)
        if previous:
            code = run_cli([*argv, "--overwrite"])
            if code.category != "defined":
                return Outcome("skipped", f"could not make the previous result: {code.detail}")
            argv = [*argv, "--overwrite"]
        before = {t: digest(t) for t in targets}
        with _interrupt_writes():
            outcome = run_cli(argv)
        for target in targets:
            if previous and digest(target) != before[target]:
                return Outcome("lost", f"the previous {target.name} was destroyed by the interrupted run")
            if not previous and target.exists():
                if not _complete(target):
                    return Outcome("lost", f"{target.name} exists but is incomplete after the interrupt")
                return Outcome("silent", f"{target.name} looks complete although the run was interrupted")
        rerun = run_cli([a for a in argv if a != "--overwrite"])
        if not previous and command == "segment" and "skipped" in rerun.detail:
            return Outcome("silent", "the re-run skipped the interrupted output")
        if outcome.category in ("clear", "unclear") or "interrupted" in outcome.detail:
            return Outcome("clear", f"interrupted cleanly: {outcome.detail[:120]}")
        return outcome

    def _full_disk(self, command: str) -> Outcome:
        with tmpfs("300k") as mount:
            if mount is None:
                return Outcome("skipped", "cannot mount a tmpfs here")
            big = self.fresh("full disk input") / "tex.tif"
            if not big.exists():
                import tifffile

                rng = np.random.default_rng(3)
                tifffile.imwrite(big, (rng.random((280, 280)) * 255).astype(np.uint8))
            argv, targets = self._argv(command, mount, source=big)
            # fill the disk to leave ~20 kB
            filler = mount / "filler"
            with open(filler, "wb") as handle, contextlib.suppress(OSError):
                handle.write(b"\0" * (300 * 1024 - 20 * 1024))
            outcome = run_subprocess(argv, timeout=120)
            for target in targets:
                if target.exists() and not _complete(target):
                    return Outcome("lost", f"{target.name} exists but is incomplete; {outcome.detail[:100]}")
            return outcome

    def _read_only(self, command: str) -> Outcome:
        with tmpfs("1m", read_only=True) as mount:
            if mount is None:
                return Outcome("skipped", "cannot mount a read-only tmpfs here")
            argv, _ = self._argv(command, mount / "out" if command.startswith("segment") else mount)
            return run_cli(argv, expect="error")

    # ------------------------------------------------------------------ options
    def _option_cases(self) -> None:
        image = self.files / "tex.tif"
        out = self.fresh("options") / "f.npy"
        base = ["features", image, "-o", out, "--overwrite", "--backbone", self.backbone, "--device", "cpu", "-q",
                "--tile-size", "none"]  # fmt: skip
        refused = {
            "--tile-size abc": ["--tile-size", "abc"],
            "--tile-size 10": ["--tile-size", "10"],
            "--tile-overlap -1": ["--tile-size", "100", "--tile-overlap", "-1"],
            "--tile-overlap 500": ["--tile-size", "100", "--tile-overlap", "500"],
            "--batch-size 0": ["--batch-size", "0"],
            "--distances 0": ["--distances", "0"],
            "--stride 0x": ["--stride", "0x"],
            "--plane 5 on one image": ["--plane", "5"],
            "--plane -1": ["--plane", "-1"],
            "--device banana": ["--device", "banana"],
            "--device cuda without a GPU": ["--device", "cuda"],
            "--dtype-out int8": ["--dtype-out", "int8"],
            "--sha256 wrong": ["--sha256", "0" * 64],
            "--backbone missing folder": ["--backbone", "/nonexistent/folder"],
            "--pca x.jpg": ["--pca", str(out.with_suffix(".jpg"))],
        }
        for name, extra in refused.items():
            self.add(f"option/{name}/cli features", lambda extra=extra: run_cli([*base, *extra], expect="error"))
        accepted = {
            "--shifts none": ["--shifts", "none"],
            "--stride none": ["--stride", "none"],
            "--shifts moore --distances 2 4": ["--shifts", "moore", "--distances", "2", "4"],
            "--preset fast": ["--preset", "fast"],
            "--dtype-out float16": ["--dtype-out", "float16"],
        }
        for name, extra in accepted.items():
            self.add(f"option/{name}/cli features", lambda extra=extra: run_cli([*base, *extra], expect="result"))
        train = ["train", image, "--labels", self.files / "tex_strokes.tif", "-o", self.fresh("options") / "m.hrdv2",
                 "--overwrite", *self.opts]  # fmt: skip
        for name, extra in {"--l2 -1": ["--l2", "-1"], "--l2 nan": ["--l2", "nan"], "--max-iter 0": ["--max-iter", "0"],
                            "--majority-size -3": ["--majority-size", "-3"]}.items():  # fmt: skip
            self.add(f"option/{name}/cli train", lambda extra=extra: run_cli([*train, *extra], expect="error"))
        self.add("option/--format jpg/cli segment",
                 lambda: run_cli(["segment", image, "--model", self.model, "--format", "jpg"], expect="error"))  # fmt: skip
        self.add("option/no outputs/cli features",
                 lambda: run_cli(["features", image, "--backbone", self.backbone], expect="error"))  # fmt: skip

        def api_config(**values: Any) -> Callable[[], Outcome]:
            import napari_hrdv2 as hr

            return lambda: run_api(lambda: hr.FeatureConfig(**values), expect="error")

        for name, values in {"tile_size='abc'": {"tile_size": "abc"}, "stride='x'": {"stride": "x"},
                             "batch_size=0.5": {"batch_size": 0.5}, "tile_overlap=None": {"tile_overlap": None},
                             "shift_distances='5'": {"shift_distances": "5x"}}.items():  # fmt: skip
            self.add(f"option/FeatureConfig({name})/api", api_config(**values))

    # ------------------------------------------------------------------ second pass (issue "Reliability, second pass")
    def _basis(self) -> Path:
        """A 3-component PCA basis fitted on tex.tif with the tiny backbone."""
        path = self.root / "basis.safetensors"
        if not path.exists():
            outcome = run_cli(["pca", "fit", self.files / "tex.tif", "-o", path, "--components", "3", *self.opts])
            assert outcome.category == "defined", outcome
        return path

    def _crafted_basis(self, name: str, change: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]) -> Path:
        """The basis with tensors changed and its checksum dropped (a file written before checksums existed)."""
        from safetensors import safe_open
        from safetensors.numpy import save_file

        with safe_open(str(self._basis()), framework="numpy") as handle:
            meta = dict(handle.metadata())
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        meta.pop("checksum", None)
        tensors.update(change(tensors))
        path = self.fresh(f"basis {name}") / "b.safetensors"
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata=meta)
        return path

    def _edited_backbone(self, name: str, change: Callable[[dict[str, Any]], None]) -> Path:
        """A copy of the tiny backbone folder whose model.safetensors was edited by ``change``."""
        import shutil

        from safetensors.torch import load_file, save_file

        folder = self.fresh(f"backbone {name}") / "edited"
        if not folder.exists():
            shutil.copytree(self.backbone, folder)
            state = load_file(str(folder / "model.safetensors"))
            change(state)
            save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"),
                      metadata={"format": "pt"})  # fmt: skip
        return folder

    def _second_pass_cases(self) -> None:
        import shutil

        import tifffile
        import zarr

        from napari_hrdv2.core.segmentation.segmenter import LinearSegmenter

        def tree(folder: Path) -> dict[str, str | None]:
            return {str(p.relative_to(folder)): digest(p) for p in sorted(folder.rglob("*"))}

        def zarr_image(path: Path) -> Path:
            if not path.exists():
                zarr.save_array(str(path), self.image)
            return path

        def broken_ome_zarr(path: Path) -> Path:
            group = zarr.open_group(str(path), mode="w")
            group.attrs["multiscales"] = [
                {"version": "0.4", "axes": [{"name": "y"}, {"name": "x"}], "datasets": [{"path": "0"}]}
            ]
            return path

        # -------------------------------------------------------------- data loss
        def match_png_onto_input() -> Outcome:
            from PIL import Image

            folder = self.fresh("match png onto input")
            for name in ("a.png", "b.png"):
                Image.fromarray(self.image).save(folder / name)
            outcome = run_cli(["match", folder / "a.png", folder / "b.png", "-o", folder / "m.csv", "--png",
                               folder / "a.png", "--overwrite", *self.opts], protect=(folder / "a.png",),
                              expect="error")  # fmt: skip
            if outcome.category == "clear" and (folder / "m.csv").exists():
                return Outcome("silent", f"refused, but m.csv written; {outcome.detail}")
            return outcome

        def pca_apply_own_outputs() -> Outcome:
            from PIL import Image

            folder = self.fresh("pca apply own outputs") / "d9"
            folder.mkdir(exist_ok=True)
            Image.fromarray(self.image).save(folder / "x.png")
            Image.fromarray(self.image[::-1].copy()).save(folder / "x_pca.png")  # the user's file (or a last view)

            def only_its_own(_out: str, _err: str) -> bool | str:
                names = sorted(p.name for p in folder.iterdir())
                return True if names == ["x.png", "x_pca.png"] else f"read its own output as an input: {names}"

            return run_cli(["pca", "apply", folder, "--basis", self._basis(), "-o", folder, "--overwrite",
                            "--device", "cpu", "-q"], only_its_own, protect=(folder / "x.png",),
                           expect="result")  # fmt: skip

        def stream_segment_onto_input(inside: bool) -> Callable[[], Outcome]:
            def case() -> Outcome:
                import napari_hrdv2 as hr

                source = zarr_image(self.fresh(f"stream onto input {inside}") / "in.zarr")
                before = tree(source)
                segmenter = LinearSegmenter.load(self.model)
                target = source / "labels.zarr" if inside else source
                outcome = run_api(lambda: hr.stream_segment(segmenter, source, {"labels": target},
                                                            featurizer=segmenter.feature_config),
                                  expect="error")  # fmt: skip
                if tree(source) != before or not np.array_equal(hr.open_lazy(source)[...], self.image):
                    return Outcome("lost", f"the input in.zarr was changed; {outcome.category}: {outcome.detail}")
                return outcome

            return case

        def batch_into_zarr_input() -> Outcome:
            source = zarr_image(self.fresh("batch into zarr input") / "x.zarr")
            before = tree(source)
            outcome = run_cli(["segment", source, "--model", self.model, "-o", source, "--format", "zarr",
                               "--overwrite", "-q"], expect="error")  # fmt: skip
            if tree(source) != before:
                return Outcome("lost", f"the input x.zarr was changed; {outcome.category}: {outcome.detail}")
            return outcome

        self.add("second pass/data loss/match --png onto image A --overwrite/cli", match_png_onto_input)
        self.add("second pass/data loss/pca apply d9 -o d9 --overwrite with the user's x_pca.png/cli",
                 pca_apply_own_outputs)  # fmt: skip
        self.add("second pass/data loss/stream_segment labels onto in.zarr/api", stream_segment_onto_input(False))
        self.add("second pass/data loss/stream_segment labels into in.zarr/labels.zarr/api",
                 stream_segment_onto_input(True))  # fmt: skip
        self.add("second pass/data loss/segment x.zarr -o x.zarr --format zarr --overwrite/cli", batch_into_zarr_input)

        # -------------------------------------------------------------- silent results
        def torn_chunk(tear: str) -> Callable[[], Outcome]:
            def case() -> Outcome:
                from napari_hrdv2.core.files.lazy import ZarrOutput

                folder = self.fresh(f"torn chunk {tear}")
                job = {"model_sha256": "abc", "input": "x.tif"}

                def output() -> ZarrOutput:
                    return ZarrOutput(folder / "x_labels.zarr", (1, 40, 50), "uint8", chunks=16, job=job, single=True)

                first = output().open()
                first.write_rows(0, 0, np.full((32, 50), 3, np.uint8))  # chunk rows 0 and 1, then the run stops
                chunk = first.partial / "0" / "1.2"
                data = chunk.read_bytes()
                chunk.write_bytes(data[: len(data) // 2] if tear == "truncated" else bytes(len(data)))

                def resume() -> np.ndarray:
                    resumed = output().open()
                    done = resumed.done_rows(0)
                    for row in range(resumed.n_chunk_rows):  # as the driver does: only the rows not done
                        if row not in done:
                            top = row * 16
                            resumed.write_rows(0, top, np.full((min(16, 40 - top), 50), 3, np.uint8))
                    path = resumed.finish()
                    return zarr.open_group(str(path), mode="r")["0"][:]

                def check(labels: np.ndarray) -> bool | str:
                    if np.array_equal(labels, np.full((40, 50), 3, np.uint8)):
                        return True
                    return f"the resumed output kept the torn chunk ({(labels != 3).mean():.1%} of pixels wrong)"

                return run_api(resume, check, expect="result")

            return case

        self.add(
            "second pass/silent/resume a Zarr output with a truncated chunk/api ZarrOutput", torn_chunk("truncated")
        )
        self.add("second pass/silent/resume a Zarr output with a zeroed chunk/api ZarrOutput", torn_chunk("zeroed"))

        def basis_other_weights() -> Outcome:
            import napari_hrdv2 as hr

            basis = hr.PCABasis.load(self._basis())
            config = self.config().replace(backbone=self.other_backbone)
            encoding = hr.Featurizer(config).encode(self.image, with_attention=False)
            return run_api(lambda: basis.to_rgb(encoding), expect="error")

        self.add("second pass/silent/basis applied with other backbone weights of the same width/api to_rgb",
                 basis_other_weights)  # fmt: skip

        def backbone_case(name: str, change: Callable[[dict[str, Any]], None]) -> None:
            def case() -> Outcome:
                folder = self._edited_backbone(name, change)
                out = self.fresh(f"backbone out {name}") / "f.npy"
                opts = [a if a != self.backbone else folder for a in self.opts]

                def finite(_out: str, _err: str) -> bool | str:
                    return True if np.isfinite(np.load(out)).all() else "non-finite features"

                return run_cli(["features", self.files / "tex.tif", "-o", out, "--overwrite", *opts], finite,
                               expect="error")  # fmt: skip

            self.add(f"second pass/silent/{name}/cli features --backbone", case)

        backbone_case("NaN tensor in a transformers-layout folder",
                      lambda s: s["embeddings.cls_token"].fill_(float("nan")))  # fmt: skip

        def to_int8(state: dict[str, Any]) -> None:
            import torch

            state["layernorm.weight"] = state["layernorm.weight"].to(torch.int8)

        backbone_case("int8 weights in a transformers-layout folder", to_int8)

        basis_changes: dict[str, Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]] = {
            "NaN components": lambda t: {"components": np.full_like(t["components"], np.nan)},
            "high == low": lambda t: {"high": t["low"].copy()},
            "high = inf": lambda t: {"high": np.full_like(t["high"], np.inf)},
        }
        for name, change in basis_changes.items():

            def basis_case(name: str = name, change: Callable[..., Any] = change) -> Outcome:
                basis = self._crafted_basis(name, change)
                out = self.fresh(f"basis out {name}")

                def finite_view(_out: str, _err: str) -> bool | str:
                    from PIL import Image

                    view = np.asarray(Image.open(out / "tex_pca.png"))
                    return True if view.std() > 0 else "a constant PCA view"

                return run_cli(["pca", "apply", self.files / "tex.tif", "--basis", basis, "-o", out, "--overwrite",
                                "--device", "cpu", "-q"], finite_view, expect="error")  # fmt: skip

            self.add(f"second pass/silent/basis with {name}/cli pca apply", basis_case)

        def edited_model(name: str, meta_change: dict[str, str], drop_checksum: bool) -> Path:
            from safetensors import safe_open
            from safetensors.numpy import save_file

            with safe_open(str(self.model), framework="numpy") as handle:
                meta = dict(handle.metadata())
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
            meta.update(meta_change)
            if drop_checksum:
                meta.pop("checksum", None)
            path = self.fresh(f"edited model {name}") / "m.hrdv2"
            save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata=meta)
            return path

        from safetensors import safe_open

        with safe_open(str(self.model), framework="numpy") as handle:
            config = json.loads(handle.metadata()["feature_config"])
        shifts_edit = {"feature_config": json.dumps(dict(config, shifts="moore"))}

        def edited_shifts_api() -> Outcome:
            path = edited_model("shifts", shifts_edit, drop_checksum=False)
            return run_api(lambda: LinearSegmenter.load(path), expect="error")

        def edited_shifts_cli() -> Outcome:
            path = edited_model("shifts", shifts_edit, drop_checksum=False)
            folder = self.fresh("edited model shifts out")
            return run_cli(["segment", self.files / "tex.tif", "--model", path, "-o", folder, "--overwrite", "-q"],
                           expect="error")  # fmt: skip

        self.add("second pass/silent/model with an edited feature_config.shifts/api load", edited_shifts_api)
        self.add("second pass/silent/model with an edited feature_config.shifts/cli segment", edited_shifts_cli)

        # -------------------------------------------------------------- tracebacks
        def pca_apply_full_disk() -> Outcome:
            big = self.fresh("pca full disk input") / "big.tif"
            if not big.exists():
                rng = np.random.default_rng(3)
                tifffile.imwrite(big, (rng.random((280, 280)) * 255).astype(np.uint8))
            basis = self._basis()
            with tmpfs("300k") as mount:
                if mount is None:
                    out = self.fresh("pca full disk mocked")
                    with _free_bytes(1_000):
                        outcome = run_cli(["pca", "apply", big, "--basis", basis, "-o", out, "-q"], expect="error")
                    left = [p.name for p in out.iterdir()]
                    return Outcome("silent", f"files written although refused: {left}") if left else outcome
                with open(mount / "filler", "wb") as handle, contextlib.suppress(OSError):
                    handle.write(b"\0" * (300 * 1024 - 4 * 1024))
                outcome = run_subprocess(["pca", "apply", big, "--basis", basis, "-o", mount, "--device", "cpu",
                                          "-q"], timeout=120)  # fmt: skip
                target = mount / "big_pca.png"
                if target.exists() and not _complete(target):
                    return Outcome("lost", f"{target.name} exists but is incomplete; {outcome.detail[:100]}")
                if outcome.category == "defined":
                    return Outcome("silent", "succeeded on a full disk") if not _complete(target) else outcome
                return outcome

        self.add("second pass/traceback/pca apply on a full disk (tmpfs)/cli", pca_apply_full_disk)

        def open_lazy_missing_dataset() -> Outcome:
            import napari_hrdv2 as hr

            path = broken_ome_zarr(self.fresh("open_lazy missing dataset") / "m.zarr")
            return run_api(lambda: hr.open_lazy(path), expect="error")

        self.add(
            "second pass/traceback/OME-Zarr naming a missing dataset path/api open_lazy", open_lazy_missing_dataset
        )

        names_list = {"class_names": json.dumps(["cell", "background"])}

        def class_names_list_api() -> Outcome:
            path = edited_model("class_names list", names_list, drop_checksum=True)
            return run_api(lambda: LinearSegmenter.load(path), expect="error")

        def class_names_list_cli() -> Outcome:
            path = edited_model("class_names list", names_list, drop_checksum=True)
            folder = self.fresh("class_names list out")
            return run_cli(["segment", self.files / "tex.tif", "--model", path, "-o", folder, "--overwrite", "-q"],
                           expect="error")  # fmt: skip

        self.add("second pass/traceback/model whose class_names is a JSON list/api load", class_names_list_api)
        self.add("second pass/traceback/model whose class_names is a JSON list/cli segment", class_names_list_cli)

        # -------------------------------------------------------------- batch
        def broken_zarr_in_batch() -> Outcome:
            folder = self.fresh("batch broken zarr")
            inputs = folder / "in"
            inputs.mkdir(exist_ok=True)
            for name in ("b.tif", "z.tif"):
                tifffile.imwrite(inputs / name, self.image)
            broken_ome_zarr(inputs / "m.zarr")
            out = folder / "out"
            shutil.rmtree(out, ignore_errors=True)
            outcome = run_cli(["segment", inputs, "--model", self.model, "-o", out, "-q"], expect="error")
            written = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
            if written != ["b_labels.tif", "z_labels.tif"]:
                return Outcome("silent", f"the batch wrote {written}; {outcome.category}: {outcome.detail[:120]}")
            if outcome.category == "clear" and "exit 1" not in outcome.detail:
                return Outcome("unclear", f"not exit 1: {outcome.detail}")
            return outcome

        self.add("second pass/batch/b.tif + a broken OME-Zarr + z.tif in one folder/cli segment", broken_zarr_in_batch)

        # -------------------------------------------------------------- unclear
        def concurrent_zarr_runs() -> Outcome:
            folder = self.fresh("concurrent zarr")
            out = folder / "out"
            shutil.rmtree(out, ignore_errors=True)
            argv = ["segment", self.files / "tex.tif", "--model", self.model, "-o", out, "--format", "zarr", "-q"]
            code = textwrap.dedent("""
                import sys, time
                from napari_hrdv2.core.files import lazy
                real = lazy.ZarrOutput.write_rows
                def slow(self, *args, **kwargs):
                    time.sleep(8)
                    return real(self, *args, **kwargs)
                lazy.ZarrOutput.write_rows = slow
                from napari_hrdv2.cli import main
                sys.exit(main(sys.argv[1:]))
            """)
            first = subprocess.Popen([sys.executable, "-c", code, *map(str, argv)], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)  # fmt: skip
            lock = out / "tex_labels.zarr.partial" / ".hrdv2_state" / "lock.json"
            try:
                deadline = time.monotonic() + 50
                while not lock.exists() and first.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.1)
                if not lock.exists():
                    return Outcome("skipped", f"the first run took no lock (exit {first.poll()})")
                second = run_cli(argv, expect="error")
                _, first_err = first.communicate(timeout=60)
            finally:
                if first.poll() is None:
                    first.kill()
                    first.wait()
            if first.returncode != 0:
                return Outcome("lost", f"the first run failed (exit {first.returncode}: {first_err.strip()[-160:]}); "
                                       f"second: {second.category}: {second.detail[:100]}")  # fmt: skip
            labels = zarr.open_group(str(out / "tex_labels.zarr"), mode="r")["0"][:]
            if not set(np.unique(labels).tolist()) <= {1, 2} or labels.shape[-2:] != self.image.shape:
                return Outcome("lost", f"the first run's output is damaged: shape {labels.shape}")
            if second.category == "clear" and "another run" not in second.detail:
                return Outcome("unclear", f"refused, but not for the other run: {second.detail}")
            return second

        self.add("second pass/unclear/two concurrent segment --format zarr runs on one output/cli",
                 concurrent_zarr_runs)  # fmt: skip
        self.add("second pass/unclear/--scheduler udp://x/cli segment",
                 lambda: run_cli(["segment", self.files / "tex.tif", "--model", self.model, "-o",
                                  self.fresh("udp"), "--scheduler", "udp://x", "-q"], expect="error"))  # fmt: skip

        def zarr_image_cases() -> None:
            def features() -> Outcome:
                folder = self.fresh("features zarr image")
                source = zarr_image(folder / "img.zarr")
                out = folder / "f.npy"

                def shape(_out: str, _err: str) -> bool | str:
                    found = np.load(out).shape
                    return True if found[-2:] == self.image.shape and len(found) == 3 else f"features {found}"

                return run_cli(["features", source, "-o", out, "--overwrite", *self.opts], shape, expect="result",
                               protect=(source / ".zarray",))  # fmt: skip

            def train() -> Outcome:
                folder = self.fresh("train zarr image")
                source = zarr_image(folder / "img.zarr")
                strokes = folder / "strokes.zarr"
                if not strokes.exists():
                    zarr.save_array(str(strokes), self.strokes)
                out = folder / "m.hrdv2"

                def loads(_out: str, _err: str) -> bool | str:
                    return True if LinearSegmenter.load(out).classes_.tolist() == [1, 2] else "wrong classes"

                return run_cli(["train", source, "--labels", strokes, "-o", out, "--overwrite", *self.opts], loads,
                               expect="result")  # fmt: skip

            self.add("second pass/unclear/features on a .zarr image/cli", features)
            self.add("second pass/unclear/train on a .zarr image and .zarr labels/cli", train)

        zarr_image_cases()

        def special_paths() -> dict[str, Path]:
            folder = self.fresh("special paths")
            paths = {name: folder / name for name in ("pipe.tif", "pipe.hrdv2", "pipe.safetensors", "loop.tif",
                                                      "loop2.tif", "folder.hrdv2")}  # fmt: skip
            if not paths["pipe.tif"].exists():
                for name in ("pipe.tif", "pipe.hrdv2", "pipe.safetensors"):
                    os.mkfifo(paths[name])
                paths["loop.tif"].symlink_to(paths["loop2.tif"])
                paths["loop2.tif"].symlink_to(paths["loop.tif"])
                paths["folder.hrdv2"].mkdir()
            return paths

        tex, out_npy = self.files / "tex.tif", self.fresh("special out") / "f.npy"
        special: dict[str, Callable[[dict[str, Path]], list[Any]]] = {
            "FIFO as the image/cli features": lambda p: ["features", p["pipe.tif"], "-o", out_npy, *self.opts],
            "FIFO as the labels/cli train": lambda p: ["train", tex, "--labels", p["pipe.tif"], "-o",
                                                       out_npy.with_suffix(".hrdv2"), *self.opts],
            "FIFO as the model/cli segment": lambda p: ["segment", tex, "--model", p["pipe.hrdv2"], "-q"],
            "FIFO as the basis/cli pca apply": lambda p: ["pca", "apply", tex, "--basis", p["pipe.safetensors"], "-o",
                                                          out_npy.parent, "-q"],
            "FIFO as the backbone/cli features": lambda p: ["features", tex, "-o", out_npy, "--backbone",
                                                            p["pipe.safetensors"], "-q"],
            "symlink loop as the image/cli features": lambda p: ["features", p["loop.tif"], "-o", out_npy, *self.opts],
            "symlink loop as the image/cli segment": lambda p: ["segment", p["loop.tif"], "--model", self.model, "-o",
                                                                out_npy.parent / "o", "-q"],
            "a folder as --model/cli segment": lambda p: ["segment", tex, "--model", p["folder.hrdv2"], "-q"],
        }  # fmt: skip
        for name, argv in special.items():
            if not hasattr(os, "mkfifo"):
                continue
            self.add(f"second pass/unclear/{name}",
                     lambda argv=argv: run_cli(argv(special_paths()), expect="error"))  # fmt: skip

        def channels_last_tiff() -> Outcome:
            folder = self.fresh("channels last tiff")
            image, _ = two_textures(112)
            path = folder / "c5.tif"
            tifffile.imwrite(path, np.stack([image, 255 - image, image // 2, image, image], axis=-1))
            out = folder / "f.npy"

            def shape(_out: str, _err: str) -> bool | str:
                found = np.load(out).shape
                return True if found[-2:] == (112, 112) and len(found) == 3 else f"features {found}"

            return run_cli(["features", path, "-o", out, "--channels", "0", "--overwrite", *self.opts], shape,
                           expect="result", protect=(path,))  # fmt: skip

        self.add("second pass/unclear/(112,112,5) TIFF with --channels 0/cli features", channels_last_tiff)

        def backbone_argv(backbone: Any, name: str) -> list[Any]:
            out = self.fresh(f"backbone arg {name}") / "f.npy"
            opts = [a if a != self.backbone else backbone for a in self.opts]
            return ["features", self.files / "tex.tif", "-o", out, "--overwrite", *opts]

        def config_mismatch() -> Outcome:
            folder = self.fresh("config mismatch") / "mixed"
            if not folder.exists():
                shutil.copytree(self.backbone, folder)
                config = json.loads((folder / "config.json").read_text())
                config["hidden_size"] = 32
                (folder / "config.json").write_text(json.dumps(config))
            return run_cli(backbone_argv(folder, "mixed"), expect="error")

        self.add("second pass/unclear/config.json size disagrees with the weights/cli features --backbone",
                 config_mismatch)  # fmt: skip
        self.add("second pass/unclear/a .hrdv2 model as --backbone/cli features",
                 lambda: run_cli(backbone_argv(self.model, "model"), expect="error"))  # fmt: skip

        def relative_backbone() -> Outcome:
            here = Path.cwd()
            folder = self.fresh("relative backbone")
            model = folder / "m.hrdv2"
            opts = [a if a != self.backbone else "tiny" for a in self.opts]
            try:
                os.chdir(self.root)  # the tiny backbone is ./tiny here
                trained = run_cli(["train", self.files / "tex.tif", "--labels", self.files / "tex_strokes.tif", "-o",
                                   model, "--overwrite", *opts])  # fmt: skip
                if trained.category != "defined":
                    return Outcome("skipped", f"could not train with --backbone tiny: {trained.detail}")
                elsewhere = self.fresh("relative backbone elsewhere")
                os.chdir(elsewhere)  # a fresh process: the backbone loaded above is not in its cache
                outcome = run_subprocess(["segment", self.files / "tex.tif", "--model", model, "-o", elsewhere / "o",
                                          "--overwrite", "-q"], timeout=120)  # fmt: skip
            finally:
                os.chdir(here)
            if outcome.category == "defined":
                return Outcome("silent", "applied from another folder although its backbone 'tiny' is not there")
            if outcome.category == "clear" and "--backbone-path" not in outcome.detail:
                return Outcome("unclear", f"no hint at --backbone-path: {outcome.detail}")
            if outcome.category == "unclear" and "--backbone-path" in outcome.detail:  # one line, but how long?
                return Outcome("unclear", f"one line with the hint, but longer than 600 chars; {outcome.detail}")
            return outcome

        self.add("second pass/unclear/model trained with a relative --backbone, used from another folder/cli segment",
                 relative_backbone)  # fmt: skip

        def truncated_hf_cache() -> Outcome:
            snapshot = self.root / "hub" / "models--facebook--dinov2-small" / "snapshots" / "0123abcd"
            if not snapshot.exists():
                shutil.copytree(self.backbone, snapshot)
                data = (snapshot / "model.safetensors").read_bytes()
                (snapshot / "model.safetensors").write_bytes(data[: len(data) // 2])
            outcome = run_cli(backbone_argv(snapshot, "hf cache"), expect="error")
            if outcome.category == "clear" and "Hugging Face cache" not in outcome.detail:  # (detail: 240 chars)
                return Outcome("unclear", f"not named a damaged file of the Hugging Face cache: {outcome.detail}")
            return outcome

        self.add("second pass/unclear/truncated model.safetensors in the Hugging Face cache/cli features --backbone",
                 truncated_hf_cache)  # fmt: skip


    # ------------------------------------------------------------------ ONNX Runtime (issue 21)
    def _runtime_cases(self) -> None:
        """Exported runtimes (``--runtime onnxruntime`` / ``openvino``, where installed): refused settings, and a
        damaged or unwritable cache of exported graphs."""
        for runtime in ("onnxruntime", "openvino"):
            if importlib.util.find_spec(runtime) is not None and importlib.util.find_spec("onnx") is not None:
                self._exported_runtime_cases(runtime)

    def _exported_runtime_cases(self, runtime: str) -> None:
        from napari_hrdv2.core.backbone.onnx_forward import ONNX_CACHE_ENV

        tex = self.files / "tex.tif"

        def features(out: Path, *extra: Any) -> list[Any]:
            return ["features", tex, "-o", out, "--overwrite", *self.opts, "--runtime", runtime, *extra]

        for name, extra in {"with --device cuda": ("--device", "cuda"), "with --dtype bfloat16": ("--dtype", "bfloat16"),
                            "with --dtype float16": ("--dtype", "float16")}.items():  # fmt: skip
            out = self.fresh(f"{runtime} {name}") / "f.npy"
            self.add(f"runtime/{runtime} {name}/cli features",
                     lambda out=out, extra=extra: run_cli(features(out, *extra), expect="error"))  # fmt: skip

        def with_cache(folder: Path, call: Callable[[], Outcome]) -> Outcome:
            before = os.environ.get(ONNX_CACHE_ENV)
            os.environ[ONNX_CACHE_ENV] = str(folder)
            try:
                return call()
            finally:
                if before is None:
                    os.environ.pop(ONNX_CACHE_ENV, None)
                else:
                    os.environ[ONNX_CACHE_ENV] = before

        def equals_torch(out: Path) -> Callable[[str, str], bool | str]:
            def check(_out: str, _err: str) -> bool | str:
                from napari_hrdv2.cli import main

                reference = self.fresh("runtime torch reference") / "f.npy"
                if not reference.exists():
                    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                        main([str(a) for a in ["features", tex, "-o", reference, "--overwrite", *self.opts]])
                found, expected = np.load(out), np.load(reference)
                if found.shape != expected.shape:
                    return f"shape {found.shape}, torch {expected.shape}"
                error = float(np.abs(found - expected).max() / (np.abs(expected).max() + 1e-12))
                tolerance = 1e-3 if found.dtype == np.float32 else 4 * float(np.finfo(found.dtype).eps)  # kernels round apart
                return True if error < tolerance else f"max relative difference {error:.2e} from torch ({found.dtype})"

            return check

        def in_fresh_process(cache: Path, out: Path) -> Outcome:
            """A fresh interpreter: no backbone or session of this process's earlier cases is reused."""
            outcome = with_cache(cache, lambda: run_subprocess(features(out), timeout=180))
            if outcome.category != "defined":
                return outcome
            verdict = equals_torch(out)("", "")
            return Outcome("defined", "ok") if verdict is True else Outcome("silent", str(verdict))

        def damaged_cache(how: str) -> Outcome:
            folder = self.fresh(f"{runtime} cache {how}")
            cache, out = folder / "cache", folder / "f.npy"
            first = in_fresh_process(cache, out)
            graphs = sorted(cache.rglob("*.onnx"))
            if first.category != "defined" or not graphs:
                return first if first.category != "defined" else Outcome("silent", "no exported graph was cached")
            for graph in graphs:
                data = graph.read_bytes()
                graph.write_bytes(data[: len(data) // 2] if how == "truncated" else data[:-64] + bytes(64))
            out.unlink()
            return in_fresh_process(cache, out)

        for how in ("truncated", "overwritten tail"):
            self.add(f"runtime/{runtime}: cached ONNX export {how}/cli features", lambda how=how: damaged_cache(how))

        def unwritable_cache() -> Outcome:
            folder = self.fresh(f"{runtime} cache unwritable")
            blocker, out = folder / "a file", folder / "f.npy"
            blocker.write_text("not a folder")
            return in_fresh_process(blocker / "cache", out)

        self.add(f"runtime/{runtime}: cache folder below a file/cli features", unwritable_cache)

@contextlib.contextmanager
def _free_bytes(free: int):
    """Pretend every disk has ``free`` bytes free, as the room check (``shutil.disk_usage``) sees it."""
    from napari_hrdv2.core.files import atomic

    real = atomic.shutil.disk_usage
    atomic.shutil.disk_usage = lambda path: real(path)._replace(free=free)
    try:
        yield
    finally:
        atomic.shutil.disk_usage = real


def _complete(path: Path) -> bool:
    try:
        if path.suffix == ".npy":
            np.load(path)
        elif path.suffix in (".tif", ".tiff"):
            import tifffile

            data = tifffile.imread(path)
            if data.size and not np.asarray(data).any():
                return False  # zero-filled
        elif path.suffix == ".png":
            from PIL import Image

            Image.open(path).load()
        else:
            from napari_hrdv2.core.segmentation.segmenter import LinearSegmenter

            LinearSegmenter.load(path)
    except Exception:  # noqa: BLE001
        return False
    return True


def _write_pickle_payload(path: Path, marker: Path) -> None:
    """A torch/pickle file whose loading creates ``marker`` (it must never run)."""
    import pickle

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, (f"touch {marker}",))

    path.write_bytes(pickle.dumps({"coef": Payload()}))


@contextlib.contextmanager
def _recording_downloads(calls: list[str]):
    """Record (and refuse) every Hugging Face download attempt."""
    import huggingface_hub

    def refuse(repo_id: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(repo_id)
        raise OSError("network disabled by the harness")

    saved = huggingface_hub.snapshot_download, huggingface_hub.hf_hub_download
    huggingface_hub.snapshot_download = refuse
    huggingface_hub.hf_hub_download = refuse
    try:
        yield
    finally:
        huggingface_hub.snapshot_download, huggingface_hub.hf_hub_download = saved


@contextlib.contextmanager
def _interrupt_writes():
    """Every file write through tifffile / numpy / safetensors / PNG writes some bytes, then Ctrl-C."""
    import tifffile

    import napari_hrdv2.core.features.encoding as encoding_module

    saved = []

    def patch(owner: Any, name: str, replacement: Any) -> None:
        if hasattr(owner, name):
            saved.append((owner, name, getattr(owner, name)))
            setattr(owner, name, replacement)

    def half_then_interrupt(path_arg_index: int = 0) -> Callable[..., Any]:
        def write(*args: Any, **kwargs: Any) -> Any:
            target = args[path_arg_index] if len(args) > path_arg_index else kwargs.get("file")
            if isinstance(target, (str, os.PathLike)):
                Path(target).write_bytes(b"II*\0" + b"\0" * 64)
            raise KeyboardInterrupt

        return write

    patch(tifffile, "imwrite", half_then_interrupt())
    import safetensors.numpy

    patch(safetensors.numpy, "save_file", half_then_interrupt(1))
    real_save = safetensors.numpy.save

    def save_interrupt(*args: Any, **kwargs: Any) -> Any:
        real_save(*args, **kwargs)
        raise KeyboardInterrupt

    patch(safetensors.numpy, "save", save_interrupt)
    calls = {"n": 0}
    real_features = encoding_module.Encoding.features

    def features(self: Any, *args: Any, **kwargs: Any) -> Any:  # features are written while planes are encoded
        calls["n"] += 1
        if calls["n"] >= 2:
            raise KeyboardInterrupt
        return real_features(self, *args, **kwargs)

    patch(encoding_module.Encoding, "features", features)
    try:
        yield
    finally:
        for owner, name, original in reversed(saved):
            setattr(owner, name, original)


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="run only the cases whose name contains this text")
    parser.add_argument("--verbose", "-v", action="store_true", help="print every case and its outcome")
    parser.add_argument("--json", type=Path, help="write the outcomes as JSON here")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGALRM, _alarm)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
        cases = Cases(Path(tmp))
        results: dict[str, Outcome] = {}
        for name, thunk in cases.cases.items():
            if args.only and args.only not in name:
                continue
            try:
                results[name] = thunk()
            except Exception as err:  # noqa: BLE001  (a bug of the harness, not of the package)
                results[name] = Outcome("skipped", f"harness error {type(err).__name__}: {err}")
                if args.verbose:
                    traceback.print_exc()
            if args.verbose:
                outcome = results[name]
                print(f"{outcome.category:9s} {name}: {textwrap.shorten(outcome.detail, 160)}", flush=True)
    counts = Counter(outcome.category for outcome in results.values())
    tried = sum(counts[c] for c in CATEGORIES if c != "skipped")
    print(f"\nload average {os.getloadavg()[0]:.2f}; {time.perf_counter() - start:.0f} s")
    print(f"tried {tried}: " + ", ".join(f"{c} {counts[c]}" for c in CATEGORIES))
    bad = [(n, o) for n, o in results.items() if o.category not in ("clear", "defined", "skipped")]
    if bad:
        print("\nnot clear / not defined:")
        for name, outcome in bad:
            print(f"  {outcome.category:9s} {name}: {textwrap.shorten(outcome.detail, 150)}")
    if args.json:
        args.json.write_text(json.dumps({n: [o.category, o.detail] for n, o in results.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
