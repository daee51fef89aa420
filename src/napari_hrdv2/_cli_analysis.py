"""The ``pca`` and ``match`` subcommands of ``napari-hrdv2`` (registered by :func:`cli.build_parser`).

    napari-hrdv2 pca fit INPUTS... -o basis.safetensors [--foreground] [--components N]
    napari-hrdv2 pca apply INPUTS... --basis basis.safetensors -o OUTDIR [--show 0,1,2] [--side-by-side]
    napari-hrdv2 match A B -o matches.csv [--png lines.png] [--top-k K] [--refine]

Like the other subcommands, torch is imported only when a command runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

BASIS_SUFFIXES = (".safetensors",)


def _components_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.replace(";", ",").split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected component numbers like 0,1,2 or 3, got {text!r}") from None
    if len(values) not in (1, 3) or min(values) < 0:
        raise argparse.ArgumentTypeError(f"give three components (R,G,B) or one (grey), 0-based; got {text!r}")
    return values


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must lie strictly between 0 and 1, got {value}")
    return value


def add_commands(
    commands: Any,
    *,
    feature: argparse.ArgumentParser,
    runtime: argparse.ArgumentParser,
    common: argparse.ArgumentParser,
) -> None:
    """Register ``pca fit``, ``pca apply`` and ``match`` on the main parser's subcommands."""
    from .cli import EPILOG, _channel_list, _positive_int

    pca = commands.add_parser(
        "pca",
        help="fit a PCA colour basis over many images, save it, apply it with the same colours everywhere",
        description="PCA views with one colour basis for a whole dataset: 'pca fit' samples random pixels of "
        "every input (memory does not grow with the number of images) and saves the basis; 'pca apply' "
        "colours images, stacks and folders with it (fixed colour range: no flicker along a stack).",
        epilog=EPILOG,
    )
    actions = pca.add_subparsers(dest="pca_command", metavar="ACTION", required=True)
    fit = actions.add_parser(
        "fit",
        parents=[feature, runtime, common],
        help="fit a PCA basis over images, stacks and folders",
        description="Fit a PCA basis on random pixels of every plane of INPUTS (image files, TIFF stacks, "
        "folders) and save it as a .safetensors file with its metadata (backbone, feature settings, "
        "explained variance, images and pixels used, date).",
        epilog=EPILOG,
    )
    fit.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, TIFF stacks and/or folders")
    fit.add_argument("-o", "--output", required=True, metavar="BASIS", help="basis file to write (.safetensors)")
    fit.add_argument("--components", type=_positive_int, default=3, metavar="N", help="components kept (default 3)")
    fit.add_argument(
        "--foreground",
        action="store_true",
        help="two-step PCA on the foreground only (Otsu threshold on PC1; foreground = the side touching the "
        "image border less); applied views show the background black",
    )
    fit.add_argument(
        "--foreground-cue",
        choices=("pca", "attention"),
        default="pca",
        help="split foreground and background on PC1 (default) or on the CLS attention map",
    )
    fit.add_argument(
        "--threshold", type=_fraction, metavar="F", help="manual PC1 threshold, a fraction of its colour range"
    )
    fit.add_argument("--invert-foreground", action="store_true", help="take the other side as foreground")
    fit.add_argument(
        "--pixels-per-image", type=_positive_int, default=20_000, metavar="N", help="random pixels per plane"
    )
    fit.add_argument(
        "--max-pixels",
        type=_positive_int,
        default=100_000,
        metavar="N",
        help="most pixels kept over all inputs (bounds the memory; default 100000)",
    )
    fit.add_argument("--seed", type=int, default=0, help="random seed of the pixel sampling")
    fit.add_argument("--overwrite", action="store_true", help="replace an existing basis file")
    fit.set_defaults(run=run_pca_fit)

    apply = actions.add_parser(
        "apply",
        parents=[runtime, common],
        help="colour images, stacks and folders with a saved PCA basis",
        description="Write <stem>_pca.png per image and a multi-page RGB <stem>_pca.tif per stack, coloured "
        "with the basis' fixed colour range. Features are computed with the basis' own settings; "
        "--device, --dtype, --tile-size... only change how. Existing outputs are skipped unless --overwrite.",
        epilog=EPILOG,
    )
    apply.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, TIFF stacks and/or folders")
    apply.add_argument("--basis", required=True, metavar="BASIS", help="basis file written by 'pca fit'")
    apply.add_argument("-o", "--outdir", required=True, metavar="OUTDIR", help="folder for the PCA images")
    apply.add_argument(
        "--show",
        type=_components_list,
        default=(0, 1, 2),
        metavar="LIST",
        help="components as R,G,B (default 0,1,2; e.g. 3,4,5) or one component as grey (e.g. 0)",
    )
    apply.add_argument("--side-by-side", action="store_true", help="write input | PCA side by side")
    apply.add_argument(
        "--channels",
        type=_channel_list,
        metavar="I[,J[,K]]",
        help="channels of multichannel images to use, 0-based (as given to 'pca fit')",
    )
    apply.add_argument("--overwrite", action="store_true", help="replace existing outputs instead of skipping")
    apply.set_defaults(run=run_pca_apply)

    match = commands.add_parser(
        "match",
        parents=[feature, runtime, common],
        help="match the patches of two images (optimal one-to-one assignment on HR features)",
        description="Match every patch of the smaller image one-to-one to a patch of the larger one by linear "
        "assignment on the cosine similarity of HR-Dv2 features; write a CSV with the header "
        "row_a,col_a,row_b,col_b,score (pixel coordinates of A and B) sorted by score.",
        epilog=EPILOG,
    )
    match.add_argument("image_a", metavar="A", help="first image")
    match.add_argument("image_b", metavar="B", help="second image")
    match.add_argument("-o", "--output", required=True, metavar="CSV", help="match table to write (.csv)")
    match.add_argument("--png", metavar="PNG", help="also draw A | B with the match lines (best --lines)")
    match.add_argument("--top-k", type=_positive_int, metavar="K", help="keep only the K best matches")
    match.add_argument(
        "--refine", action="store_true", help="move matches to the most similar pixel near the matched patch"
    )
    match.add_argument("--lines", type=_positive_int, default=100, metavar="N", help="lines drawn in --png (100)")
    match.add_argument("--overwrite", action="store_true", help="replace existing output files")
    match.set_defaults(run=run_match)


# ---------------------------------------------------------------------------------------------- pca fit
def _bar_progress(args: argparse.Namespace, unit: str) -> tuple[Any, Any]:
    from .cli import _progress_bar

    state: dict[str, Any] = {"bar": None}

    def show(update: Any) -> None:
        if state["bar"] is None:
            state["bar"] = _progress_bar(args, total=update.total or None, unit=unit)
        bar = state["bar"]
        if update.total and bar.total != update.total:
            bar.total = update.total
        bar.set_description_str(update.message, refresh=False)
        bar.update(update.done - bar.n)

    def close() -> None:
        if state["bar"] is not None:
            state["bar"].close()

    return show, close


def run_pca_fit(args: argparse.Namespace) -> int:
    """``napari-hrdv2 pca fit``."""
    from .cli import EXIT_OK, _check_output, _say, build_config, make_featurizer
    from .core.analysis.pca import fit_pca
    from .core.files.images import expand_inputs

    output = _check_output(args.output, BASIS_SUFFIXES, "-o", args.overwrite)
    paths = expand_inputs(args.inputs)
    from .core.errors import InputError

    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise InputError(f"Input file(s) not found: {', '.join(missing[:3])}{'...' if len(missing) > 3 else ''}.")
    if not paths:
        raise InputError("No input images found.")
    featurizer = make_featurizer(args, build_config(args))
    show, close = _bar_progress(args, "image")
    try:
        basis = fit_pca(
            [str(p) for p in paths],
            n_components=args.components,
            featurizer=featurizer,
            foreground=args.foreground,
            foreground_cue=args.foreground_cue,
            foreground_threshold=args.threshold,
            invert_foreground=args.invert_foreground,
            n_pixels=args.pixels_per_image,
            max_pixels=args.max_pixels,
            seed=args.seed,
            progress=show,
            channels=args.channels,
        )
    finally:
        close()
    basis.save(output, overwrite=args.overwrite)
    _say(args, f"{basis.describe()} Wrote {output}")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------- pca apply
def run_pca_apply(args: argparse.Namespace) -> int:
    """``napari-hrdv2 pca apply``."""
    from .cli import EXIT_FAILED_INPUTS, EXIT_OK, PROG, _say, make_featurizer
    from .core.analysis.basis_files import iter_apply_pca_files
    from .core.analysis.pca import PCABasis
    from .core.config import RUNTIME_FIELDS, FeatureConfig
    from .core.errors import InputError
    from .core.files.atomic import check_output_folder
    from .core.progress import run_steps

    basis = PCABasis.load(args.basis)
    saved = basis.metadata.get("config")
    if not saved:
        raise InputError(f"'{args.basis}' does not record its feature settings (fitted on bare arrays).")
    runtime: dict[str, Any] = {"device": "auto", "dtype": "auto", "storage_dtype": "auto"}
    for name in RUNTIME_FIELDS:
        value = getattr(args, "sha256" if name == "weights_sha256" else name, None)
        if value is not None:
            runtime[name] = None if value == "none" else value
    config = FeatureConfig.from_dict(saved).replace(**runtime)
    featurizer = make_featurizer(args, config, backbone_path=args.backbone)  # --backbone: where it is here
    check_output_folder(args.outdir)
    show, close = _bar_progress(args, "image")
    try:
        steps = iter_apply_pca_files(
            args.inputs,
            args.outdir,
            basis,
            featurizer,
            components=args.show,
            side_by_side=args.side_by_side,
            overwrite=args.overwrite,
            channels=args.channels,
        )
        report = run_steps(steps, progress=show)
    finally:
        close()
    for path, reason in report.failed:
        print(f"{PROG}: failed: {path}: {' '.join(reason.split())}", file=sys.stderr)
    text = f"Wrote {len(report.written)} PCA image(s) to {args.outdir}"
    if report.skipped:
        text += f", skipped {len(report.skipped)} existing (pass --overwrite to replace them)"
    if report.failed:
        text += f", {len(report.failed)} failed"
    _say(args, text + ".")
    return EXIT_FAILED_INPUTS if report.failed else EXIT_OK


# ---------------------------------------------------------------------------------------------- match
def run_match(args: argparse.Namespace) -> int:
    """``napari-hrdv2 match``."""
    from .cli import EXIT_OK, _check_output, _encode, _say, build_config, make_featurizer
    from .core.analysis.match import draw_matches, match_patches, matches_to_csv_text
    from .core.errors import InputError
    from .core.files.atomic import write_png, write_text
    from .core.files.images import is_stack, read_image

    csv_path = _check_output(args.output, (".csv",), "-o", args.overwrite)
    png_path = _check_output(args.png, (".png",), "--png", args.overwrite) if args.png else None
    if png_path is not None and png_path.resolve() == csv_path.resolve():
        raise InputError("-o and --png must be different files.")
    images = []
    for path in (args.image_a, args.image_b):
        image = read_image(path, channels=args.channels)
        if is_stack(image):
            raise InputError(f"'{Path(path).name}' is a stack of {len(image)} planes; match two single images.")
        images.append(image)
    featurizer = make_featurizer(args, build_config(args))
    encodings = [
        _encode(args, featurizer, image, Path(path).name, with_attention=False)
        for image, path in zip(images, (args.image_a, args.image_b))
    ]
    matches = match_patches(encodings[0], encodings[1], top_k=args.top_k, refine=args.refine)
    write_text(csv_path, matches_to_csv_text(matches), overwrite=args.overwrite)
    written = [str(csv_path)]
    if png_path is not None:
        write_png(png_path, draw_matches(images[0], images[1], matches, max_lines=args.lines), overwrite=args.overwrite)
        written.append(str(png_path))
    mean = float(matches[:, 4].mean()) if len(matches) else float("nan")
    _say(args, f"{len(matches)} matches (mean cosine similarity {mean:.3f}). Wrote {', '.join(written)}")
    return EXIT_OK
