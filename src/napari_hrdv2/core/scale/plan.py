"""The plan of a batch segmentation, shared by the in-process runner and the dask runner.

Before any pixel is read, :func:`plan_batch` checks that the model fits the feature settings and
channels (:func:`~..segmentation.compatibility.check_compatible`), collects the input files
(:func:`collect_inputs`), refuses outputs that would share a name (:func:`check_distinct_outputs`) and
checks the output folders have room (:func:`check_room`). Per input, :meth:`BatchPlan.prepare` decides
where its outputs go, whether it is skipped (outputs exist) and whether it is read whole or segmented
tile by tile (:class:`FileJob`); :func:`per_file_reason` tells a failure of one input (recorded, the
batch goes on) from one that stops the batch.

Runners: :func:`~.in_process.iter_segment_files` (one process) and
:func:`~.distributed.segment_files_distributed` (a dask cluster); :func:`~.batch.segment_files` chooses.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..config import FeatureConfig
from ..errors import HRDv2Error, InputError
from ..files.atomic import check_not_an_input, check_output_folder, is_kept
from ..files.images import IMAGE_SUFFIXES, expand_inputs, planes, read_image
from ..files.outputs import LABELS_TAG, UNCERTAINTY_TAG, label_suffix, output_path, path_key, without_outputs
from ..files.paths import check_path
from ..segmentation.compatibility import check_compatible

if TYPE_CHECKING:  # pragma: no cover
    from ..segmentation.protocol import Segmenter
    from .streaming import StreamedFile

#: Lower bounds of the compressed size of outputs, as a fraction of their raw size. zlib/blosc shrink label
#: images of large regions ~100x (measured: 2 classes, 224x224: 101x) and float32 uncertainty maps little
#: (measured: 1.19x), so the estimate errs on the small side and only refuses clearly insufficient room.
LABELS_COMPRESSED_FRACTION = 1 / 256
UNCERTAINTY_COMPRESSED_FRACTION = 1 / 2
#: What :func:`collect_inputs` takes, as said when it finds nothing.
INPUT_KINDS = (*IMAGE_SUFFIXES, ".zarr", ".npy")


# ---------------------------------------------------------------------------------------------- inputs
def collect_inputs(
    inputs: Iterable[str | Path], outdir: str | Path | None = None, *, suffix: str = ".tif"
) -> list[Path]:
    """The image files to segment: files as given, images directly inside folders, sorted, no duplicates.

    Files that are themselves outputs of another input (``a_labels.tif`` next to ``a.tif`` when the
    outputs go to that folder) are left out, so re-running a batch on a folder does not segment its
    own results.
    """
    suffix = label_suffix(suffix)
    inputs = list(inputs)
    paths = _with_zarr_inputs(inputs, expand_inputs(inputs))
    names = [(tag, out_suffix) for tag in (LABELS_TAG, UNCERTAINTY_TAG) for out_suffix in dict.fromkeys((suffix, ".tif", ".zarr"))]
    return without_outputs(paths, outdir, names)


def _with_zarr_inputs(inputs: Iterable[str | Path], paths: list[Path]) -> list[Path]:
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
    suffix = label_suffix(suffix)
    claimed: dict[Path, Path] = {}
    clashes: list[str] = []
    for path in paths:
        # A stack always gives .tif, so a .png output may become .tif: both names are claimed.
        for out_suffix in dict.fromkeys((suffix, ".tif")):  # in this order: the message names the chosen format
            key = path_key(output_path(path, outdir, out_suffix))
            other = claimed.setdefault(key, path)
            if other != path:
                clashes.append(f"'{other}' and '{path}' -> '{key.name}'")
                break
    if clashes:
        raise InputError(
            f"Some inputs would write the same output file: {'; '.join(dict.fromkeys(clashes))}. Rename one of "
            "them, or segment them into separate output folders (-o)."
        )


# ---------------------------------------------------------------------------------------------- room
def max_label(segmenter: Segmenter) -> int:
    """The largest label value ``segmenter`` predicts (255 if unknown): it sets the dtype of label images."""
    classes = segmenter.classes_
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

    suffix = label_suffix(suffix)
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
                if is_kept(target, overwrite=overwrite):
                    continue
            except OSError:  # e.g. a name too long: that input fails later with its reason
                continue
            needed[target.parent] = needed.get(target.parent, 0) + int(pixels * per_pixel * staged)
    return needed


def check_room(
    paths: Sequence[Path],
    outdir: str | Path | None,
    segmenter: Segmenter,
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
    suffix = label_suffix(suffix)
    needed = estimate_output_bytes(
        paths, outdir, suffix, max_label=max_label(segmenter), uncertainty=uncertainty, overwrite=overwrite,
        channels=channels,
    )  # fmt: skip
    for folder in sorted({output_path(path, outdir, suffix).parent for path in paths}):
        check_output_folder(folder, needed.get(folder, 0))


# ---------------------------------------------------------------------------------------------- per file
@dataclass
class FileJob:
    """What to do with one input: where its outputs go, and its pixels (in memory) or its streamed plan.

    Attributes
    ----------
    target : the label image's path
    extra : the uncertainty map's path, if one is written
    planes : (N, H, W[, C]) array of an input read whole, or None
    single : one plane, written as (H, W)
    skip : the outputs exist and may not be replaced
    streamed : an input segmented tile by tile (never read whole), or None
    note : which channels of a file read lazily are used (``read_image`` warns itself)
    """

    target: Path
    extra: Path | None = None
    planes: np.ndarray | None = None
    single: bool = True
    skip: bool = False
    streamed: StreamedFile | None = None
    note: str | None = None


def candidate_outputs(path: Path, outdir: str | Path | None, suffix: str, uncertainty: bool) -> list[Path]:
    """The outputs an in-memory input may get: labels (as ``suffix``, or TIFF for a stack), then uncertainty."""
    names = [output_path(path, outdir, suffix), output_path(path, outdir, ".tif")]
    if uncertainty:
        names.append(output_path(path, outdir, ".tif", UNCERTAINTY_TAG))
    return names


def read_whole(
    path: Path, channels: tuple[int, ...] | None = None, *, separate: bool = False
) -> tuple[np.ndarray, str | None]:
    """A small Zarr / .npy input read into memory: (H, W[, C]) or (N, H, W[, C]), and the note on its channels."""
    from ..files.lazy import read_input

    return read_input(path, channels=channels, separate=separate)


def per_file_reason(err: Exception) -> str:
    """The message recorded for a failed input; errors that concern the whole batch are re-raised.

    Every other error is one input's failure: the batch goes on with the next input (a damaged file can make
    a reader raise anything, e.g. a ``KeyError`` from broken Zarr metadata).
    """
    from ..errors import Cancelled, ModelFileError, OutputError, WeightsNotFoundError

    if isinstance(err, (Cancelled, ModelFileError, WeightsNotFoundError, OutputError)):
        raise err  # the whole batch: a full disk or read-only folder fails every other input too
    if isinstance(err, HRDv2Error):
        return str(err)
    if isinstance(err, (OSError, ValueError, RuntimeError, MemoryError)):
        return f"{type(err).__name__}: {err}"
    text = " ".join(str(err).split())[:300] or "no message"
    return f"unexpected {type(err).__name__} while reading or segmenting it: {text} (the file may be damaged)"


@dataclass(frozen=True)
class BatchPlan:
    """The checked settings of a batch and its input files (made by :func:`plan_batch`).

    Attributes
    ----------
    paths : the input files, in the order they are segmented
    outdir : where the outputs go (None: next to each input)
    suffix : format of label images (one of ``files.outputs.LABEL_SUFFIXES``)
    channels : the inputs' channels to read (None: as stored)
    overwrite : replace existing outputs (else inputs whose outputs exist are skipped)
    uncertainty : also write uncertainty maps
    separate : the model encodes every channel on its own (``channel_mode="separate"``): inputs keep all
        their channels (or the chosen ones)
    """

    paths: tuple[Path, ...]
    outdir: str | Path | None
    suffix: str
    channels: tuple[int, ...] | None
    overwrite: bool
    uncertainty: bool
    separate: bool = False

    def output(self, path: Path, suffix: str | None = None, tag: str = LABELS_TAG) -> Path:
        """The output of input ``path`` (``suffix``: default the plan's)."""
        return output_path(path, self.outdir, suffix or self.suffix, tag)

    def candidate_outputs(self, path: Path) -> list[Path]:
        """:func:`candidate_outputs` of input ``path`` in this plan."""
        return candidate_outputs(path, self.outdir, self.suffix, self.uncertainty)

    def prepare(self, path: Path) -> FileJob:
        """Read one input (unless it is streamed or skipped) and decide where its outputs go."""
        from ..files.lazy import is_lazy_path

        for tag in (LABELS_TAG, *([UNCERTAINTY_TAG] if self.uncertainty else [])):  # names the file system can hold
            check_path(self.output(path, tag=tag), "output")
        lazy = is_lazy_path(path)
        if not (path.is_file() or (lazy and path.exists())):
            raise InputError(f"'{path}' does not exist or is not a file.")
        streamed = self.prepare_streamed(path)
        if streamed is not None:
            return streamed
        extra = self.output(path, ".tif", UNCERTAINTY_TAG) if self.uncertainty else None
        extra_kept = not self.overwrite if extra is None else is_kept(extra, overwrite=self.overwrite)
        if extra_kept and self.suffix == ".tif" and is_kept(self.output(path), overwrite=self.overwrite):
            return FileJob(self.output(path), skip=True)  # no need to read the image
        note = None
        if lazy:
            image, note = read_whole(path, self.channels, separate=self.separate)
        else:
            image = read_image(path, channels=self.channels, separate=self.separate)
        stack = planes(image, separate=self.separate)
        single = len(stack) == 1 and image.ndim == stack[0].ndim
        target = self.output(path, self.suffix if single else ".tif")
        return FileJob(
            target, extra, stack, single, skip=extra_kept and is_kept(target, overwrite=self.overwrite), note=note
        )

    def prepare_streamed(self, path: Path) -> FileJob | None:
        """The job of an input segmented tile by tile (Zarr output, or planes above ``STREAM_PIXELS``), else None.

        Refuses outputs that would be written over (or into) the input, with or without overwrite.
        """
        from ..files.lazy import open_channels
        from .streaming import STREAM_PIXELS, plane_shape, streamed_file

        for tag in (LABELS_TAG, UNCERTAINTY_TAG):  # never written over an input, overwrite or not
            for out_suffix in dict.fromkeys((self.suffix, ".tif")):  # in this order: messages name the same output
                check_not_an_input(self.output(path, out_suffix, tag), [path], option="output")
        suffix = self.suffix
        if suffix != ".zarr" and path.suffix.lower() not in (".tif", ".tiff", ".zarr", ".npy"):
            return None  # PNG/JPEG/BMP inputs have no lazy reader: always in memory
        try:
            _, (height, width) = plane_shape(path, self.channels, separate=self.separate)
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
        target = self.output(path, out_suffix)
        extra = self.output(path, out_suffix, UNCERTAINTY_TAG) if self.uncertainty else None
        labels_done = is_kept(target, overwrite=self.overwrite)
        extra_done = extra is None or is_kept(extra, overwrite=self.overwrite)
        if labels_done and extra_done:
            return FileJob(target, skip=True)
        streamed = streamed_file(path, target, extra if not extra_done else None, self.channels)
        if labels_done:
            del streamed.finals["labels"]
        note = open_channels(path, self.channels, separate=self.separate)[1]
        return FileJob(target, extra, streamed=streamed, note=note)


def plan_batch(
    inputs: Sequence[str | Path],
    outdir: str | Path | None,
    segmenter: Segmenter,
    config: FeatureConfig,
    *,
    suffix: str = ".tif",
    overwrite: bool = False,
    uncertainty: bool = False,
    channels: Sequence[int] | str | None = None,
    distinct_outputs: bool = True,
) -> BatchPlan:
    """Every check before any pixel is read; the inputs to segment.

    Parameters
    ----------
    inputs, outdir, suffix, overwrite, uncertainty, channels
        As :func:`~.batch.segment_files`.
    segmenter : the trained model; it must fit ``config`` and ``channels``
        (:func:`~..segmentation.compatibility.check_compatible`).
    config : the feature settings the features are computed with
    distinct_outputs : bool
        Refuse the whole batch when two inputs would write the same output (:func:`check_distinct_outputs`);
        the dask runner instead fails the later of the two inputs.

    Raises
    ------
    InputError
        An unknown format, a model that does not fit, no inputs, or clashing output names.
    OutputError
        An output folder that cannot be written or has clearly too little room (:func:`check_room`).
    """
    suffix = label_suffix(suffix)
    chosen = check_compatible(segmenter, config, channels=channels)
    paths = collect_inputs(inputs, outdir, suffix=suffix)
    if not paths:
        where = ", ".join(str(p) for p in inputs) or "(no inputs)"
        raise InputError(f"No images found in {where} (looked for {', '.join(INPUT_KINDS)}).")
    if distinct_outputs:
        check_distinct_outputs(paths, outdir, suffix)
    check_room(paths, outdir, segmenter, suffix=suffix, uncertainty=uncertainty, overwrite=overwrite, channels=chosen)
    separate = config.channel_mode == "separate"
    return BatchPlan(tuple(paths), outdir, suffix, chosen, overwrite, uncertainty, separate)
