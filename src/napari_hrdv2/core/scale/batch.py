"""Headless batch segmentation: one label image per input image, stack or folder of images.

Used by the ``napari-hrdv2 segment`` command and by the napari widget's "apply to folder"
(through ``_workers.folder_job``). numpy/torch only: no napari, no Qt.

:func:`iter_segment_files` is a generator: it yields :class:`~.progress.Progress` items (in
files: ``done`` of ``total`` files, fractional while a file is in progress) between steps (stop
iterating to cancel) and returns a :class:`BatchReport`; :func:`segment_files`
runs it to the end with an optional callback.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import FeatureConfig, check_same_features
from ..errors import HRDv2Error, InputError
from ..files.atomic import check_output_folder
from ..files.images import IMAGE_SUFFIXES, expand_inputs, planes, read_image, write_labels
from ..files.paths import check_path
from ..progress import Progress, run_steps, within

if TYPE_CHECKING:  # pragma: no cover
    from ..features.encoding import Featurizer

#: Name part between an input's stem and the output suffix: ``cells.tif`` -> ``cells_labels.tif``.
LABELS_TAG = "_labels"
#: Name part of the optional uncertainty maps: ``cells.tif`` -> ``cells_uncertainty.tif``.
UNCERTAINTY_TAG = "_uncertainty"
#: Output formats of label images (``.zarr``: an OME-Zarr image, written tile by tile and resumable).
LABEL_SUFFIXES = (".tif", ".png", ".zarr")


@dataclass
class BatchReport:
    """What a batch did: label images written, inputs skipped (output exists) and failed (with the reason).

    ``extra`` lists additional outputs (uncertainty maps).
    """

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    extra: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no input failed."""
        return not self.failed

    def summary(self, overwrite_hint: str = "pass overwrite=True to replace them") -> str:
        """One sentence, e.g. ``"Wrote 2 label image(s), 1 failed (bad.tif: ...)."``."""
        text = f"Wrote {len(self.written)} label image(s)"
        if self.skipped:
            text += f", skipped {len(self.skipped)} existing ({overwrite_hint})"
        if self.failed:
            reasons = "; ".join(f"{path.name}: {reason}" for path, reason in self.failed[:3])
            text += f", {len(self.failed)} failed ({reasons}{'...' if len(self.failed) > 3 else ''})"
        return text + "."


def output_path(source: str | Path, outdir: str | Path | None, suffix: str, tag: str = LABELS_TAG) -> Path:
    """Where the output of ``source`` goes: ``outdir/<stem><tag><suffix>`` (``outdir=None``: next to ``source``)."""
    source = Path(source)
    folder = source.parent if outdir is None else Path(outdir)
    return folder / f"{source.stem}{tag}{suffix}"


def _check_suffix(suffix: str) -> str:
    suffix = suffix if suffix.startswith(".") else f".{suffix}"
    suffix = suffix.lower()
    if suffix == ".tiff":
        suffix = ".tif"
    if suffix not in LABEL_SUFFIXES:
        raise InputError(f"Label images are written as {' or '.join(LABEL_SUFFIXES)}, not '{suffix}'.")
    return suffix


def collect_inputs(
    inputs: Iterable[str | Path], outdir: str | Path | None = None, *, suffix: str = ".tif"
) -> list[Path]:
    """The image files to segment: files as given, images directly inside folders, sorted, no duplicates.

    Files that are themselves outputs of another input (``a_labels.tif`` next to ``a.tif`` when the
    outputs go to that folder) are left out, so re-running a batch on a folder does not segment its
    own results.
    """
    suffix = _check_suffix(suffix)
    paths = _expand_lazy(inputs, expand_inputs(inputs))
    outputs = set()
    for path in paths:
        for tag in (LABELS_TAG, UNCERTAINTY_TAG):
            for out_suffix in {suffix, ".tif", ".zarr"}:
                outputs.add(_key(output_path(path, outdir, out_suffix, tag)))
    return [path for path in paths if _key(path) not in outputs]


def _expand_lazy(inputs: Iterable[str | Path], paths: list[Path]) -> list[Path]:
    """Add the Zarr images (``*.zarr`` folders) named as inputs or directly inside input folders.

    ``.npy`` files are taken only when named explicitly: a folder's ``.npy`` files are often feature arrays.
    """
    extra = []
    for item in inputs:
        folder = Path(item)
        if folder.is_dir() and folder.suffix.lower() == ".zarr":
            extra.append(folder)  # a Zarr image named as an input (not a folder of images)
        elif folder.is_dir():
            extra.extend(sorted(p for p in folder.iterdir() if p.is_dir() and p.suffix.lower() == ".zarr"))
    if not extra:
        return paths
    return sorted(dict.fromkeys([*paths, *extra]), key=lambda p: (str(p.parent), p.name))


def check_distinct_outputs(paths: Sequence[Path], outdir: str | Path | None, suffix: str = ".tif") -> None:
    """Refuse inputs whose outputs would have the same name (``a/x.tif`` and ``b/x.tif`` with one ``outdir``,
    or ``x.tif`` and ``x.png`` in one folder): one would replace the other, or be skipped as "existing" on
    the next run. Checked before any work, from the names only.
    """
    suffix = _check_suffix(suffix)
    claimed: dict[Path, Path] = {}
    clashes: list[str] = []
    for path in paths:
        # A stack always gives .tif, so a .png output may become .tif: both names are claimed.
        for out_suffix in {suffix, ".tif"}:
            key = _key(output_path(path, outdir, out_suffix))
            other = claimed.setdefault(key, path)
            if other != path:
                clashes.append(f"'{other}' and '{path}' -> '{key.name}'")
                break
    if clashes:
        raise InputError(
            f"Some inputs would write the same output file: {'; '.join(dict.fromkeys(clashes))}. Rename one of "
            "them, or segment them into separate output folders (-o)."
        )


def _key(path: Path) -> Path:
    try:
        return path.resolve()
    except OSError:  # pragma: no cover (unresolvable paths are compared as given)
        return path.absolute()


def check_model_config(segmenter: Any, config: FeatureConfig) -> None:
    """Raise :class:`InputError` if ``config`` does not compute the features ``segmenter`` was trained on."""
    trained = getattr(segmenter, "feature_config", None)
    if trained is None:
        raise InputError(
            "This model does not record the feature settings it was trained with (it was trained on plain "
            "arrays); train it from images (napari-hrdv2 train, or the napari widget) to apply it to files."
        )
    check_same_features(trained, config)


def _featurizer(featurizer_or_config: Featurizer | FeatureConfig) -> Featurizer:
    if isinstance(featurizer_or_config, FeatureConfig):
        from ..features.encoding import Featurizer

        return Featurizer(featurizer_or_config)
    return featurizer_or_config


def iter_segment_files(
    inputs: Sequence[str | Path],
    outdir: str | Path | None,
    segmenter: Any,
    featurizer_or_config: Featurizer | FeatureConfig,
    *,
    suffix: str = ".tif",
    overwrite: bool = False,
    uncertainty: bool = False,
    channels: Sequence[int] | str | None = None,
) -> Generator[Progress, None, BatchReport]:
    """Segment every image in ``inputs`` and write one label image per input image.

    Parameters
    ----------
    inputs : files and/or folders
        Folders contribute the image files directly inside them (.tif, .png, .jpg, .bmp).
    outdir : folder or None
        Where ``<stem>_labels<suffix>`` goes; ``None`` writes next to each input. Created if needed.
    segmenter : a trained ``LinearSegmenter`` (anything with ``predict(encoding)``)
    featurizer_or_config : Featurizer or FeatureConfig
        Computes the features; must define them as the model's ``feature_config`` does.
    suffix : ".tif" or ".png"
        Format of single-plane outputs. Stacks (multi-page TIFFs) always give a multi-page TIFF.
    overwrite : bool
        Replace existing outputs; otherwise inputs whose outputs exist are skipped.
    uncertainty : bool
        Also write ``<stem>_uncertainty.tif`` (float32 normalised entropy, 0 = certain; one page per plane).
    channels : channels of multichannel files to use (``io.read_image(channels=)``)
        Default: the channels the model was trained on (``segmenter.channels``), else the images as stored.
        A model trained on some channels refuses others.

    Yields
    ------
    Progress between steps: ``done`` of ``total`` input files, with the current file in the message. Closing the generator stops the batch (what was written stays).

    Returns
    -------
    BatchReport
        A bad input (unreadable, wrong shape, write error) is recorded in ``failed`` and the batch
        goes on; a missing backbone or a model that does not fit the features stops it with an error.
    """
    suffix = _check_suffix(suffix)
    channels = _check_channels(segmenter, channels)
    featurizer = _featurizer(featurizer_or_config)
    check_model_config(segmenter, featurizer.config)
    paths = collect_inputs(inputs, outdir, suffix=suffix)
    if not paths:
        where = ", ".join(str(p) for p in inputs) or "(no inputs)"
        raise InputError(f"No images found in {where} (looked for {', '.join(IMAGE_SUFFIXES)}).")
    check_distinct_outputs(paths, outdir, suffix)
    check_room(paths, outdir, segmenter, suffix=suffix, uncertainty=uncertainty, overwrite=overwrite, channels=channels)
    report = BatchReport()
    n = len(paths)
    written: dict[Path, Path] = {}  # output -> the input it was written for in this batch
    loaded = False
    from ..runtime.devices import inference_mode

    with inference_mode():
        for i, path in enumerate(paths):
            label = f"{path.name} ({i + 1}/{n})"
            yield Progress(i, n, label)
            try:
                job = _prepare(path, outdir, suffix, overwrite=overwrite, uncertainty=uncertainty, channels=channels)
                if _key(job.target) in written:
                    raise InputError(
                        f"its output '{job.target.name}' would replace the one just written for "
                        f"'{written[_key(job.target)].name}'; rename one of the inputs or segment them separately."
                    )
            except Exception as err:
                report.failed.append((path, _per_file_reason(err)))
                continue
            if job.note and not job.skip:  # which channels of a file read tile by tile are used
                warnings.warn(job.note, UserWarning, stacklevel=2)
            if job.skip:
                report.skipped.append(job.target)
                continue
            if not loaded:  # outside the per-file handling: a missing or unsuitable backbone stops the batch
                yield Progress(i, n, "Loading the backbone")
                _check_backbone(featurizer, segmenter)
                loaded = True
            if job.streamed is not None:  # larger than memory (or Zarr output): tile by tile
                try:
                    files = yield from within(
                        job.streamed.iter_run(segmenter, featurizer), i, 0.99, total=n, message=label
                    )
                    if "labels" in files:
                        report.written.append(files["labels"])
                    else:  # only the uncertainty map was missing
                        report.skipped.append(job.target)
                    if "uncertainty" in files:
                        report.extra.append(files["uncertainty"])
                    written[_key(job.target)] = path
                except Exception as err:
                    report.failed.append((path, _per_file_reason(err)))
                continue
            try:
                predicted, uncertain = [], []
                for p, plane in enumerate(job.planes):
                    message = label if job.single else f"{label}, plane {p + 1}/{len(job.planes)}"
                    steps = featurizer.iter_encode(plane, with_attention=False)
                    start, span = i + p / len(job.planes), 0.95 / len(job.planes)
                    encoding = yield from within(steps, start, span, total=n, message=message)
                    predicted.append(np.asarray(segmenter.predict(encoding)))
                    if job.extra is not None:
                        uncertain.append(np.asarray(segmenter.uncertainty(encoding), dtype=np.float32))
                    del encoding
                labels = predicted[0] if job.single else np.stack(predicted)
                if overwrite or not job.target.exists():
                    report.written.append(write_labels(job.target, labels, overwrite=overwrite))
                else:  # only the uncertainty map was missing
                    report.skipped.append(job.target)
                written[_key(job.target)] = path
                if job.extra is not None:
                    maps = uncertain[0] if job.single else np.stack(uncertain)
                    report.extra.append(_write_float(job.extra, maps, overwrite=overwrite))
            except Exception as err:
                report.failed.append((path, _per_file_reason(err)))
    yield Progress(n, n, report.summary())
    return report


#: Lower bounds of the compressed size of outputs, as a fraction of their raw size. zlib/blosc shrink label
#: images of large regions ~100x (measured: 2 classes, 224x224: 101x) and float32 uncertainty maps little
#: (measured: 1.19x), so the estimate errs on the small side and only refuses clearly insufficient room.
LABELS_COMPRESSED_FRACTION = 1 / 256
UNCERTAINTY_COMPRESSED_FRACTION = 1 / 2


def _max_label(segmenter: Any) -> int:
    classes = getattr(segmenter, "classes_", None)
    return int(np.max(classes)) if classes is not None and np.size(classes) else 255


def image_pixels(path: str | Path, channels: Sequence[int] | str | None = None) -> int | None:
    """Pixels of an input (planes x H x W, with ``channels`` chosen) read from its header only; None if it cannot be
    told cheaply."""
    from ..files.lazy import is_lazy_path

    path = Path(path)
    try:
        if is_lazy_path(path) or path.suffix.lower() in (".tif", ".tiff"):
            from .streaming import plane_shape

            n_planes, (height, width) = plane_shape(path, channels)
            return int(n_planes) * int(height) * int(width)
        from PIL import Image

        with Image.open(path) as handle:  # reads the header only
            width, height = handle.size
            return int(getattr(handle, "n_frames", 1) or 1) * int(height) * int(width)
    except Exception:  # noqa: BLE001  (unreadable inputs fail later, per file, with their reason)
        return None


def estimate_output_bytes(
    paths: Sequence[Path],
    outdir: str | Path | None,
    suffix: str = ".tif",
    *,
    max_label: int = 255,
    uncertainty: bool = False,
    overwrite: bool = False,
    channels: Sequence[int] | str | None = None,
) -> dict[Path, int]:
    """Lower estimate of the bytes a batch writes, per output folder (``channels``: as the inputs are read).

    Label images take ``label_dtype(max_label)`` per pixel and uncertainty maps float32, each times its
    compressed fraction (:data:`LABELS_COMPRESSED_FRACTION`, :data:`UNCERTAINTY_COMPRESSED_FRACTION`);
    outputs that exist and are kept (no ``overwrite``) cost nothing; large inputs segmented tile by tile
    into ``.tif`` count twice (an intermediate Zarr is converted). Inputs whose size cannot be read
    from their header are left out.
    """
    from ..files.label_images import label_dtype
    from .streaming import STREAM_PIXELS

    suffix = _check_suffix(suffix)
    item = np.dtype(label_dtype(max_label)).itemsize
    needed: dict[Path, int] = {}
    for path in paths:
        pixels = image_pixels(path, channels)
        if not pixels:
            continue
        staged = 2 if suffix != ".zarr" and pixels > STREAM_PIXELS else 1
        outputs = [(output_path(path, outdir, suffix), item * LABELS_COMPRESSED_FRACTION)]
        if uncertainty:
            extra_suffix = ".zarr" if suffix == ".zarr" else ".tif"
            outputs.append(
                (output_path(path, outdir, extra_suffix, UNCERTAINTY_TAG), 4 * UNCERTAINTY_COMPRESSED_FRACTION)
            )
        for target, per_pixel in outputs:
            try:
                if target.exists() and not overwrite:
                    continue
            except OSError:  # e.g. a name too long: that input fails later with its reason
                continue
            needed[target.parent] = needed.get(target.parent, 0) + int(pixels * per_pixel * staged)
    return needed


def check_room(
    paths: Sequence[Path],
    outdir: str | Path | None,
    segmenter: Any,
    *,
    suffix: str = ".tif",
    uncertainty: bool = False,
    overwrite: bool = False,
    channels: Sequence[int] | str | None = None,
) -> None:
    """Before any work: every output folder is writable (made if missing) and roughly has room for its outputs.

    The sizes come from the inputs' headers (:func:`estimate_output_bytes`), never from their pixels.

    Raises
    ------
    OutputError
        A folder that cannot be written, or has clearly too little free space (one line, with the sizes).
    """
    suffix = _check_suffix(suffix)
    needed = estimate_output_bytes(
        paths, outdir, suffix, max_label=_max_label(segmenter), uncertainty=uncertainty, overwrite=overwrite,
        channels=channels,
    )  # fmt: skip
    for folder in sorted({output_path(path, outdir, suffix).parent for path in paths}):
        check_output_folder(folder, needed.get(folder, 0))


@dataclass
class _Job:
    target: Path
    extra: Path | None = None
    planes: np.ndarray | None = None  # (N, H, W[, C])
    single: bool = True  # one plane, written as (H, W)
    skip: bool = False  # the outputs exist and may not be replaced
    streamed: Any = None  # a streaming.StreamedFile: segmented tile by tile, never read whole
    note: str | None = None  # which channels of a file read lazily are used (read_image warns itself)


def _check_channels(segmenter: Any, channels: Sequence[int] | str | None) -> tuple[int, ...] | None:
    """The channels to read inputs with: those given, else the model's; others than the model's are refused."""
    from ..files.images import parse_channels

    chosen = parse_channels(channels)
    trained = getattr(segmenter, "channels", None)
    trained = tuple(trained) if trained is not None else None
    if chosen is None:
        return trained
    if trained is not None and chosen != trained:
        listed = ",".join(str(c) for c in trained)
        raise InputError(
            f"The model was trained on channels {listed} of its images; channels "
            f"{','.join(str(c) for c in chosen)} give other features. Use channels {listed} (or leave the option out)."
        )
    return chosen


def _prepare(
    path: Path,
    outdir: str | Path | None,
    suffix: str,
    *,
    overwrite: bool,
    uncertainty: bool,
    channels: tuple[int, ...] | None = None,
) -> _Job:
    """Read one input and decide where its outputs go (or that it is skipped)."""
    from ..files.lazy import is_lazy_path

    for tag in (LABELS_TAG, *([UNCERTAINTY_TAG] if uncertainty else [])):  # names the file system can hold
        check_path(output_path(path, outdir, suffix, tag), "output")
    lazy = is_lazy_path(path)
    if not (path.is_file() or (lazy and path.exists())):
        raise InputError(f"'{path}' does not exist or is not a file.")
    streamed = _prepare_streamed(path, outdir, suffix, overwrite=overwrite, uncertainty=uncertainty, channels=channels)
    if streamed is not None:
        return streamed
    extra = output_path(path, outdir, ".tif", UNCERTAINTY_TAG) if uncertainty else None
    done = not overwrite and (extra is None or extra.exists())
    if done and suffix == ".tif" and output_path(path, outdir, suffix).exists():
        return _Job(output_path(path, outdir, suffix), skip=True)  # no need to read the image
    note = None
    if lazy:
        image, note = _read_whole(path, channels)
    else:
        image = read_image(path, channels=channels)
    stack = planes(image)
    single = len(stack) == 1 and image.ndim == stack[0].ndim
    target = output_path(path, outdir, suffix if single else ".tif")
    return _Job(target, extra, stack, single, skip=done and target.exists(), note=note)


def _read_whole(path: Path, channels: tuple[int, ...] | None = None) -> tuple[np.ndarray, str | None]:
    """A small Zarr / .npy input read into memory: (H, W[, C]) or (N, H, W[, C]), and the note on its channels."""
    from ..files.lazy import open_channels, planes_of

    array, note = open_channels(path, channels)
    lazy, stack = planes_of(array)
    arrays = [plane.read(slice(None), slice(None)) for plane in lazy]
    return (np.stack(arrays) if stack else arrays[0]), note


def _prepare_streamed(
    path: Path,
    outdir: str | Path | None,
    suffix: str,
    *,
    overwrite: bool,
    uncertainty: bool,
    channels: tuple[int, ...] | None = None,
) -> _Job | None:
    """The job of an input segmented tile by tile (Zarr output, or planes above ``STREAM_PIXELS``), else None."""
    from ..files.lazy import open_channels
    from .streaming import STREAM_PIXELS, plane_shape, streamed_file

    if suffix != ".zarr" and path.suffix.lower() not in (".tif", ".tiff", ".zarr", ".npy"):
        return None  # PNG/JPEG/BMP inputs have no lazy reader: always in memory
    try:
        _, (height, width) = plane_shape(path, channels)
    except InputError:
        if suffix == ".zarr" or path.suffix.lower() in (".zarr", ".npy"):
            raise
        return None  # a TIFF without a lazy reader (e.g. old JPEG compression): read it whole
    if suffix != ".zarr" and height * width <= STREAM_PIXELS:
        return None
    if suffix == ".png":
        raise InputError(
            f"it has {height}x{width} pixels, too large for a PNG written in memory; use --format tif or zarr."
        )
    out_suffix = suffix if suffix == ".zarr" else ".tif"
    target = output_path(path, outdir, out_suffix)
    extra = output_path(path, outdir, out_suffix, UNCERTAINTY_TAG) if uncertainty else None
    labels_done = target.exists() and not overwrite
    extra_done = extra is None or (extra.exists() and not overwrite)
    if labels_done and extra_done:
        return _Job(target, skip=True)
    plan = streamed_file(path, target, extra if not extra_done else None, channels)
    if labels_done:
        del plan.finals["labels"]
    return _Job(target, extra, streamed=plan, note=open_channels(path, channels)[1])


def _per_file_reason(err: Exception) -> str:
    """The message recorded for a failed input; errors that concern the whole batch are re-raised."""
    from ..errors import Cancelled, ModelFileError, OutputError, WeightsNotFoundError

    if isinstance(err, (Cancelled, ModelFileError, WeightsNotFoundError, OutputError)):
        raise err  # the whole batch: a full disk or read-only folder fails every other input too
    if isinstance(err, HRDv2Error):
        return str(err)
    if isinstance(err, (OSError, ValueError, RuntimeError, MemoryError)):
        return f"{type(err).__name__}: {err}"
    raise err


def _check_backbone(featurizer: Featurizer, segmenter: Any) -> None:
    """Load the backbone (errors stop the batch); check it gives the features (family, width, weights) the model expects."""
    backbone = featurizer.backbone
    check = getattr(segmenter, "check_backbone", None)
    if check is not None:
        check(backbone)
        return
    expected = getattr(segmenter, "n_hr_features_", None)
    if expected is not None and int(backbone.embed_dim) != int(expected):
        raise InputError(
            f"The backbone '{backbone.source}' gives {backbone.embed_dim} features per pixel but the model was "
            f"trained on {expected}: use the backbone the model was trained with."
        )
    check_weights = getattr(segmenter, "check_backbone_weights", None)
    if check_weights is not None:
        from ..backbone.identity import backbone_fingerprint

        check_weights(backbone_fingerprint(backbone.model))


def _write_float(path: Path, data: np.ndarray, overwrite: bool) -> Path:
    from ..files.atomic import write_tif

    return write_tif(path, np.asarray(data, dtype=np.float32), overwrite=overwrite, compression="zlib")


def segment_files(
    inputs: Sequence[str | Path],
    outdir: str | Path | None,
    segmenter: Any,
    featurizer_or_config: Featurizer | FeatureConfig,
    *,
    suffix: str = ".tif",
    overwrite: bool = False,
    uncertainty: bool = False,
    progress: Callable[[Progress], None] | None = None,
    client: Any = None,
    channels: Sequence[int] | str | None = None,
    **cluster_options: Any,
) -> BatchReport:
    """:func:`iter_segment_files` run to the end; ``progress`` is called with every item.

    With a dask.distributed ``client`` the inputs are segmented on its cluster, one task per image
    (:func:`~.distributed.segment_files_distributed`; ``cluster_options`` such as ``model_path``,
    ``backbone_path``, ``retries``, ``cancel`` go there), with the same outputs and report.
    """
    if client is not None:
        from .distributed import segment_files_distributed

        return segment_files_distributed(
            inputs, outdir, segmenter, featurizer_or_config, client=client, suffix=suffix, overwrite=overwrite,
            uncertainty=uncertainty, progress=progress, channels=channels, **cluster_options,
        )  # fmt: skip
    if cluster_options:
        raise InputError(f"{sorted(cluster_options)} only apply with a dask client (client=...).")
    steps = iter_segment_files(
        inputs,
        outdir,
        segmenter,
        featurizer_or_config,
        suffix=suffix,
        overwrite=overwrite,
        uncertainty=uncertainty,
        channels=channels,
    )
    return run_steps(steps, progress=progress)
