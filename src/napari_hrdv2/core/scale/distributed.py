"""Batch segmentation on a dask.distributed cluster (optional extra ``napari-hrdv2[distributed]``).

``segment_files(..., client=Client(...))`` and ``napari-hrdv2 segment ... --scheduler local[:N] | ADDRESS``
run one task per input image (and, for images segmented tile by tile, one task per band of output
chunk rows plus a finishing task), on a laptop :class:`~distributed.LocalCluster`, on an HPC cluster
through dask-jobqueue, or on one worker per GPU.

- The model goes to the workers as a file path plus its sha256 (or, for a model that only exists in
  memory, as its file bytes, scattered once); each worker process keeps one copy of the model and one
  backbone (``load_backbone`` caches it) for all its tasks.
- A task runs exactly the single-process code (:func:`~.in_process.iter_segment_files` on one input, or a
  band of :class:`~.streaming.StreamJob`), so the outputs are identical to a run without a cluster.
- Outputs are written atomically under deterministic names, so a task that is retried after its worker
  died (``retries``) or a rerun after a crash only redoes what is missing; streamed images resume from
  their finished chunk rows.
- Workers that advertise a ``GPU`` resource (``dask worker --resources GPU=1``) get one task per GPU.

numpy/torch only (no napari, no Qt); ``distributed`` is imported only when a cluster is used.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import FeatureConfig
from ..errors import Cancelled, InputError, ModelFileError, WeightsNotFoundError
from ..files.checksums import file_sha256
from ..files.outputs import BatchReport, path_key
from ..progress import Progress
from .plan import BatchPlan, per_file_reason, plan_batch

if TYPE_CHECKING:  # pragma: no cover
    from ..features.encoding import Featurizer
    from ..segmentation.protocol import Segmenter
    from ..segmentation.segmenter import LinearSegmenter
    from .streaming import StreamedFile

#: Retries of a task whose worker died (every task is idempotent: outputs are atomic and named per input).
DEFAULT_RETRIES = 3
#: Output chunk rows per task for images segmented tile by tile on a cluster.
BAND_CHUNK_ROWS = 4
#: Pip requirement named in errors when dask.distributed is missing.
EXTRA_HINT = "pip install 'napari-hrdv2[distributed]'"


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError as err:  # pragma: no cover (installed in the test environment)
        raise InputError(f"Running on a cluster needs dask.distributed: {EXTRA_HINT}.") from err
    return distributed


# ---------------------------------------------------------------------------------------------- clients
#: Address schemes a dask scheduler can be reached with.
SCHEDULER_SCHEMES = ("tcp", "tls", "ws", "wss", "ucx", "inproc")


def parse_scheduler(spec: str) -> tuple[str, int | None]:
    """``"local"`` / ``"local:N"`` -> ("local", N or None); anything else is a scheduler address."""
    text = spec.strip()
    if text == "local" or text.startswith("local:"):
        count = text.partition(":")[2]
        if not count:
            return "local", None
        if not count.isdigit() or int(count) < 1:
            raise InputError(f"--scheduler {spec!r}: the number of local workers must be a positive integer.")
        return "local", int(count)
    if not text:
        raise InputError("--scheduler needs 'local', 'local:N' or a scheduler address such as tcp://host:8786.")
    scheme = text.partition("://")[0].lower() if "://" in text else None
    if scheme is not None and scheme not in SCHEDULER_SCHEMES:
        raise InputError(
            f"--scheduler {spec!r}: dask does not speak '{scheme}://'; give 'local', 'local:N' or an address "
            f"such as tcp://host:8786 (schemes: {', '.join(SCHEDULER_SCHEMES)})."
        )
    return text, None


def make_client(spec: str, *, threads_per_worker: int = 1) -> tuple[Any, Any]:
    """A dask ``Client`` for ``local[:N]`` (a new LocalCluster of N worker processes) or an address.

    Returns ``(client, cluster)``; ``cluster`` is None for an address. Close both when done.
    """
    distributed = _import_distributed()
    address, n_workers = parse_scheduler(spec)
    if address == "local":
        if n_workers is None:
            n_workers = max(1, (os.cpu_count() or 1) // 4)
        share = str(max(1, (os.cpu_count() or 1) // (n_workers * threads_per_worker)))
        cluster = distributed.LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
            processes=True,
            dashboard_address=":0",
            env={"NAPARI_HRDV2_TORCH_THREADS": share, "OMP_NUM_THREADS": share},
        )
        return distributed.Client(cluster), cluster
    try:
        return distributed.Client(address, timeout="30s"), None
    except (OSError, ValueError) as err:
        raise InputError(f"Could not connect to the dask scheduler at '{address}': {err}") from err


# ---------------------------------------------------------------------------------------------- worker side
_WORKER_LOCK = threading.Lock()
_WORKER_MODELS: dict[str, Any] = {}
_WORKER_FEATURIZERS: dict[tuple[str, str, str | None], Any] = {}


def _worker_threads() -> None:
    """Share the machine's cores among the worker processes of a LocalCluster (torch would take all of them)."""
    import torch

    share = os.environ.get("NAPARI_HRDV2_TORCH_THREADS")
    if share:
        torch.set_num_threads(max(1, int(share)))


def _model_on_worker(model_ref: tuple[str, Any]) -> LinearSegmenter:
    """The model of ``(sha256, path or file bytes)``, loaded once per worker process and checked against its hash."""
    from ..segmentation.heads import load_segmenter

    sha256, source = model_ref
    with _WORKER_LOCK:
        model = _WORKER_MODELS.get(sha256)
        if model is not None:
            return model
        if isinstance(source, bytes):
            if hashlib.sha256(source).hexdigest() != sha256:
                raise InputError("The model bytes received by this worker do not match their sha256.")
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / "model.hrdv2"
                path.write_bytes(source)
                model = load_segmenter(path)
        else:
            found = file_sha256(source)
            if found != sha256:
                raise InputError(
                    f"The model file '{source}' changed during the run (sha256 {found[:12]}..., expected "
                    f"{sha256[:12]}...); rerun with the new model."
                )
            model = load_segmenter(source)
        _worker_threads()
        _WORKER_MODELS[sha256] = model
        return model


def _featurizer_on_worker(model_sha256: str, config: dict[str, Any], backbone_path: str | None) -> Featurizer:
    """One Featurizer per (model, config) per worker process: the backbone is loaded once and reused."""
    import json

    from ..features.encoding import Featurizer

    key = (model_sha256, json.dumps(config, sort_keys=True), backbone_path)
    with _WORKER_LOCK:
        featurizer = _WORKER_FEATURIZERS.get(key)
        if featurizer is None:
            feature_config = FeatureConfig.from_dict(config)
            backbone = None
            if backbone_path:
                from ..backbone.loading import load_backbone
                from ..runtime.devices import resolve_device, resolve_dtype

                device = resolve_device(feature_config.device)
                backbone = load_backbone(
                    backbone_path,
                    device=device,
                    dtype=resolve_dtype(feature_config.dtype, device),
                    sha256=feature_config.weights_sha256,
                )
            featurizer = _WORKER_FEATURIZERS[key] = Featurizer(feature_config, backbone=backbone)
        return featurizer


def _report_dict(report: BatchReport) -> dict[str, list]:
    return {
        "written": [str(p) for p in report.written],
        "skipped": [str(p) for p in report.skipped],
        "failed": [(str(p), reason) for p, reason in report.failed],
        "extra": [str(p) for p in report.extra],
    }


def segment_file_task(
    path: str,
    outdir: str | None,
    model_ref: tuple[str, Any],
    config: dict[str, Any],
    suffix: str,
    overwrite: bool,
    uncertainty: bool,
    backbone_path: str | None = None,
    channels: list[int] | None = None,
) -> dict[str, list]:
    """One input on a worker: exactly :func:`~.in_process.iter_segment_files` on ``[path]``; returns its report.

    The report's ``notes`` are the warnings of the run (which channels were used, alpha dropped), for the
    client to tell the user.
    """
    import warnings

    from ..progress import run_steps
    from ..runtime.devices import inference_mode
    from .in_process import iter_segment_files

    segmenter = _model_on_worker(model_ref)
    featurizer = _featurizer_on_worker(model_ref[0], config, backbone_path)
    with inference_mode(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        report = run_steps(
            iter_segment_files(
                [path], outdir, segmenter, featurizer, suffix=suffix, overwrite=overwrite, uncertainty=uncertainty,
                channels=channels,
            )
        )  # fmt: skip
    result = _report_dict(report)
    result["notes"] = list(dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, UserWarning)))
    return result


def stream_band_task(
    source: str,
    finals: dict[str, str],
    model_ref: tuple[str, Any],
    config: dict[str, Any],
    plane: int,
    chunk_rows: tuple[int, int],
    chunk: int,
    backbone_path: str | None = None,
    channels: list[int] | None = None,
) -> int:
    """One band of output chunk rows of an image segmented tile by tile; returns the chunk rows written."""
    from ..progress import run_steps
    from ..runtime.devices import inference_mode
    from .streaming import StreamedFile

    segmenter = _model_on_worker(model_ref)
    featurizer = _featurizer_on_worker(model_ref[0], config, backbone_path)
    plan = StreamedFile(Path(source), {k: Path(v) for k, v in finals.items()}, _channels(channels))
    job = plan.job(segmenter, featurizer.config, chunk=chunk).open(create=False)
    with inference_mode():
        return run_steps(job.iter_band(segmenter, featurizer, plane, chunk_rows))


def finish_stream_task(
    source: str,
    finals: dict[str, str],
    model_ref: tuple[str, Any],
    config: dict[str, Any],
    chunk: int,
    channels: list[int] | None,
    *bands: int,
) -> dict[str, str]:
    """After all bands of a streamed image: rename its outputs into place (and write TIFF copies)."""
    segmenter = _model_on_worker(model_ref)
    from .streaming import StreamedFile

    plan = StreamedFile(Path(source), {k: Path(v) for k, v in finals.items()}, _channels(channels))
    job = plan.job(segmenter, FeatureConfig.from_dict(config), chunk=chunk)
    if not plan.intermediate_done(job):
        job.open(create=False).finish()
    return {kind: str(path) for kind, path in plan.convert().items()}


def _channels(channels: Sequence[int] | None) -> tuple[int, ...] | None:
    return None if channels is None else tuple(int(c) for c in channels)


# ---------------------------------------------------------------------------------------------- client side
def _add_task_report(
    report: BatchReport, result: dict[str, list], preexisting: set[Path], candidates: list[Path]
) -> None:
    """Merge one task's report, counting outputs that a killed earlier attempt of this run wrote as written.

    A worker can die after writing an image's outputs but before reporting back; its retry then finds them and
    reports "skipped (exists)". Outputs that did not exist when the run started were written by this run.
    """
    for name in result["skipped"]:
        path = Path(name)
        (report.skipped if path in preexisting else report.written).append(path)
    report.written.extend(Path(p) for p in result["written"])
    report.failed.extend((Path(p), reason) for p, reason in result["failed"])
    extra = [Path(p) for p in result["extra"]]
    retried = any(Path(p) not in preexisting for p in result["skipped"])
    for path in candidates[2:]:  # the uncertainty map the killed attempt wrote, too
        if retried and path not in preexisting and path not in extra and path.exists():
            extra.append(path)
    report.extra.extend(extra)


def _gpu_resources(client: Any) -> dict[str, float] | None:
    """``{"GPU": 1}`` when the cluster's workers advertise GPUs, else None."""
    try:
        workers = client.scheduler_info(n_workers=-1)["workers"].values()
    except TypeError:  # older distributed without n_workers
        workers = client.scheduler_info()["workers"].values()
    return {"GPU": 1} if any(w.get("resources", {}).get("GPU") for w in workers) else None


def _model_reference(client: Any, segmenter: Segmenter, model_path: str | Path | None) -> tuple[str, Any]:
    """(sha256, path) of the model file, or (sha256, scattered bytes) for a model that only exists in memory."""
    if model_path is not None:
        path = Path(model_path).resolve()
        return file_sha256(path), str(path)
    with tempfile.TemporaryDirectory() as folder:
        path = segmenter.save(Path(folder) / "model.hrdv2")
        data = path.read_bytes()
    return hashlib.sha256(data).hexdigest(), client.scatter(data, broadcast=True, hash=False)


@dataclass
class _Submission:
    """What the client submits, and what it knows of each input before its task reports back.

    ``futures`` maps each task's future to its input's index; ``early`` holds the inputs that failed before
    any task (index -> (input, reason)); ``streamed`` the label target of inputs segmented tile by tile;
    ``preexisting`` the outputs of in-memory inputs that existed before this run.
    """

    client: Any
    plan: BatchPlan
    segmenter: Segmenter
    config: FeatureConfig
    model_ref: tuple[str, Any]
    options: dict[str, Any]
    backbone_path: str | None
    band_chunk_rows: int
    chunk: int
    futures: dict[Any, int] = field(default_factory=dict)
    early: dict[int, tuple[Path, str]] = field(default_factory=dict)
    streamed: dict[int, Path] = field(default_factory=dict)
    preexisting: dict[int, set[Path]] = field(default_factory=dict)

    @property
    def channel_list(self) -> list[int] | None:
        return None if self.plan.channels is None else list(self.plan.channels)

    def submit_all(self) -> None:
        """One task per input (a band task per chunk rows and a finishing task for streamed inputs)."""
        plan = self.plan
        claimed: dict[Path, Path] = {}  # output -> input, as the single-process batch refuses same-name outputs
        for i, path in enumerate(plan.paths):
            target = path_key(plan.output(path))
            as_tif = path_key(plan.output(path, ".tif"))
            other = claimed.get(as_tif, claimed.get(target))
            if other is not None:
                self.early[i] = (
                    path,
                    f"its output '{plan.output(path).name}' would replace the one written for "
                    f"'{other.name}'; rename one of the inputs or segment them separately.",
                )
                continue
            claimed[target] = claimed[as_tif] = path
            try:
                job = plan.prepare_streamed(path)
            except Exception as err:
                self.early[i] = (path, per_file_reason(err))
                continue
            if job is not None and job.streamed is not None:
                if job.note:  # which channels are used: said here, the workers' warnings are not seen
                    warnings.warn(job.note, UserWarning, stacklevel=3)
                self.futures[self._submit_streamed(path, job.streamed)] = i
                self.streamed[i] = job.target
            else:
                self.preexisting[i] = {candidate for candidate in plan.candidate_outputs(path) if candidate.exists()}
                self.futures[self._submit_in_memory(path)] = i

    def _submit_streamed(self, path: Path, streamed: StreamedFile) -> Any:
        """The band tasks of an input segmented tile by tile, and the task that finishes it (its future)."""
        config_dict = self.config.to_dict()
        finals = {k: str(v) for k, v in streamed.finals.items()}
        stream_job = streamed.job(self.segmenter, self.config, chunk=self.chunk)
        if not streamed.intermediate_done(stream_job):
            stream_job.open()  # the partial outputs exist before any band writes into them
        bands = [
            self.client.submit(
                stream_band_task,
                str(path),
                finals,
                self.model_ref,
                config_dict,
                p,
                (a, b),
                self.chunk,
                self.backbone_path,
                self.channel_list,
                **self.options,
            )  # fmt: skip
            for p, a, b in stream_job.bands(self.band_chunk_rows)
        ]
        return self.client.submit(
            finish_stream_task, str(path), finals, self.model_ref, config_dict, self.chunk, self.channel_list,
            *bands, **self.options,
        )  # fmt: skip

    def _submit_in_memory(self, path: Path) -> Any:
        plan = self.plan
        outdir = None if plan.outdir is None else str(plan.outdir)
        return self.client.submit(
            segment_file_task, str(path), outdir, self.model_ref, self.config.to_dict(), plan.suffix, plan.overwrite,
            plan.uncertainty, self.backbone_path, self.channel_list, **self.options,
        )  # fmt: skip

    def gather(self, progress: Callable[[Progress], None] | None, cancel: threading.Event | None) -> dict[int, Any]:
        """Wait for every task: input index -> its result, or the exception it raised."""
        distributed = _import_distributed()
        n = len(self.plan.paths)
        results: dict[int, Any] = {}
        finished = len(self.early)
        if progress is not None:
            progress(Progress(finished, n, f"{len(self.futures)} task(s) submitted"))
        try:
            for future in distributed.as_completed(list(self.futures)):
                if cancel is not None and cancel.is_set():
                    raise Cancelled("Cancelled.")
                i = self.futures[future]
                try:
                    results[i] = future.result()
                except Exception as err:
                    results[i] = err
                finished += 1
                if progress is not None:
                    progress(Progress(finished, n, f"{self.plan.paths[i].name} ({finished}/{n})"))
        except BaseException:
            self.client.cancel(list(self.futures))
            raise
        return results

    def report(self, results: dict[int, Any]) -> BatchReport:
        """The report of the whole run, in the order of the inputs, as the single-process run makes it."""
        report = BatchReport()
        for i, path in enumerate(self.plan.paths):
            if i in self.early:
                report.failed.append(self.early[i])
                continue
            result = results[i]
            if isinstance(result, Exception):
                report.failed.append((path, _task_failure(result)))
            elif i in self.streamed:
                files = {kind: Path(p) for kind, p in result.items()}
                if "labels" in files:
                    report.written.append(files["labels"])
                else:
                    report.skipped.append(self.streamed[i])
                if "uncertainty" in files:
                    report.extra.append(files["uncertainty"])
            else:
                for note in result.get("notes", []):
                    warnings.warn(note, UserWarning, stacklevel=3)
                _add_task_report(report, result, self.preexisting[i], self.plan.candidate_outputs(path))
        return report


def _task_failure(error: Exception) -> str:
    """The reason recorded for an input whose task failed; errors that concern the whole batch are re-raised."""
    try:
        return per_file_reason(error)
    except (Cancelled, ModelFileError, WeightsNotFoundError):
        raise
    except Exception:  # e.g. KilledWorker after all retries: this input failed, the others are done
        return f"{type(error).__name__}: {error}"


def segment_files_distributed(
    inputs: Sequence[str | Path],
    outdir: str | Path | None,
    segmenter: Segmenter,
    featurizer_or_config: Featurizer | FeatureConfig,
    *,
    client: Any,
    suffix: str = ".tif",
    overwrite: bool = False,
    uncertainty: bool = False,
    progress: Callable[[Progress], None] | None = None,
    cancel: threading.Event | None = None,
    model_path: str | Path | None = None,
    backbone_path: str | None = None,
    retries: int = DEFAULT_RETRIES,
    band_chunk_rows: int = BAND_CHUNK_ROWS,
    chunk: int | None = None,
    channels: Sequence[int] | str | None = None,
) -> BatchReport:
    """:func:`~.batch.segment_files` on a dask cluster: one task per input (per band for huge images).

    Parameters as :func:`~.batch.segment_files`, plus
    client : distributed.Client
    model_path : the model's file, passed to the workers by path and sha256 (they must see the same
        file system, as they must for the inputs and outputs); without it the model's bytes are sent.
    backbone_path : where the backbone weights are on the workers, if not where the model says.
    retries : times a task is retried when its worker dies.
    band_chunk_rows : output chunk rows per task for images segmented tile by tile.
    chunk : chunk side of streamed outputs (default ``streaming.DEFAULT_CHUNK``).
    channels : the inputs' channels to use (default: the model's), as the single-process run reads them.

    Before any task is submitted, the batch is planned as the single-process run plans it
    (:func:`~.plan.plan_batch`): every output folder is checked to be writable and to roughly have room for
    the outputs (sizes from the inputs' headers), as the client sees it.

    Returns the same :class:`~..files.outputs.BatchReport` as the single-process run (same files, same order).
    """
    from .streaming import DEFAULT_CHUNK

    config = featurizer_or_config if isinstance(featurizer_or_config, FeatureConfig) else featurizer_or_config.config
    plan = plan_batch(
        inputs, outdir, segmenter, config, suffix=suffix, overwrite=overwrite, uncertainty=uncertainty,
        channels=channels, distinct_outputs=False,
    )  # fmt: skip
    submission = _Submission(
        client, plan, segmenter, config, _model_reference(client, segmenter, model_path),
        {"retries": retries, "resources": _gpu_resources(client), "pure": False}, backbone_path, band_chunk_rows,
        int(chunk or DEFAULT_CHUNK),
    )  # fmt: skip
    submission.submit_all()
    report = submission.report(submission.gather(progress, cancel))
    if progress is not None:
        progress(Progress(len(plan.paths), len(plan.paths), report.summary()))
    return report
