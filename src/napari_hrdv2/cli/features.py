"""``napari-hrdv2 features``: the (C, H, W) HR-Dv2 features of an image, its PCA-RGB view and attention maps."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .common import EPILOG, EXIT_OK, check_folders, check_output, encode_with_progress, say, say_precision
from .options import SharedOptions
from .settings import build_config, make_featurizer

if TYPE_CHECKING:  # pragma: no cover
    from ..core.features.encoding import Encoding
    from ..core.files.atomic import ArrayStreamWriter


def add_parser(commands: Any, shared: SharedOptions) -> None:
    """Register ``features`` on the main parser's subcommands."""
    features = commands.add_parser(
        "features",
        parents=[shared.feature, shared.runtime, shared.common],
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
    features.set_defaults(run=run)


def check_outputs(args: argparse.Namespace) -> None:
    """At least one output; suffixes, overwriting, distinct files, none of them the input."""
    from ..core.errors import InputError
    from ..core.files.atomic import check_not_an_input

    if not (args.output or args.pca or args.attention):
        raise InputError("Nothing to write: give -o features.npy, --pca pca.png and/or --attention attention.tif.")
    outputs = [
        check_output(path, suffixes, option, args.overwrite)
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


def read_planes(args: argparse.Namespace) -> tuple[list[np.ndarray], bool]:
    """The planes to encode (one unless a whole stack) and whether the outputs are stacks."""
    from ..core.errors import InputError
    from ..core.files.images import is_stack
    from ..core.files.lazy import read_input_image

    separate = getattr(args, "channel_mode", None) == "separate"
    image = read_input_image(args.image, channels=args.channels, separate=separate)
    name = Path(args.image).name
    stack = is_stack(image, separate=separate)
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
    return planes, stack


def bytes_needed(args: argparse.Namespace, planes: list[np.ndarray], embed_dim: int, num_heads: int) -> dict[Any, int]:
    """Bytes each output takes (a .tif is converted from a staged .npy: both exist for a moment)."""
    height, width = planes[0].shape[:2]
    item = np.dtype(args.dtype_out).itemsize
    if getattr(args, "channel_mode", None) == "separate":  # one block of features per image channel
        embed_dim *= planes[0].shape[2] if planes[0].ndim == 3 else 1

    def staged(path: str | None) -> int:
        return 2 if path and Path(path).suffix.lower() in (".tif", ".tiff") else 1

    return {
        args.output: len(planes) * embed_dim * height * width * item * staged(args.output),
        args.pca: len(planes) * 3 * height * width,
        args.attention: len(planes) * num_heads * height * width * 4 * staged(args.attention),
    }


def run(args: argparse.Namespace) -> int:
    """``napari-hrdv2 features``."""
    from ..core.analysis.pca import fit_pca, pca_rgb
    from ..core.files.atomic import ArrayStreamWriter
    from ..core.runtime.devices import inference_mode

    check_outputs(args)
    planes, stack = read_planes(args)
    name = Path(args.image).name
    featurizer = make_featurizer(args, build_config(args))
    backbone = featurizer.backbone
    say_precision(args, featurizer)
    height, width = planes[0].shape[:2]
    lead = (len(planes),) if stack else ()
    # Before any encoding: writable, and room for the (uncompressed) arrays.
    check_folders(bytes_needed(args, planes, int(backbone.embed_dim), int(backbone.num_heads)))
    feature_file = attention_file = None
    pca_planes: list[np.ndarray] = []
    basis = None
    written: list[tuple[str, Path, tuple[int, ...], str]] = []  # (what, path, shape, dtype)
    try:
        with inference_mode():
            for index, plane in enumerate(planes):
                desc = f"{name} plane {index + 1}/{len(planes)}" if stack else name
                encoding = encode_with_progress(args, featurizer, plane, desc, with_attention=bool(args.attention))
                if args.output:
                    if feature_file is None:
                        shape = (*lead, encoding.n_features, height, width)
                        feature_file = ArrayStreamWriter(args.output, shape, args.dtype_out, overwrite=args.overwrite)
                    write_features(encoding, feature_file)
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
            written.append(("PCA-RGB", write_rgb(Path(args.pca), rgb, args.overwrite), rgb.shape, "uint8"))
    finally:  # nothing half-written: temporary files of outputs not committed are deleted
        for handle in (feature_file, attention_file):
            if handle is not None and not handle.committed:
                handle.abort()
    for what, path, shape, dtype in written:
        say(args, f"Wrote {what} {path}: {shape} {dtype}")
    return EXIT_OK


def write_features(encoding: Encoding, out: ArrayStreamWriter) -> None:
    """Append the (C, H, W) features to ``out``, a block of channels at a time (bounded memory)."""
    n_features = encoding.n_features
    height, width = encoding.shape
    block = max(1, min(n_features, (1 << 25) // max(height * width, 1)))
    for start in range(0, n_features, block):
        stop = min(start + block, n_features)
        out.write(encoding.features(channels=slice(start, stop)))


def write_rgb(path: Path, rgb: np.ndarray, overwrite: bool) -> Path:
    """Write an 8-bit RGB view (or a stack of them) as .png or a zlib-compressed RGB .tif."""
    from ..core.files.atomic import write_png, write_tif

    if path.suffix.lower() == ".png":
        return write_png(path, rgb, overwrite=overwrite)
    return write_tif(path, rgb, photometric="rgb", compression="zlib", overwrite=overwrite)
