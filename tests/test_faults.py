"""Fault injection: kills, Ctrl-C, full disks and read-only folders while the CLI writes, and the re-run after.

The invariant checked everywhere: a file under an output's final name is complete, a previous good
result survives a failed replacement, and a re-run does not skip what an interrupted run left out.
Kills are real signals sent by the writing process to itself at the worst moment (in the middle of
writing a file), so they are deterministic; full disks use a tiny tmpfs where this machine allows
mounting one, and a mocked ``ENOSPC`` everywhere.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tifffile

from conftest import two_texture_image
from napari_hrdv2.cli import main
from napari_hrdv2.core.files import atomic

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def opts(tiny_backbone) -> list[str]:
    return ["--backbone", tiny_backbone, "--device", "cpu", "--shifts", "neumann", "--distances", "3",
            "--tile-size", "none", "-q"]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory, opts) -> dict[str, Path]:
    """An image, a 3-plane stack, stroke labels and a model trained on them."""
    folder = tmp_path_factory.mktemp("faults")
    image, truth = two_texture_image(56)
    strokes = np.zeros_like(truth)
    strokes[5:-5, 14:16], strokes[5:-5, 42:44] = 1, 2
    tifffile.imwrite(folder / "img.tif", image)
    tifffile.imwrite(folder / "stack.tif", np.stack([image, image[:, ::-1], image]), photometric="minisblack")
    tifffile.imwrite(folder / "strokes.tif", strokes)
    model = folder / "model.hrdv2"
    assert main(["train", str(folder / "img.tif"), "--labels", str(folder / "strokes.tif"), "-o", str(model),
                 *opts]) == 0  # fmt: skip
    return {"image": folder / "img.tif", "stack": folder / "stack.tif", "strokes": folder / "strokes.tif",
            "model": model}  # fmt: skip


def part_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.endswith(atomic.PART_SUFFIX)]


def digest(path: Path) -> bytes | None:
    return path.read_bytes() if path.exists() else None


# A process that kills itself in the middle of writing a file: the first chunk is written, then SIGKILL.
_KILL_WHILE_WRITING = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    import tifffile
    import napari_hrdv2.core.files.atomic as atomic

    how = signal.SIGKILL if os.environ["FAULT_SIGNAL"] == "KILL" else signal.SIGINT
    # Ctrl-C must raise KeyboardInterrupt here even when the test runner was started with SIGINT ignored
    # (a background job of a non-interactive shell): Python then leaves it ignored in its children.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    real_imwrite, real_write_bytes = tifffile.imwrite, atomic.write_bytes
    real_stream_write = atomic.ArrayStreamWriter.write

    def imwrite(path, data=None, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"II*\\0" + bytes(64))  # a truncated TIFF under the temporary name
        os.kill(os.getpid(), how)

    def write_bytes(path, data, **kwargs):
        def half(temporary):
            with open(temporary, "xb") as handle:
                handle.write(data[: len(data) // 2])
            os.kill(os.getpid(), how)
        with atomic.atomic_path(path, overwrite=kwargs.get("overwrite", False)) as temporary:
            half(temporary)

    def stream_write(self, block):
        real_stream_write(self, block)
        os.kill(os.getpid(), how)

    tifffile.imwrite, atomic.write_bytes = imwrite, write_bytes
    atomic.ArrayStreamWriter.write = stream_write
    from napari_hrdv2.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def run_faulty(args: list, signal_name: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, FAULT_SIGNAL=signal_name)
    return subprocess.run([sys.executable, "-c", _KILL_WHILE_WRITING, *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=300)  # fmt: skip


def is_complete_labels(path: Path, shape: tuple[int, ...]) -> bool:
    labels = tifffile.imread(path)
    return labels.shape == shape and set(np.unique(labels).tolist()) <= {1, 2}


# ---------------------------------------------------------------------------------------------- kills
def test_segment_killed_while_writing_leaves_nothing_a_rerun_skips(tmp_path, data, capsys):
    out = tmp_path / "out"
    done = run_faulty(["segment", data["stack"], "--model", data["model"], "-o", out, "-q"], "KILL")
    assert done.returncode == -signal.SIGKILL
    assert not (out / "stack_labels.tif").exists()  # only a hidden temporary file can be left behind
    assert all(p.name.startswith(".") for p in out.iterdir())
    assert part_files(out)  # the killed process could not delete its temporary file
    assert main(["segment", str(data["stack"]), "--model", str(data["model"]), "-o", str(out)]) == 0
    assert "Wrote 1" in capsys.readouterr().out  # processed, not skipped as "existing"
    assert not part_files(out)  # the re-run removed the dead process's temporary
    assert is_complete_labels(out / "stack_labels.tif", (3, 56, 56))


def test_features_overwrite_killed_keeps_the_previous_result(tmp_path, data, opts):
    target = tmp_path / "f.npy"
    assert main(["features", str(data["image"]), "-o", str(target), *opts]) == 0
    before = digest(target)
    done = run_faulty(["features", data["stack"], "-o", target, "--overwrite", *opts], "KILL")
    assert done.returncode == -signal.SIGKILL
    assert digest(target) == before  # the good previous result is intact
    assert np.load(target).shape[1:] == (56, 56)


def test_train_overwrite_interrupted_keeps_the_previous_model(tmp_path, data, opts):
    """Ctrl-C (a real SIGINT) in the middle of writing the model: one line, exit 130, old model intact."""
    target = tmp_path / "m.hrdv2"
    target.write_bytes(data["model"].read_bytes())
    args = ["train", data["image"], "--labels", data["strokes"], "-o", target, "--overwrite", *opts]
    done = run_faulty(args, "INT")
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip().splitlines() == ["napari-hrdv2: error: interrupted."]
    assert target.read_bytes() == data["model"].read_bytes()
    assert part_files(tmp_path) == []  # the interrupted write cleaned up after itself


# ---------------------------------------------------------------------------------------------- interrupts in process
@pytest.mark.parametrize("previous", [False, True], ids=["first run", "overwrite"])
def test_segment_interrupted_in_process(tmp_path, data, capsys, monkeypatch, previous):
    out = tmp_path / "out"
    args = ["segment", str(data["image"]), "--model", str(data["model"]), "-o", str(out), "--uncertainty"]
    if previous:
        assert main(args) == 0
        args.append("--overwrite")
    before = {name: digest(out / name) for name in ("img_labels.tif", "img_uncertainty.tif")}

    def interrupted(path, *_args, **_kwargs):
        Path(path).write_bytes(b"II*\0")
        raise KeyboardInterrupt

    monkeypatch.setattr(tifffile, "imwrite", interrupted)
    assert main(args) == 130
    monkeypatch.undo()
    assert capsys.readouterr().err.strip().splitlines() == ["napari-hrdv2: error: interrupted."]
    assert {name: digest(out / name) for name in before} == before
    assert part_files(out) == []
    assert main(args[:-1] if previous else args) == 0  # the re-run completes what is missing
    assert is_complete_labels(out / "img_labels.tif", (56, 56))


# ---------------------------------------------------------------------------------------------- full disk
def no_space(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_segment_full_disk_mocked(tmp_path, data, capsys, monkeypatch):
    out = tmp_path / "out"
    args = ["segment", str(data["image"]), "--model", str(data["model"]), "-o", str(out)]
    assert main(args) == 0
    before = digest(out / "img_labels.tif")
    monkeypatch.setattr(tifffile, "imwrite", no_space)
    assert main([*args, "--overwrite"]) == 2  # a full disk stops the batch (every other input would fail too)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left" in err[0] and "unchanged" in err[0]
    assert digest(out / "img_labels.tif") == before
    assert part_files(out) == []


def test_features_full_disk_mocked(tmp_path, data, capsys, monkeypatch, opts):
    target = tmp_path / "f.npy"

    class FullHandle:
        closed = False

        def write(self, _data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            self.closed = True

    real_init = atomic.ArrayStreamWriter.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self._handle.close()
        self._handle = FullHandle()

    monkeypatch.setattr(atomic.ArrayStreamWriter, "__init__", init)
    assert main(["features", str(data["stack"]), "-o", str(target), *opts]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left" in err[0]
    assert not target.exists() and part_files(tmp_path) == []


def _mount_tmpfs(size: str, read_only: bool = False) -> Path | None:
    folder = Path(tempfile.mkdtemp(prefix="hrdv2-tmpfs-"))
    options = f"size={size}" + (",ro" if read_only else "")
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    except OSError:
        done = None
    if done is None or done.returncode != 0:
        folder.rmdir()
        return None
    return folder


@pytest.fixture
def small_disk():
    """A 300 kB tmpfs with about 20 kB left (skipped where mounting is not allowed)."""
    folder = _mount_tmpfs("300k")
    if folder is None:
        pytest.skip("cannot mount a tmpfs here (needs root); the mocked ENOSPC tests cover this")
    with open(folder / "filler", "wb") as handle, contextlib.suppress(OSError):
        handle.write(bytes(280 * 1024))
    yield folder
    subprocess.run(["umount", str(folder)], capture_output=True)
    folder.rmdir()


def test_features_on_a_really_full_disk_is_an_error_not_sigbus(small_disk, data, capsys, opts):
    """Before: a memory-mapped .npy on a full disk killed the process with SIGBUS."""
    target = small_disk / "f.npy"
    assert main(["features", str(data["stack"]), "-o", str(target), *opts]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ("No space left" in err[0] or "Not enough room" in err[0])
    assert not target.exists() and part_files(small_disk) == []


def test_segment_on_a_really_full_disk(small_disk, data, capsys):
    big = small_disk.parent / f"{small_disk.name}-input.tif"
    rng = np.random.default_rng(0)
    tifffile.imwrite(big, (rng.random((300, 300)) * 255).astype(np.uint8))
    try:
        code = main(["segment", str(big), "--model", str(data["model"]), "-o", str(small_disk), "--uncertainty"])
    finally:
        big.unlink()
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and ("No space left" in err[0] or "Not enough room" in err[0])
    for name in (f"{big.stem}_labels.tif", f"{big.stem}_uncertainty.tif"):
        path = small_disk / name
        assert not path.exists() or tifffile.imread(path).shape == (300, 300)  # complete, or absent
    assert part_files(small_disk) == []


# ---------------------------------------------------------------------------------------------- read-only
@pytest.fixture
def read_only_folder(monkeypatch, tmp_path):
    """A read-only folder: a read-only tmpfs where possible, else file creation there fails with EROFS."""
    folder = _mount_tmpfs("1m", read_only=True)
    if folder is not None:
        yield folder
        subprocess.run(["umount", str(folder)], capture_output=True)
        folder.rmdir()
        return
    folder = tmp_path / "read-only"
    folder.mkdir()
    real_open = open

    def read_only_open(path, mode="r", *args, **kwargs):
        if any(m in mode for m in "wxa+") and str(path).startswith(str(folder)):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", read_only_open)
    yield folder


@pytest.mark.parametrize("command", ["segment", "features", "train"])
def test_read_only_output_folder_is_refused_before_any_work(read_only_folder, data, capsys, opts, command, monkeypatch):
    import napari_hrdv2.core.features.encoding as encoding

    def no_encoding(*_args, **_kwargs):
        raise AssertionError("encoded although the output folder is read-only")

    monkeypatch.setattr(encoding.Featurizer, "iter_encode", no_encoding)
    args = {
        "segment": ["segment", data["image"], "--model", data["model"], "-o", read_only_folder / "out"],
        "features": ["features", data["image"], "-o", read_only_folder / "f.npy", *opts],
        "train": ["train", data["image"], "--labels", data["strokes"], "-o", read_only_folder / "m.hrdv2", *opts],
    }[command]
    assert main([str(a) for a in args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ("read-only" in err[0].lower() or "cannot" in err[0].lower()), err


# ---------------------------------------------------------------------------------------------- room
@pytest.fixture
def free_bytes(monkeypatch):
    """Pretend the disk has ``free_bytes["n"]`` bytes free (shutil.disk_usage as the pre-flight sees it)."""
    import shutil

    free = {"n": 0}
    real = shutil.disk_usage
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda path: real(path)._replace(free=free["n"]))
    return free


def test_segment_refuses_clearly_insufficient_room_before_any_work(data, tmp_path, capsys, monkeypatch, free_bytes):
    import napari_hrdv2.core.features.encoding as encoding
    from napari_hrdv2.core.scale.plan import estimate_output_bytes

    out = tmp_path / "out"
    # Known answer: 3 planes of 56x56 = 9408 pixels; uint8 labels at 1/256, float32 uncertainty at 1/2.
    assert estimate_output_bytes([data["stack"]], out, ".tif", max_label=2, uncertainty=True) == {out: 36 + 18816}
    assert estimate_output_bytes([data["stack"]], out, ".tif", max_label=300) == {out: 73}  # uint16 labels
    real_encode = encoding.Featurizer.iter_encode

    def no_encoding(*_args, **_kwargs):
        raise AssertionError("encoded although the outputs cannot fit")

    monkeypatch.setattr(encoding.Featurizer, "iter_encode", no_encoding)
    free_bytes["n"] = 10_000
    code = main(["segment", str(data["stack"]), "--model", str(data["model"]), "-o", str(out), "--uncertainty"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "Not enough room" in err[0] and "out" in err[0], err
    assert list(out.iterdir()) == []
    # Labels alone fit in 10 kB: the run goes ahead and writes them.
    monkeypatch.setattr(encoding.Featurizer, "iter_encode", real_encode)
    assert main(["segment", str(data["stack"]), "--model", str(data["model"]), "-o", str(out), "-q"]) == 0
    assert (out / "stack_labels.tif").exists()
    # Outputs that exist and are kept cost nothing: the uncertainty map alone is counted.
    assert estimate_output_bytes([data["stack"]], out, ".tif", max_label=2, uncertainty=True) == {out: 18816}


class _NoCluster:
    """A dask client that must not be used: any task submitted means work started although the outputs cannot fit."""

    def __getattr__(self, name: str):
        raise AssertionError(f"client.{name} used although the outputs cannot fit")

    def close(self) -> None:
        pass


def test_cluster_run_checks_the_room_before_submitting(data, tmp_path, capsys, monkeypatch, free_bytes):
    """--scheduler: the same estimate as the single-process run refuses, in one line, before any task or encoding."""
    import napari_hrdv2 as hr
    from napari_hrdv2.core.errors import OutputError
    from napari_hrdv2.core.scale import distributed
    from napari_hrdv2.core.scale.plan import estimate_output_bytes

    out = tmp_path / "out"
    model = hr.LinearSegmenter.load(data["model"])
    free_bytes["n"] = 10_000  # labels (36 bytes) fit, the uncertainty map (18816 bytes) does not
    with pytest.raises(OutputError, match=r"Not enough room in .*out.* about 18\.[0-9] KiB"):
        distributed.segment_files_distributed(
            [data["stack"]], out, model, model.feature_config, client=_NoCluster(), uncertainty=True,
            model_path=data["model"],
        )  # fmt: skip
    assert list(out.iterdir()) == []
    monkeypatch.setattr(distributed, "make_client", lambda spec: (_NoCluster(), None))
    args = ["segment", str(data["stack"]), "--model", str(data["model"]), "-o", str(out), "--scheduler", "local"]
    assert main([*args, "--uncertainty"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Not enough room" in err[0], err
    # The estimate reads only the chosen channels' planes from the header: a 5-channel (C, Y, X) OME-TIFF is one plane.
    five = tmp_path / "five.ome.tif"
    tifffile.imwrite(five, np.zeros((5, 56, 56), np.uint8), metadata={"axes": "CYX"})
    assert estimate_output_bytes([five], out, ".tif", uncertainty=True, channels=1) == {out: 12 + 6272}


def test_features_counts_the_staged_copy_of_a_tif(data, tmp_path, capsys, opts, free_bytes):
    raw = 128 * 56 * 56 * 4  # tiny backbone: 128 float32 features per pixel of a 56x56 image
    free_bytes["n"] = int(raw * 1.5)
    assert main(["features", str(data["image"]), "-o", str(tmp_path / "f.tif"), *opts]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Not enough room" in err[0] and not (tmp_path / "f.tif").exists()
    assert main(["features", str(data["image"]), "-o", str(tmp_path / "f.npy"), *opts]) == 0  # fits once
    assert np.load(tmp_path / "f.npy").shape == (128, 56, 56)
