"""``napari-hrdv2``: HR-Dv2 features, training and batch segmentation from the command line.

    napari-hrdv2 features IMAGE -o features.npy [--pca pca.png] [--attention attention.tif]
    napari-hrdv2 train IMAGE... --labels LABELS... -o model.hrdv2
    napari-hrdv2 segment INPUT... --model model.hrdv2 [-o OUTDIR] [--format tif|png]
    napari-hrdv2 pca fit INPUT... -o basis.safetensors [--foreground] [--components N]
    napari-hrdv2 pca apply INPUT... --basis basis.safetensors -o OUTDIR
    napari-hrdv2 match A B -o matches.csv [--png lines.png]

Errors the user can fix (missing files, wrong label shapes, missing weights, corrupt model files)
are printed as one line on stderr with a non-zero exit code; ``--debug`` adds the traceback.
torch is imported only after the arguments are parsed, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .core.backbone.registry import backbone_names

# Torch-free (the choices and field lists are read before any heavy import, so --help stays instant).
from .core.config import (
    DTYPE_OPTIONS,
    FACETS,
    FEATURE_DEFINING_FIELDS,
    NORMALIZE_OPTIONS,
    PRESETS,
    RESIZE_OPTIONS,
    RUNTIME_FIELDS,
    SHIFT_PATTERNS,
)

if TYPE_CHECKING:  # pragma: no cover
    from .core.config import FeatureConfig
    from .core.features.encoding import Encoding, Featurizer
    from .core.files.atomic import ArrayStreamWriter
    from .core.progress import Progress

PROG = "napari-hrdv2"

#: Exit codes.
EXIT_OK = 0
EXIT_FAILED_INPUTS = 1  # segment: some inputs could not be processed (the others were written)
EXIT_USAGE = 2  # bad options or input (missing file, wrong label shape, existing output...)
EXIT_WEIGHTS = 3  # backbone weights not found (offline, wrong path, checksum mismatch)
EXIT_MODEL = 4  # the model file is missing, corrupt or does not fit
EXIT_UNEXPECTED = 5  # a bug: an error the package did not anticipate (still one line; --debug shows it)
EXIT_INTERRUPTED = 130  # Ctrl-C


#: Command-line option of every FeatureConfig field the CLI sets.
OPTION_OF = {
    "backbone": "--backbone",
    "shifts": "--shifts",
    "shift_distances": "--distances",
    "flips": "--flips",
    "rotations": "--rotations",
    "stride": "--stride",
    "resize": "--resize",
    "normalize": "--normalize",
    "facet": "--facet",
    "layer": "--layer",
    "device": "--device",
    "dtype": "--dtype",
    "storage_dtype": "--storage-dtype",
    "tile_size": "--tile-size",
    "tile_overlap": "--tile-overlap",
    "batch_size": "--batch-size",
    "weights_sha256": "--sha256",
}

EPILOG = (
    "Exit codes: 0 success, 1 some inputs failed (segment; the others were written), 2 bad options or "
    "input, 3 backbone weights not found, 4 model file missing or corrupt, 5 unexpected error (a bug), "
    "130 interrupted. "
    "Add --debug to see the traceback of an error."
)


# ---------------------------------------------------------------------------------------------- parser
def _none_or_int(minimum: int) -> Callable[[str], int | str]:
    """An int >= ``minimum``, or "none" / "0" meaning "no value" (returned as the string "none")."""

    def parse(text: str) -> int | str:
        if text.strip().lower() in ("none", "0"):
            return "none"
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer or 'none', got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum} (or 'none'), got {value}")
        return value

    return parse


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _channel_list(text: str) -> tuple[int, ...]:
    from .core.errors import InputError
    from .core.files.images import parse_channels

    try:
        channels = parse_channels(text)
    except InputError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    assert channels is not None
    return channels


def _common_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("output and messages")
    group.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show progress bars on stderr (default: only when stderr is a terminal)",
    )
    group.add_argument("-q", "--quiet", action="store_true", help="no progress bars and no summary lines")
    group.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks of errors")
    group.add_argument(
        "-v", "--verbose", action="store_true", help="say on stderr which device and compute dtype are used, and why"
    )
    return parent


def _runtime_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("backbone and computation")
    group.add_argument(
        "--backbone",
        help=f"preset ({', '.join(backbone_names())}; default dinov2_vits14; presets win over same-named "
        "folders: write ./NAME for a folder), Hugging Face id, save_pretrained or timm folder, or a .pth / "
        ".safetensors checkpoint (official DINOv2/DINOv3 or timm layout)",
    )
    group.add_argument("--device", help="auto (default: CUDA, then MPS, then CPU), cpu, cuda, cuda:1, mps")
    group.add_argument(
        "--dtype",
        choices=DTYPE_OPTIONS,
        help="compute precision (default auto: float16 on CUDA, bfloat16 on CPUs with native bfloat16, else float32)",
    )
    group.add_argument(
        "--storage-dtype",
        choices=DTYPE_OPTIONS,
        help="precision of the low-resolution maps kept in memory (default auto: float16, half the memory of float32)",
    )
    group.add_argument(
        "--tile-size",
        type=_none_or_int(28),
        metavar="PX|none",
        help="split large images into tiles of this side (default 518); 0 or 'none' = whole image",
    )
    group.add_argument("--tile-overlap", type=int, metavar="PX", help="overlap of neighbouring tiles (default 84)")
    group.add_argument(
        "--batch-size",
        type=_positive_int,
        metavar="N",
        help="transformed copies per forward pass (default auto: 1 on the CPU, 4 on a GPU)",
    )
    group.add_argument("--sha256", metavar="HEX", help="expected sha256 of a local weights file")
    group.add_argument(
        "--allow-download",
        action="store_true",
        help="let a backbone that is not on this computer (a preset or Hugging Face id not in the local Hugging "
        "Face cache) be downloaded from the Hugging Face Hub; never done without this option",
    )
    return parent


def _feature_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("features (default: the 'balanced' preset)")
    group.add_argument("--preset", choices=tuple(PRESETS), help="speed/quality trade-off; the options below refine it")
    group.add_argument("--shifts", choices=SHIFT_PATTERNS, help="shift directions: none, 4 axial, 8 axial+diagonal")
    group.add_argument("--distances", type=_positive_int, nargs="+", metavar="PX", help="shift lengths, e.g. 3 6")
    group.add_argument(
        "--flips", action=argparse.BooleanOptionalAction, default=None, help="also flip every shifted copy (3x slower)"
    )
    group.add_argument(
        "--rotations",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also rotate every copy by 90, 180 and 270 degrees (4x slower)",
    )
    group.add_argument(
        "--stride", type=_none_or_int(1), metavar="PX|none", help="patch stride (default 'none' = patch size)"
    )
    group.add_argument("--resize", choices=RESIZE_OPTIONS, help="token maps to pixels (default bilinear)")
    group.add_argument("--normalize", choices=NORMALIZE_OPTIONS, help="intensity scaling (default minmax)")
    group.add_argument(
        "--facet", choices=FACETS, help="block output tokens (default) or its key/query/value projections"
    )
    group.add_argument(
        "--layer", type=int, metavar="I", help="block to read, 0-based, negative from the end (default: the last)"
    )
    inputs = parent.add_argument_group("input images")
    inputs.add_argument(
        "--channels",
        type=_channel_list,
        metavar="I[,J[,K]]",
        help="channels of multichannel images to use, 0-based: one (grey), two (red and green) or three (RGB), "
        "e.g. --channels 0,2 (default: grey or RGB as stored, alpha dropped)",
    )
    return parent


def build_parser() -> argparse.ArgumentParser:
    """The ``napari-hrdv2`` argument parser (subcommands ``features``, ``train``, ``segment``)."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Pixel-resolution DINOv2 (HR-Dv2) features and weakly supervised segmentation.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--debug", action="store_true", default=False, help="show tracebacks of errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common, runtime, feature = _common_options(), _runtime_options(), _feature_options()

    features = commands.add_parser(
        "features",
        parents=[feature, runtime, common],
        help="compute HR-Dv2 features (and PCA-RGB / attention maps) of an image",
        description="Compute the (C, H, W) HR-Dv2 features of an image. A multi-page TIFF stack gives "
        "(N, C, H, W) unless --plane picks one plane.",
        epilog=EPILOG,
    )
    features.add_argument("image", metavar="IMAGE", help="image file (.tif, .png, .jpg, .bmp; TIFF stacks)")
    features.add_argument(
        "-o", "--output", metavar="OUT", help="features as .npy (or .tif): (C, H, W), (N, C, H, W) for a stack"
    )
    features.add_argument(
        "--dtype-out", choices=("float32", "float16"), default="float32", help="dtype of the features file"
    )
    features.add_argument(
        "--pca", metavar="PNG", help="PCA-RGB view of the features, 8-bit .png (a stack: .tif, one colour basis)"
    )
    features.add_argument("--attention", metavar="TIF", help="CLS attention maps, (heads, H, W) float32 .tif (or .npy)")
    features.add_argument(
        "--plane", type=int, metavar="N", help="only this plane of a stack (0-based, as napari's slider)"
    )
    features.add_argument("--overwrite", action="store_true", help="replace existing output files")
    features.set_defaults(run=run_features)

    train = commands.add_parser(
        "train",
        parents=[feature, runtime, common],
        help="train a segmentation model from images and brush labels",
        description="Train a LinearSegmenter on the labelled pixels of one or more images. Label images hold "
        "class values (1, 2, ...) and 0 for unlabelled pixels, one label file per image; a TIFF stack takes a "
        "label stack of as many planes (planes without labels are skipped).",
        epilog=EPILOG,
    )
    train.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    train.add_argument("--labels", nargs="+", required=True, metavar="LABELS", help="label images, one per IMAGE")
    train.add_argument("-o", "--output", required=True, metavar="MODEL", help="model file to write (.hrdv2)")
    train.add_argument("--overwrite", action="store_true", help="replace an existing model file")
    group = train.add_argument_group("classifier")
    group.add_argument(
        "--hybrid", action="store_true", help="add classical multiscale filters (edges, texture...) to the features"
    )
    group.add_argument("--l2", type=float, default=1e-3, help="L2 penalty of the logistic regression (default 1e-3)")
    group.add_argument("--max-iter", type=_positive_int, default=100, help="L-BFGS iterations (default 100)")
    group.add_argument(
        "--majority-size", type=int, default=0, metavar="PX", help="clean-up of predictions: majority filter side"
    )
    group.add_argument(
        "--min-object-size", type=int, default=0, metavar="PX", help="clean-up: merge regions smaller than this"
    )
    train.set_defaults(run=run_train)

    segment = commands.add_parser(
        "segment",
        parents=[feature, runtime, common],
        help="segment images, stacks and folders with a trained model",
        description="Write one label image <stem>_labels.tif (or .png) per input image; a TIFF stack gives a "
        "multi-page TIFF. Folders contribute the images directly inside them. Existing outputs are skipped "
        "unless --overwrite; an input that fails is reported and the others are still processed. The model's "
        "own feature settings are used: feature options may only repeat them, while --device, --dtype, "
        "--storage-dtype, --tile-size, --tile-overlap and --batch-size may change how the features are computed "
        "(--device, --dtype and --storage-dtype default to auto, the others to the model's values).",
        epilog=EPILOG,
    )
    segment.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, TIFF stacks and/or folders")
    segment.add_argument("--model", required=True, help="model file written by 'train' or the napari widget")
    segment.add_argument(
        "-o", "--outdir", metavar="OUTDIR", help="folder for the label images (default: next to each input)"
    )
    segment.add_argument(
        "--format",
        choices=("tif", "png", "zarr"),
        default="tif",
        help="label image format: tif, png (single planes) or zarr (OUTDIR/<stem>_labels.zarr, an OME-Zarr image "
        "written tile by tile, resumable); images larger than memory are always segmented tile by tile "
        "(tif: a tiled BigTIFF)",
    )
    segment.add_argument(
        "--scheduler",
        metavar="local[:N]|ADDRESS",
        help="run on a dask.distributed cluster, one task per image: 'local' or 'local:N' (N worker processes on "
        "this computer) or a scheduler address such as tcp://host:8786 (needs napari-hrdv2[distributed])",
    )
    segment.add_argument("--overwrite", action="store_true", help="replace existing outputs instead of skipping")
    segment.add_argument(
        "--uncertainty", action="store_true", help="also write <stem>_uncertainty.tif (0 = certain, 1 = a guess)"
    )
    segment.add_argument(
        "--backbone-path",
        metavar="PATH",
        help="where the model's backbone weights are on this computer, if not where they were when it was trained",
    )
    segment.set_defaults(run=run_segment)

    from ._cli_analysis import add_commands  # pca fit / pca apply / match

    add_commands(commands, feature=feature, runtime=runtime, common=common)
    return parser


# ---------------------------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (also when called in-process)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, usage errors
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else EXIT_USAGE)
    try:
        with _library_progress_bars(_progress_enabled(args)), _one_line_warnings():
            return int(args.run(args) or EXIT_OK)
    except KeyboardInterrupt:
        _error(args, "interrupted.", show_traceback=False)
        return EXIT_INTERRUPTED
    except Exception as err:  # every exit path prints one line (--debug adds the traceback)
        code, message = describe_error(err)
        _error(args, message)
        return code


def describe_error(err: BaseException) -> tuple[int, str]:
    """The exit code and the one-line message of an error that ended a command.

    Errors of the package (:class:`HRDv2Error`) carry their own message; the others are mapped by
    class (out of memory, file system), and anything unexpected still gives one line.
    """
    from .core.errors import Cancelled, HRDv2Error, ModelFileError, WeightsNotFoundError

    for kind, code in ((Cancelled, EXIT_INTERRUPTED), (WeightsNotFoundError, EXIT_WEIGHTS),
                       (ModelFileError, EXIT_MODEL), (HRDv2Error, EXIT_USAGE)):  # fmt: skip
        if isinstance(err, kind):
            return code, str(err)
    if isinstance(err, MemoryError) or (isinstance(err, RuntimeError) and _is_allocation_error(err)):
        return EXIT_USAGE, (
            "Out of memory. Use --preset fast (fewer passes), --storage-dtype float16, a smaller backbone, "
            "or crop the image into parts."
        )
    if isinstance(err, OSError):
        where = f": '{err.filename}'" if getattr(err, "filename", None) else ""
        return EXIT_USAGE, f"{err.strerror}{where}." if err.strerror else str(err) or type(err).__name__
    text = " ".join(str(err).split())
    text = text if len(text) < 300 else text[:300] + "..."
    return EXIT_UNEXPECTED, (
        f"unexpected {type(err).__name__}: {text or 'no message'} (a bug: add --debug for the traceback and "
        "please report it)."
    )


def _is_allocation_error(err: BaseException) -> bool:
    text = str(err).lower()
    return "out of memory" in text or "can't allocate" in text or "cannot allocate" in text


@contextmanager
def _one_line_warnings() -> Iterator[None]:
    """Warnings of the package and its libraries as ``napari-hrdv2: warning: ...`` lines on stderr."""
    import warnings

    def show(message: Warning | str, category: type[Warning], *_args: Any, **_kwargs: Any) -> None:
        print(f"{PROG}: warning: {' '.join(str(message).split())}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


def _error(args: argparse.Namespace, message: str, *, show_traceback: bool = True) -> None:
    if show_traceback and getattr(args, "debug", False):
        traceback.print_exc()
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)


def _say(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(message, flush=True)


def _say_precision(args: argparse.Namespace, featurizer: Any) -> None:
    """``--verbose``: the device and compute dtype of ``featurizer`` and why (e.g. native bfloat16 on this CPU)."""
    if getattr(args, "verbose", False):
        print(f"{PROG}: device and compute dtype: {featurizer.precision}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- helpers
def _config_values(args: argparse.Namespace, fields: Sequence[str]) -> dict[str, Any]:
    """FeatureConfig values of the options given on the command line (``None`` = not given)."""
    raw = {
        "backbone": args.backbone,
        "shifts": args.shifts,
        "shift_distances": tuple(args.distances) if args.distances else None,
        "flips": args.flips,
        "rotations": args.rotations,
        "stride": args.stride,
        "resize": args.resize,
        "normalize": args.normalize,
        "facet": getattr(args, "facet", None),
        "layer": getattr(args, "layer", None),
        "device": args.device,
        "dtype": args.dtype,
        "storage_dtype": args.storage_dtype,
        "tile_size": args.tile_size,
        "tile_overlap": args.tile_overlap,
        "batch_size": args.batch_size,
        "weights_sha256": args.sha256,
    }
    values = {name: raw[name] for name in fields if raw[name] is not None}
    return {name: (None if value == "none" and name != "shifts" else value) for name, value in values.items()}


def build_config(args: argparse.Namespace) -> FeatureConfig:
    """FeatureConfig defaults, then ``--preset``, then the options given."""
    from .core.config import FeatureConfig

    values: dict[str, Any] = dict(PRESETS[args.preset]) if args.preset else {}
    values.update(_config_values(args, FEATURE_DEFINING_FIELDS + RUNTIME_FIELDS))
    return FeatureConfig(**values)


def _same_backbone(a: str, b: str) -> bool:
    from .core.backbone.loading import find_spec

    if a == b:
        return True
    spec_a, spec_b = find_spec(a), find_spec(b)
    if spec_a is not None or spec_b is not None:
        return spec_a == spec_b
    try:
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    except OSError:  # pragma: no cover
        return False


def model_runtime_config(args: argparse.Namespace, trained: FeatureConfig) -> FeatureConfig:
    """The model's FeatureConfig with the runtime options given; feature options must agree with the model.

    ``--device``, ``--dtype`` and ``--storage-dtype`` default to "auto" (the model may come from another
    computer); tiling and batching default to the model's values.
    """
    from .core.errors import InputError

    requested: dict[str, tuple[Any, str]] = {}  # field -> (value, where it came from)
    if args.preset:
        requested.update({name: (value, f"--preset {args.preset}") for name, value in PRESETS[args.preset].items()})
    requested.update(
        {name: (value, OPTION_OF[name]) for name, value in _config_values(args, FEATURE_DEFINING_FIELDS).items()}
    )
    conflicts, backbone_conflict = [], False
    for name, (value, option) in requested.items():
        have = getattr(trained, name)
        if name == "shift_distances":
            value = tuple(value)
        same = _same_backbone(str(value), str(have)) if name == "backbone" else value == have
        if not same:
            conflicts.append(f"{option} gives {name}={value!r} but the model was trained with {have!r}")
            backbone_conflict |= name == "backbone"
    if conflicts:
        hint = (
            " (use --backbone-path to say where the model's backbone weights are on this computer)"
            if backbone_conflict
            else ""
        )
        raise InputError(
            f"segment computes the features the model was trained on: {'; '.join(conflicts)}. "
            f"Leave these options out{hint}."
        )
    runtime = {"device": "auto", "dtype": "auto", "storage_dtype": "auto"}
    runtime.update(_config_values(args, RUNTIME_FIELDS))
    return trained.replace(**runtime)


def check_download(args: argparse.Namespace, source: str, *, hint: str = "") -> None:
    """Refuse a backbone whose loading would download it, unless ``--allow-download`` (every command's rule).

    A local folder or file, or a preset / Hugging Face id already in the local Hugging Face cache, needs
    no option. ``hint`` is appended to the message (e.g. how to point at weights elsewhere).
    """
    from .core.backbone.identity import download_needed
    from .core.errors import WeightsNotFoundError

    if getattr(args, "allow_download", False):
        return
    repo = download_needed(source)
    if repo is not None:
        raise WeightsNotFoundError(
            f"The backbone '{source}' is not on this computer; loading it would download the Hugging Face "
            f"repository '{repo}'. Download it first with `hf download {repo}`, or pass --allow-download.{hint}"
        )


def make_featurizer(
    args: argparse.Namespace,
    config: FeatureConfig,
    *,
    backbone_path: str | None = None,
    hint: str = "",
    load: bool = True,
) -> Featurizer:
    """The Featurizer of ``config`` (its backbone loaded from ``backbone_path`` if given), downloads refused
    unless ``--allow-download`` (:func:`check_download`). ``load``: load the weights now, before any work
    (otherwise when first needed, e.g. not at all when a batch skips every input)."""
    from .core.features.encoding import Featurizer

    if backbone_path:
        from .core.backbone.loading import load_backbone
        from .core.runtime.devices import resolve_device, resolve_dtype

        check_download(args, backbone_path, hint=hint)
        device = resolve_device(config.device)
        backbone = load_backbone(
            backbone_path, device=device, dtype=resolve_dtype(config.dtype, device), sha256=config.weights_sha256
        )
        featurizer = Featurizer(config, backbone=backbone)
    else:
        check_download(args, config.backbone, hint=hint)
        featurizer = Featurizer(config)
    if load:
        featurizer.backbone  # noqa: B018  (weights errors before any work)
    return featurizer


def _progress_enabled(args: argparse.Namespace) -> bool:
    if args.quiet or args.progress is False:
        return False
    if args.progress:
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # pragma: no cover (closed or replaced stderr)
        return False


@contextmanager
def _library_progress_bars(enabled: bool) -> Iterator[None]:
    """Hide transformers' and huggingface_hub's own bars ("Loading weights") when ours are hidden."""
    if enabled:
        yield
        return
    from transformers.utils import logging as transformers_logging

    was_enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            transformers_logging.enable_progress_bar()


def _progress_bar(args: argparse.Namespace, **kwargs: Any) -> Any:
    from tqdm.auto import tqdm

    return tqdm(file=sys.stderr, disable=not _progress_enabled(args), dynamic_ncols=True, leave=False, **kwargs)


def _encode(
    args: argparse.Namespace, featurizer: Featurizer, plane: np.ndarray, desc: str, *, with_attention: bool
) -> Encoding:
    """Encode one plane with a progress bar driven by ``Featurizer.iter_encode``."""
    from .core.progress import run_steps

    bar = None

    def show(update: Progress) -> None:
        nonlocal bar
        if bar is None:
            bar = _progress_bar(args, total=update.total, desc=desc, unit="pass")
        bar.update(update.done - bar.n)

    try:
        return run_steps(featurizer.iter_encode(plane, with_attention=with_attention), progress=show)
    finally:
        if bar is not None:
            bar.close()


def _check_output(path: str | Path, suffixes: Sequence[str], option: str, overwrite: bool) -> Path:
    from .core.errors import InputError
    from .core.files.atomic import check_target

    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise InputError(f"{option} '{path}' must end with {' or '.join(suffixes)}.")
    return check_target(path, overwrite=overwrite, what=f"{option} output")


# ---------------------------------------------------------------------------------------------- features
def run_features(args: argparse.Namespace) -> int:
    """``napari-hrdv2 features``."""
    from .core.analysis.pca import fit_pca, pca_rgb
    from .core.errors import InputError
    from .core.files.atomic import ArrayStreamWriter, check_not_an_input
    from .core.files.images import is_stack, read_image
    from .core.runtime.devices import inference_mode

    if not (args.output or args.pca or args.attention):
        raise InputError("Nothing to write: give -o features.npy, --pca pca.png and/or --attention attention.tif.")
    outputs = [
        _check_output(path, suffixes, option, args.overwrite)
        for path, suffixes, option in (
            (args.output, (".npy", ".tif", ".tiff"), "-o"),
            (args.pca, (".png", ".tif", ".tiff"), "--pca"),
            (args.attention, (".tif", ".tiff", ".npy"), "--attention"),
        )
        if path
    ]
    if len({p.resolve() for p in outputs}) < len(outputs):
        raise InputError("-o, --pca and --attention must be different files.")
    for output in outputs:
        check_not_an_input(output, [args.image])
    image = read_image(args.image, channels=args.channels)
    name = Path(args.image).name
    stack = is_stack(image)
    if args.plane is not None:
        n = len(image) if stack else 1
        if not 0 <= args.plane < n:
            what = f"a stack of {n} planes (0..{n - 1})" if stack else "a single image (plane 0)"
            raise InputError(f"--plane {args.plane} is out of range: '{name}' is {what}.")
        if stack:
            image, stack = image[args.plane], False
    planes = list(image) if stack else [image]
    if stack and args.pca and Path(args.pca).suffix.lower() == ".png":
        raise InputError(
            f"'{name}' is a stack of {len(planes)} planes: write --pca as .tif (one RGB page per plane) "
            "or pick one plane with --plane N."
        )
    featurizer = make_featurizer(args, build_config(args))
    backbone = featurizer.backbone
    _say_precision(args, featurizer)
    height, width = planes[0].shape[:2]
    lead = (len(planes),) if stack else ()
    item = np.dtype(args.dtype_out).itemsize

    def staged(path: str | None) -> int:  # a .tif is converted from a staged .npy: both exist for a moment
        return 2 if path and Path(path).suffix.lower() in (".tif", ".tiff") else 1

    needed = {
        args.output: len(planes) * int(backbone.embed_dim) * height * width * item * staged(args.output),
        args.pca: len(planes) * 3 * height * width,
        args.attention: len(planes) * int(backbone.num_heads) * height * width * 4 * staged(args.attention),
    }
    _check_folders(needed)  # before any encoding: writable, and room for the (uncompressed) arrays
    feature_file = attention_file = None
    pca_planes: list[np.ndarray] = []
    basis = None
    written: list[tuple[str, Path, tuple[int, ...], str]] = []  # (what, path, shape, dtype)
    try:
        with inference_mode():
            for index, plane in enumerate(planes):
                desc = f"{name} plane {index + 1}/{len(planes)}" if stack else name
                encoding = _encode(args, featurizer, plane, desc, with_attention=bool(args.attention))
                if args.output:
                    if feature_file is None:
                        shape = (*lead, encoding.n_features, height, width)
                        feature_file = ArrayStreamWriter(args.output, shape, args.dtype_out, overwrite=args.overwrite)
                    _write_features(encoding, feature_file)
                if args.pca:
                    if basis is None:
                        basis = fit_pca(encoding, n_components=3)
                    rgb = pca_rgb(encoding, basis=basis)
                    pca_planes.append(np.round(rgb * 255).astype(np.uint8))
                if args.attention:
                    maps = encoding.attention()
                    if attention_file is None:
                        attention_file = ArrayStreamWriter(
                            args.attention, (*lead, *maps.shape), "float32", overwrite=args.overwrite
                        )
                    attention_file.write(maps)
                del encoding
        for what, handle in (("features", feature_file), ("attention", attention_file)):
            if handle is not None:
                written.append((what, handle.commit(), handle.shape, str(handle.dtype)))
        if args.pca:
            rgb = np.stack(pca_planes) if stack else pca_planes[0]
            written.append(("PCA-RGB", _write_rgb(Path(args.pca), rgb, args.overwrite), rgb.shape, "uint8"))
    finally:  # nothing half-written: temporary files of outputs not committed are deleted
        for handle in (feature_file, attention_file):
            if handle is not None and not handle.committed:
                handle.abort()
    for what, path, shape, dtype in written:
        _say(args, f"Wrote {what} {path}: {shape} {dtype}")
    return EXIT_OK


def _check_folders(needed: dict[Any, int]) -> None:
    """Pre-flight: the folder of every output path (``None`` keys ignored) is writable and has room for it."""
    from .core.files.atomic import check_output_folder

    totals: dict[Path, int] = {}
    for path, n_bytes in needed.items():
        if path:
            folder = Path(path).parent
            totals[folder] = totals.get(folder, 0) + int(n_bytes)
    for folder, n_bytes in totals.items():
        check_output_folder(folder, n_bytes)


def _write_features(encoding: Encoding, out: ArrayStreamWriter) -> None:
    """Append the (C, H, W) features to ``out``, a block of channels at a time (bounded memory)."""
    n_features = encoding.n_features
    height, width = encoding.shape
    block = max(1, min(n_features, (1 << 25) // max(height * width, 1)))
    for start in range(0, n_features, block):
        stop = min(start + block, n_features)
        out.write(encoding.features(channels=slice(start, stop)))


def _write_rgb(path: Path, rgb: np.ndarray, overwrite: bool) -> Path:
    from .core.files.atomic import write_png, write_tif

    if path.suffix.lower() == ".png":
        return write_png(path, rgb, overwrite=overwrite)
    return write_tif(path, rgb, photometric="rgb", compression="zlib", overwrite=overwrite)


# ---------------------------------------------------------------------------------------------- train
def _training_planes(
    images: Sequence[str], labels: Sequence[str], channels: Sequence[int] | None = None
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(description, plane, labels) for every labelled plane; checks shapes before any encoding."""
    from .core.errors import InputError
    from .core.files.images import is_stack, read_image, read_labels
    from .core.segmentation.labels import check_labels

    if len(images) != len(labels):
        raise InputError(f"Got {len(images)} image(s) but {len(labels)} label file(s): give one label file per image.")
    pairs = []
    for image_path, labels_path in zip(images, labels):
        image, lab = read_image(image_path, channels=channels), read_labels(labels_path)
        iname, lname = Path(image_path).name, Path(labels_path).name
        if is_stack(image):
            n = len(image)
            if lab.ndim != 3 or len(lab) != n:
                raise InputError(
                    f"'{iname}' is a stack of {n} planes {image.shape[1:3]}, so its labels must be a stack of {n} "
                    f"planes of that size, but '{lname}' has shape {lab.shape}."
                )
            planes = [(f"{iname} plane {i}", image[i], lab[i]) for i in range(n)]
        else:
            if lab.ndim != 2:
                raise InputError(
                    f"Labels '{lname}' have shape {lab.shape}, but '{iname}' is one image {image.shape[:2]}: "
                    "give one label plane (H, W) of class values (0 = unlabelled)."
                )
            planes = [(iname, image, lab)]
        for desc, plane, plane_labels in planes:
            checked = check_labels(plane_labels, plane.shape[:2], name=f"Labels '{lname}'")
            if checked.any():
                pairs.append((desc, plane, checked))
    classes = np.unique(np.concatenate([np.unique(lab) for _, _, lab in pairs])) if pairs else np.array([], int)
    classes = classes[classes > 0]
    if classes.size == 0:
        raise InputError("No pixels are labelled: the label images must hold class values 1, 2, ... (0 = unlabelled).")
    if classes.size == 1:
        raise InputError(f"Only one class (value {classes[0]}) is labelled: label pixels of at least two classes.")
    return pairs


def run_train(args: argparse.Namespace) -> int:
    """``napari-hrdv2 train``."""
    from .core.errors import InputError
    from .core.files.atomic import check_not_an_input, check_output_folder
    from .core.files.paths import check_path
    from .core.runtime.devices import inference_mode
    from .core.segmentation.segmenter import LinearSegmenter

    output = check_path(args.output, "model file")
    check_not_an_input(output, [*args.images, *args.labels])
    if output.is_dir():
        raise InputError(f"'{output}' is a folder; give a model file name such as model.hrdv2.")
    if output.exists() and not args.overwrite:
        raise InputError(f"'{output}' already exists; pass --overwrite to replace it.")
    check_output_folder(output.parent)
    segmenter = LinearSegmenter(
        hybrid=args.hybrid,
        l2=args.l2,
        max_iter=args.max_iter,
        majority_size=args.majority_size,
        min_object_size=args.min_object_size,
    )
    pairs = _training_planes(args.images, args.labels, args.channels)
    featurizer = make_featurizer(args, build_config(args))
    _say_precision(args, featurizer)
    encodings = []
    with inference_mode():
        for i, (desc, plane, _) in enumerate(pairs):
            encodings.append(_encode(args, featurizer, plane, f"{desc} ({i + 1}/{len(pairs)})", with_attention=False))
    # Outside inference mode: the optimiser needs autograd.
    segmenter.fit(encodings, [lab for _, _, lab in pairs])
    segmenter.channels = args.channels  # segment reads its inputs with the same channels
    segmenter.save(output, overwrite=args.overwrite)
    summary = segmenter.summary_
    counts = ", ".join(f"{value}: {count}" for value, count in summary.pixels_per_class.items())
    _say(
        args,
        f"Trained on {len(pairs)} labelled plane(s), pixels per class {{{counts}}}, "
        f"training accuracy {summary.training_accuracy:.3f}. Wrote {output}",
    )
    return EXIT_OK


# ---------------------------------------------------------------------------------------------- segment
def run_segment(args: argparse.Namespace) -> int:
    """``napari-hrdv2 segment``."""
    from .core.errors import InputError, WeightsNotFoundError
    from .core.files.paths import check_path
    from .core.scale.batch import segment_files
    from .core.segmentation.segmenter import LinearSegmenter

    segmenter = LinearSegmenter.load(args.model)
    if segmenter.feature_config is None:
        raise InputError(f"'{args.model}' does not record its feature settings; retrain it from images.")
    config = model_runtime_config(args, segmenter.feature_config)
    featurizer = make_featurizer(
        args,
        config,
        backbone_path=args.backbone_path,
        hint="" if args.backbone_path else " If the weights are elsewhere on this computer, pass --backbone-path PATH.",
        load=False,
    )
    _say_precision(args, featurizer)
    if args.outdir and check_path(args.outdir, "output folder").exists() and not Path(args.outdir).is_dir():
        raise InputError(f"-o '{args.outdir}' is a file; give a folder for the label images.")

    bar = None

    def progress(update: Progress) -> None:  # done of total input files
        nonlocal bar
        if bar is None:
            bar = _progress_bar(
                args,
                total=update.total,
                unit="image",
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total_fmt} images [{elapsed}<{remaining}]",
            )
        if bar is not None:
            bar.set_description_str(update.message, refresh=False)
            bar.update(update.done - bar.n)

    client = cluster = None
    cluster_options: dict[str, Any] = {}
    if args.scheduler:
        from .core.scale.distributed import make_client

        client, cluster = make_client(args.scheduler)
        cluster_options = {"model_path": args.model, "backbone_path": args.backbone_path}
    try:
        report = segment_files(
            args.inputs,
            args.outdir,
            segmenter,
            config if client is not None else featurizer,
            suffix=f".{args.format}",
            overwrite=args.overwrite,
            uncertainty=args.uncertainty,
            progress=progress,
            client=client,
            channels=args.channels,
            **cluster_options,
        )
    except WeightsNotFoundError as err:
        if args.backbone_path:
            raise
        raise WeightsNotFoundError(
            f"{err} If the model's backbone weights are elsewhere on this computer, pass --backbone-path PATH."
        ) from err
    finally:
        if bar is not None:
            bar.close()
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    for path, reason in report.failed:
        print(f"{PROG}: failed: {path}: {' '.join(reason.split())}", file=sys.stderr)
    _say(args, report.summary("pass --overwrite to replace them"))
    return EXIT_FAILED_INPUTS if report.failed else EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
