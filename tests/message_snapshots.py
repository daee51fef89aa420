"""Snapshots of what users read and get: every error, warning, progress update and result a headless test provokes.

While each headless test's body runs, this pytest plugin records

- every :class:`~napari_hrdv2.core.errors.HRDv2Error` constructed (its class and text: what the CLI, the API
  and the docks show),
- every warning our code issues (its category and text),
- every :class:`~napari_hrdv2.core.progress.Progress` update (``done/total`` and its message),
- a digest of every result of the public API's array methods (features, projections, attention, samples,
  logits, probabilities, labels, uncertainty, PCA views, a fit's coefficients; none in a test that makes an MLP
  head, whose non-convex fit turns float noise into other weights): shape, dtype, value counts of
  integer arrays and statistics (mean, spread, range, and means weighted by row and by column, so that a
  shifted or flipped map differs too),

and compares them with ``tests/message_snapshots/<test file>.json``: messages as a multiset (a repeated line
is stored once with its count), results as a set that must be among the module's recorded results (a result
another test computed first may come from a cache). Numbers are compared with a relative tolerance of 2e-4,
so float noise passes and a changed count, size or statistic does not. A changed word, a lost file name, a
wrong progress count or a changed result then fails the test that provoked it, even when the test itself
only asserts part of it. After a deliberate change, record again and review the JSON diff like any other
change::

    python -m pytest --update-messages tests/core/files      # rewrite the entries of the tests that ran

Machine-dependent parts are normalised before comparison: temporary and home folders, the repository
root, object addresses, checksums and the free disk space or memory a message quotes. Messages can also quote other
packages (numpy's, tifffile's, torch's errors) and results depend on the precision ``dtype="auto"`` picks on a CPU, so the
snapshots are compared only where the environment they were recorded in is the one running
(``environment.json``: the Python minor version, the versions of the packages whose text we quote, and the
CPU's native bfloat16 flags); elsewhere the header of the run says they were not compared. Tests whose messages depend
on timing carry ``@pytest.mark.messages_vary``; GUI tests (``gui`` marker, ``tests/gui/``) are not recorded.
``--reverse-order`` runs the tests backwards, to check that no test's records depend on an earlier test.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import re
import sys
import tempfile
import threading
import warnings
from collections import Counter
from importlib import metadata
from pathlib import Path

import pytest

SNAPSHOT_FOLDER = Path(__file__).resolve().parent / "message_snapshots"
ENVIRONMENT_FILE = SNAPSHOT_FOLDER / "environment.json"
#: Packages whose own messages ours can quote (their versions must match for the snapshots to compare).
QUOTED_PACKAGES = (
    "numpy",
    "torch",
    "transformers",
    "safetensors",
    "tifffile",
    "imageio",
    "pillow",
    "zarr",
    "scipy",
    "scikit-image",
    "dask",
    "distributed",
    "onnxruntime",
    "openvino",
)


class _Recorder:
    """The current test's messages (None between tests), shared by every thread of the process."""

    def __init__(self) -> None:
        self.records: list[str] | None = None
        self.lock = threading.Lock()
        self.replacements: list[tuple[str, str]] = []
        #: Set when the test makes an MLP head: its fit is a non-convex optimisation that turns last-bit float
        #: differences (another thread count, another test before it) into visibly different weights, so from
        #: then on the test's results are not recorded (its messages still are).
        self.without_results = False

    def add(self, kind: str, text: str) -> None:
        if self.records is None or (kind.startswith(RESULT) and self.without_results):
            return
        with self.lock:
            if self.records is not None:
                self.records.append(f"{kind}: {self.normalise(text)}")

    def normalise(self, text: str) -> str:
        for path, name in self.replacements:
            text = text.replace(path, name)
        text = re.sub(r"<tmp>/[^/\s'\"]+", "<tmp>/<test>", text)
        text = re.sub(r"/tmp/tmp[\w-]+", "<tmp>/<tempfile>", text)
        text = re.sub(r"<tempdir>/[^/\s'\"]+", "<tempdir>/<folder>", text)
        text = re.sub(r"0x[0-9a-fA-F]{6,}", "0x?", text)
        text = re.sub(r"\b[0-9a-f]{12,64}\b", "<hash>", text)  # checksums of files made from random weights
        # free disk space and memory change from run to run (sizes that are computed stay as they are)
        return re.sub(r"\d[\d.,]*\s?(?:[KMGTP]i?B|bytes)(?= (?:is |are )?(?:free|available)\b)", "<free>", text)


RECORDER = _Recorder()


def _progress_text(done: float, total: float, message: str) -> str:
    return f"{done:.6g}/{total:.6g} {message}"


def _install_probes() -> None:
    """Wrap the three places user-facing text is made (once per process)."""
    from napari_hrdv2.core.errors import HRDv2Error
    from napari_hrdv2.core.progress import Progress

    if getattr(HRDv2Error, "_message_probe", False):
        return

    def recording_init(self, *args, **kwargs):
        super(HRDv2Error, self).__init__(*args, **kwargs)
        RECORDER.add(f"error {type(self).__name__}", str(self))

    HRDv2Error.__init__ = recording_init
    HRDv2Error._message_probe = True

    progress_init = Progress.__init__

    @functools.wraps(progress_init)
    def recording_progress_init(self, *args, **kwargs):
        progress_init(self, *args, **kwargs)
        RECORDER.add("progress", _progress_text(self.done, self.total, self.message))

    Progress.__init__ = recording_progress_init

    warn = warnings.warn

    @functools.wraps(warn)
    def recording_warn(message, category=None, stacklevel=1, source=None):
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if caller.startswith("napari_hrdv2"):
            kind = type(message).__name__ if isinstance(message, Warning) else (category or UserWarning).__name__
            RECORDER.add(f"warning {kind}", str(message))
        return warn(message, category, stacklevel + 1, source)

    warnings.warn = recording_warn

    from napari_hrdv2.core.analysis.pca import PCABasis
    from napari_hrdv2.core.features.channels import ChannelEncoding
    from napari_hrdv2.core.features.encoding import Encoding
    from napari_hrdv2.core.features.volume import VolumeEncoder
    from napari_hrdv2.core.segmentation.mlp import MLPSegmenter
    from napari_hrdv2.core.segmentation.segmenter import LinearSegmenter

    for cls, names in (
        (Encoding, ("features", "project", "attention", "sample")),
        (ChannelEncoding, ("features", "project", "attention", "sample")),
        (VolumeEncoder, ("features",)),
        (LinearSegmenter, ("predict", "predict_proba", "decision_function", "uncertainty")),
        (MLPSegmenter, ("decision_function", "hidden_activations")),
        (PCABasis, ("project", "to_grey", "foreground_mask", "scale")),
    ):
        for name in names:
            setattr(cls, name, _recording_result(cls, name))
    fit = LinearSegmenter.fit

    @functools.wraps(fit)
    def recording_fit(self, *args, **kwargs):
        fitted = fit(self, *args, **kwargs)
        RECORDER.add(f"result {type(self).__name__}.fit", _digest(fitted.head_arrays()) or "?")
        return fitted

    LinearSegmenter.fit = recording_fit
    mlp_init = MLPSegmenter.__init__

    @functools.wraps(mlp_init)
    def init_without_results(self, *args, **kwargs):
        RECORDER.without_results = True
        mlp_init(self, *args, **kwargs)

    MLPSegmenter.__init__ = init_without_results


def _recording_result(cls: type, name: str):
    method = vars(cls)[name]

    @functools.wraps(method)
    def recording(self, *args, **kwargs):
        result = method(self, *args, **kwargs)
        digest = _digest(result)
        if digest is not None:
            RECORDER.add(f"result {cls.__name__}.{name}", digest)
        return result

    return recording


def _digest(value) -> str | None:
    """Shape, dtype and a few statistics of an array (or of each of a tuple of arrays): what a result says.

    Statistics, not bytes: they are compared with a relative tolerance, so last-bit differences of float
    arithmetic (another thread count) pass, and a label flipped at a near-tie moves a count by one.
    ``row``/``col`` weigh the values by their position, so a shifted or flipped map differs too.
    """
    import numpy as np

    if isinstance(value, (tuple, list)):
        parts = [_digest(part) for part in value]
        return " | ".join(part or "-" for part in parts) if any(parts) else None
    if hasattr(value, "detach"):
        value = value.detach().cpu().float().numpy()
    if not isinstance(value, np.ndarray):
        return None
    text = f"{value.shape} {value.dtype}"
    if value.size == 0:
        return text
    numbers = value.astype(np.float64)
    finite = np.isfinite(numbers)
    if not finite.all():
        text += f" non-finite {int(np.count_nonzero(~finite))}"
        numbers = np.where(finite, numbers, 0.0)
    if value.dtype.kind in "biu":
        values, counts = np.unique(value, return_counts=True)
        text += " counts " + " ".join(f"{v}:{c}" for v, c in zip(values[:12].tolist(), counts[:12].tolist()))
    stats = {"mean": numbers.mean(), "std": numbers.std(), "min": numbers.min(), "max": numbers.max()}
    if numbers.ndim >= 2:
        rows = np.linspace(0.0, 1.0, numbers.shape[-2])[:, None]
        cols = np.linspace(0.0, 1.0, numbers.shape[-1])[None, :]
        stats |= {"row": (numbers * rows).mean(), "col": (numbers * cols).mean()}
    return text + " " + " ".join(f"{key} {stat:.6g}" for key, stat in stats.items())


def _bfloat16_flags() -> str:
    """The CPU's native bfloat16 flags and the override (no computation: torch must stay idle before mutmut forks)."""
    import torch

    capabilities = torch.cpu.get_capabilities()
    flags = sorted(name for name, present in capabilities.items() if present is True and "bf16" in name)
    forced = os.environ.get("NAPARI_HRDV2_CPU_BFLOAT16", "")
    return f"{' '.join(flags) or 'none'}; NAPARI_HRDV2_CPU_BFLOAT16={forced!r}"


def environment() -> dict[str, str]:
    """What the recorded text depends on besides our code."""
    found = {}
    for package in QUOTED_PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "absent"
    return {"python": ".".join(platform.python_version_tuple()[:2]), **found, "CPU bfloat16": _bfloat16_flags()}


RESULT = "result "
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")
STATISTIC = re.compile(r"\b(mean|std|min|max|row|col) (-?\d+(?:\.\d+)?(?:e[-+]?\d+)?)")
#: Relative tolerance of the numbers in a record: float noise (another thread count, a near-tie) passes, a
#: changed count, size or statistic does not. Statistics of a result are compared on the result's range.
RELATIVE_TOLERANCE = 2e-4


def _split_numbers(line: str) -> tuple[str, list[float]]:
    return NUMBER.sub("#", line), [float(number) for number in NUMBER.findall(line)]


def _close(got: str, want: str) -> bool:
    (shape_got, numbers_got), (shape_want, numbers_want) = _split_numbers(got), _split_numbers(want)
    if shape_got != shape_want or len(numbers_got) != len(numbers_want):
        return False
    stats = STATISTIC.findall(want)
    result_range = max([abs(float(value)) for key, value in stats if key in ("std", "min", "max")] + [0.0])
    first_statistic = len(numbers_want) - len(stats)
    for index, (a, b) in enumerate(zip(numbers_got, numbers_want)):
        scale = max(abs(a), abs(b), result_range if index >= first_statistic else 0.0)
        if abs(a - b) > RELATIVE_TOLERANCE * scale:
            return False
    return True


def same_within_tolerance(got: list[str], want: list[str]) -> bool:
    """Whether two record lists differ only in numbers, each within :data:`RELATIVE_TOLERANCE`."""
    if len(got) != len(want):
        return False
    return all(_close(a, b) for a, b in zip(sorted(got, key=_split_numbers), sorted(want, key=_split_numbers)))


def _snapshot_file(item: pytest.Item) -> Path:
    relative = Path(str(item.path)).resolve().relative_to(Path(__file__).resolve().parent)
    return SNAPSHOT_FOLDER / (relative.with_suffix("").as_posix().replace("/", "__") + ".json")


def _read(path: Path) -> dict[str, list[str]]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


class MessageSnapshots:
    """The plugin: records each headless test's messages and compares (or, updating, stores) them."""

    def __init__(self, config: pytest.Config) -> None:
        self.updating = bool(config.getoption("update_messages"))
        self.config = config
        self.loaded: dict[Path, dict[str, list[str]]] = {}
        self.recorded: dict[Path, dict[str, list[str]]] = {}
        self.ran: dict[Path, set[str]] = {}
        self.mismatch = ""

    def check_environment(self) -> None:
        """Compare only where the snapshots were recorded in this environment (else say why not)."""
        if self.updating:
            return
        recorded_in = json.loads(ENVIRONMENT_FILE.read_text(encoding="utf-8")) if ENVIRONMENT_FILE.is_file() else {}
        running = environment()
        differs = sorted(key for key in running.keys() | recorded_in.keys() if running.get(key) != recorded_in.get(key))
        self.mismatch = ", ".join(f"{key} {recorded_in.get(key)} -> {running.get(key)}" for key in differs)

    def pytest_sessionstart(self) -> None:
        import napari_hrdv2

        repository = Path(napari_hrdv2.__file__).resolve().parents[2]
        base = self.config._tmp_path_factory.getbasetemp()  # the folder of every tmp_path
        places = [
            (str(base.resolve()), "<tmp>"),
            (str(base), "<tmp>"),
            (str(repository), "<repo>"),
            (str(Path(sys.prefix)), "<venv>"),
            (str(Path.home()), "<home>"),
            (tempfile.gettempdir(), "<tempdir>"),
        ]
        RECORDER.replacements = sorted(set(places), key=lambda pair: -len(pair[0]))

    def header(self) -> str:
        if self.updating:
            return "message snapshots: recording (--update-messages)"
        if self.mismatch:
            return f"message snapshots: not compared (recorded in another environment: {self.mismatch})"
        return "message snapshots: compared"

    def recorded_for(self, item: pytest.Item) -> bool:
        in_gui_folder = Path(str(item.path)).resolve().parent.name == "gui"
        return not in_gui_folder and item.get_closest_marker("gui") is None and item.get_closest_marker("messages_vary") is None

    def expected(self, path: Path) -> dict[str, list[str]]:
        if path not in self.loaded:
            self.loaded[path] = _read(path)
        return self.loaded[path]

    def check(self, item: pytest.Item, records: list[str]) -> None:
        path = _snapshot_file(item)
        messages = Counter(line for line in records if not line.startswith(RESULT))
        got = [line if count == 1 else f"{line} (x{count})" for line, count in sorted(messages.items())]
        got += sorted({line for line in records if line.startswith(RESULT)})
        if self.updating:
            self.ran.setdefault(path, set()).add(item.name)
            if got:
                self.recorded.setdefault(path, {})[item.name] = got
            return
        if self.mismatch:
            return
        entries = self.expected(path)
        want = entries.get(item.name, [])
        got_messages = [line for line in got if not line.startswith(RESULT)]
        want_messages = [line for line in want if not line.startswith(RESULT)]
        # Results are a set: a result another test of the module computed first may come from a cache (so a test
        # run alone may compute it again), but every result must be one recorded, within the float tolerance.
        known = {line for lines in entries.values() for line in lines if line.startswith(RESULT)}
        unknown = [line for line in got if line.startswith(RESULT) and line not in known]
        unknown = [line for line in unknown if not any(_close(line, other) for other in known)]
        if unknown or (got_messages != want_messages and not same_within_tolerance(got_messages, want_messages)):
            missing = [line for line in want_messages if line not in got_messages]
            extra = [line for line in got_messages if line not in want_messages] + unknown
            lines = [f"The messages or results of {item.nodeid} differ from {path.relative_to(SNAPSHOT_FOLDER.parent)}:"]
            lines += [f"  - {line}" for line in missing] + [f"  + {line}" for line in extra]
            lines.append("A deliberate change: record again with `python -m pytest --update-messages ...` and review the diff.")
            raise AssertionError("\n".join(lines))

    def write(self) -> None:
        if not self.updating or not self.ran:
            return
        SNAPSHOT_FOLDER.mkdir(exist_ok=True)
        for path, names in self.ran.items():
            entries = {name: lines for name, lines in _read(path).items() if name not in names}
            entries.update(self.recorded.get(path, {}))
            if entries:
                path.write_text(json.dumps(dict(sorted(entries.items())), indent=1, ensure_ascii=False) + "\n", "utf-8")
            elif path.is_file():
                path.unlink()
        ENVIRONMENT_FILE.write_text(json.dumps(environment(), indent=1) + "\n", encoding="utf-8")

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item):
        if not self.recorded_for(item):
            return (yield)
        RECORDER.records, RECORDER.without_results = [], False
        try:
            result = yield
        finally:
            records, RECORDER.records = RECORDER.records, None
        self.check(item, records)
        return result

    def pytest_report_header(self) -> str:
        return self.header()

    def pytest_sessionfinish(self) -> None:
        self.write()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-messages",
        action="store_true",
        help="record the messages of the tests that run into tests/message_snapshots/ instead of comparing them",
    )
    parser.addoption("--reverse-order", action="store_true", help="run the tests in reverse order")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``--reverse-order``: run the tests backwards, to check that no test's messages depend on an earlier test
    (mutation testing runs a few tests at a time, so a warning given once per process must not move between tests)."""
    if config.getoption("reverse_order"):
        items.reverse()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "messages_vary: the test's messages depend on timing (not snapshotted)")
    if os.environ.get("NAPARI_HRDV2_MESSAGE_SNAPSHOTS", "1") == "0":
        return
    plugin = MessageSnapshots(config)
    _install_probes()
    plugin.check_environment()
    config.pluginmanager.register(plugin, "napari-hrdv2-message-snapshots")
