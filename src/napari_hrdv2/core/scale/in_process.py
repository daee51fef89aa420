"""Batch segmentation in this process: one label image per input image, stack or folder of images.

Used by ``napari-hrdv2 segment`` (through :func:`~.batch.segment_files`), by the napari widget's "apply to
folder" (through ``_workers.folder_job``) and by every task of the dask runner. numpy/torch only: no
napari, no Qt.

:func:`iter_segment_files` is a generator: it yields :class:`~..progress.Progress` items (in files:
``done`` of ``total`` files, fractional while a file is in progress) between steps (stop iterating to
cancel) and returns a :class:`~..files.outputs.BatchReport`.
"""

from __future__ import annotations

import warnings
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..config import FeatureConfig
from ..errors import InputError
from ..files.atomic import is_kept
from ..files.images import write_labels
from ..files.outputs import BatchReport, path_key
from ..progress import Progress, within
from ..segmentation.compatibility import check_backbone
from .plan import BatchPlan, FileJob, per_file_reason, plan_batch

if TYPE_CHECKING:  # pragma: no cover
    from ..features.encoding import Featurizer
    from ..segmentation.protocol import Segmenter


def as_featurizer(featurizer_or_config: Featurizer | FeatureConfig) -> Featurizer:
    """A :class:`Featurizer` of ``featurizer_or_config`` (a config gets a new one; its backbone loads when used)."""
    if isinstance(featurizer_or_config, FeatureConfig):
        from ..features.encoding import Featurizer

        return Featurizer(featurizer_or_config)
    return featurizer_or_config


def iter_segment_files(
    inputs: Sequence[str | Path],
    outdir: str | Path | None,
    segmenter: Segmenter,
    featurizer_or_config: Featurizer | FeatureConfig,
    *,
    suffix: str = ".tif",
    overwrite: bool = False,
    uncertainty: bool = False,
    channels: Sequence[int] | str | None = None,
    spacing: Sequence[float] | None = None,
) -> Generator[Progress, None, BatchReport]:
    """Segment every image in ``inputs`` and write one label image per input image.

    Parameters
    ----------
    inputs : files and/or folders
        Folders contribute the image files directly inside them (.tif, .png, .jpg, .bmp).
    outdir : folder or None
        Where ``<stem>_labels<suffix>`` goes; ``None`` writes next to each input. Created if needed.
    segmenter : a trained :class:`~..segmentation.protocol.Segmenter` (e.g. ``LinearSegmenter``)
    featurizer_or_config : Featurizer or FeatureConfig
        Computes the features; must define them as the model's ``feature_config`` does.
    suffix : ".tif", ".png" or ".zarr"
        Format of single-plane outputs. Stacks (multi-page TIFFs) always give a multi-page TIFF.
    overwrite : bool
        Replace existing outputs; otherwise inputs whose outputs exist are skipped.
    uncertainty : bool
        Also write ``<stem>_uncertainty.tif`` (float32 normalised entropy, 0 = certain; one page per plane).
    channels : channels of multichannel files to use (``io.read_image(channels=)``)
        Default: the channels the model was trained on (``segmenter.channels``), else the images as stored.
        A model trained on some channels refuses others.
    spacing : (dz, dy, dx) or None
        Voxel sizes of volumes (``featurizer_or_config.volume``: every input is a ``(Z, Y, X[, C])`` volume,
        segmented in memory with volume features, :mod:`..segmentation.volume`); default isotropic.

    Yields
    ------
    Progress between steps: ``done`` of ``total`` input files, with the current file in the message. Closing the generator stops the batch (what was written stays).

    Returns
    -------
    BatchReport
        A bad input (unreadable, wrong shape, write error) is recorded in ``failed`` and the batch
        goes on; a missing backbone or a model that does not fit the features stops it with an error.
    """
    featurizer = as_featurizer(featurizer_or_config)
    plan = plan_batch(
        inputs, outdir, segmenter, featurizer.config, suffix=suffix, overwrite=overwrite, uncertainty=uncertainty,
        channels=channels,
    )  # fmt: skip
    report = BatchReport()
    n = len(plan.paths)
    written: dict[Path, Path] = {}  # output -> the input it was written for in this batch
    loaded = False
    from ..runtime.devices import inference_mode

    with inference_mode():
        for i, path in enumerate(plan.paths):
            label = f"{path.name} ({i + 1}/{n})"
            yield Progress(i, n, label)
            try:
                job = _prepare_unclaimed(plan, path, written)
            except Exception as err:
                report.failed.append((path, per_file_reason(err)))
                continue
            if job.note and not job.skip:  # which channels of a file read tile by tile are used
                warnings.warn(job.note, UserWarning, stacklevel=2)
            if job.skip:
                report.skipped.append(job.target)
                continue
            if not loaded:  # outside the per-file handling: a missing or unsuitable backbone stops the batch
                yield Progress(i, n, "Loading the backbone")
                check_backbone(segmenter, featurizer.backbone)
                loaded = True
            where = (path, i, n, label)
            if featurizer.config.volume:
                placed = yield from _iter_volume(
                    job, segmenter, featurizer, report, where, overwrite=plan.overwrite, spacing=spacing
                )
            else:
                run = _iter_streamed if job.streamed is not None else _iter_in_memory
                placed = yield from run(job, segmenter, featurizer, report, where, overwrite=plan.overwrite)
            if placed:
                written[path_key(job.target)] = path
    yield Progress(n, n, report.summary())
    return report


def _prepare_unclaimed(plan: BatchPlan, path: Path, written: dict[Path, Path]) -> FileJob:
    """:meth:`BatchPlan.prepare`, refusing an output that an earlier input of this batch has just written."""
    job = plan.prepare(path)
    if path_key(job.target) in written:
        raise InputError(
            f"its output '{job.target.name}' would replace the one just written for "
            f"'{written[path_key(job.target)].name}'; rename one of the inputs or segment them separately."
        )
    return job


def _iter_streamed(
    job: FileJob,
    segmenter: Segmenter,
    featurizer: Featurizer,
    report: BatchReport,
    where: tuple[Path, int, int, str],
    *,
    overwrite: bool,
) -> Generator[Progress, None, bool]:
    """An input larger than memory (or with a Zarr output), segmented tile by tile; its outputs go to ``report``.

    ``where``: (the input, its index, the number of inputs, its progress message). Returns True once its label
    image is in place (an input that fails is recorded in ``report.failed``). ``overwrite`` was applied by
    the plan.
    """
    path, i, n, label = where
    try:
        files = yield from within(job.streamed.iter_run(segmenter, featurizer), i, 0.99, total=n, message=label)
    except Exception as err:
        report.failed.append((path, per_file_reason(err)))
        return False
    if "labels" in files:
        report.written.append(files["labels"])
    else:  # only the uncertainty map was missing
        report.skipped.append(job.target)
    if "uncertainty" in files:
        report.extra.append(files["uncertainty"])
    return True


def _iter_in_memory(
    job: FileJob,
    segmenter: Segmenter,
    featurizer: Featurizer,
    report: BatchReport,
    where: tuple[Path, int, int, str],
    *,
    overwrite: bool,
) -> Generator[Progress, None, bool]:
    """An input read whole: its planes (N, H, W[, C]) encoded and predicted, then its label image (and uncertainty)
    written; its outputs go to ``report``. Arguments and result as :func:`_iter_streamed`.
    """
    path, i, n, label = where
    placed = False
    try:
        predicted, uncertain = [], []
        for p, plane in enumerate(job.planes):
            message = label if job.single else f"{label}, plane {p + 1}/{len(job.planes)}"
            steps = featurizer.iter_encode(plane, with_attention=False)
            start, span = i + p / len(job.planes), 0.95 / len(job.planes)
            encoding = yield from within(steps, start, span, total=n, message=message)
            kinds = ("labels", "uncertainty") if job.extra is not None else ("labels",)
            outputs = segmenter.outputs(encoding, kinds)  # refined once for both
            predicted.append(np.asarray(outputs["labels"]))
            if job.extra is not None:
                uncertain.append(np.asarray(outputs["uncertainty"], dtype=np.float32))
            del encoding
        labels = predicted[0] if job.single else np.stack(predicted)
        if not is_kept(job.target, overwrite=overwrite):
            report.written.append(write_labels(job.target, labels, overwrite=overwrite))
        else:  # only the uncertainty map was missing
            report.skipped.append(job.target)
        placed = True
        if job.extra is not None:
            maps = uncertain[0] if job.single else np.stack(uncertain)
            report.extra.append(_write_float(job.extra, maps, overwrite=overwrite))
    except Exception as err:
        report.failed.append((path, per_file_reason(err)))
    return placed


def _iter_volume(
    job: FileJob,
    segmenter: Segmenter,
    featurizer: Featurizer,
    report: BatchReport,
    where: tuple[Path, int, int, str],
    *,
    overwrite: bool,
    spacing: Sequence[float] | None,
) -> Generator[Progress, None, bool]:
    """An input that is a volume ``(Z, Y, X[, C])``, segmented with volume features; arguments as :func:`_iter_in_memory`.

    Memory: the volume, ``n_classes x Z x Y x X`` float32 of logits and the labels.
    """
    from ..features.volume import VolumeEncoder
    from ..segmentation.volume import iter_predict_volume

    path, i, n, label = where
    try:
        if job.streamed is not None or job.planes is None:
            raise InputError(
                "volume=True segments volumes held in memory; this input is read tile by tile (too large, or a Zarr "
                "output was asked for): use napari_hrdv2.predict_stack on a lazy (Zarr / dask) array instead."
            )
        encoder = VolumeEncoder(job.planes[0] if job.single else job.planes, featurizer, spacing=spacing)
        labels = yield from within(iter_predict_volume(segmenter, encoder), i, 0.95, total=n, message=label)
        if not is_kept(job.target, overwrite=overwrite):
            report.written.append(write_labels(job.target, labels, overwrite=overwrite))
        else:  # only the uncertainty map was missing
            report.skipped.append(job.target)
        if job.extra is not None:
            maps = np.stack([segmenter.uncertainty(encoder.plane_source(z)) for z in range(len(labels))])
            report.extra.append(_write_float(job.extra, maps, overwrite=overwrite))
    except Exception as err:
        report.failed.append((path, per_file_reason(err)))
        return False
    return True


def _write_float(path: Path, data: np.ndarray, overwrite: bool) -> Path:
    from ..files.atomic import write_tif

    return write_tif(path, np.asarray(data, dtype=np.float32), overwrite=overwrite, compression="zlib")
