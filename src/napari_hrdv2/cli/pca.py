"""``napari-hrdv2 pca fit`` and ``pca apply``: one PCA colour basis for a whole dataset.

napari-hrdv2 pca fit INPUTS... -o basis.safetensors [--foreground] [--components N]
napari-hrdv2 pca apply INPUTS... --basis basis.safetensors -o OUTDIR [--show 0,1,2] [--side-by-side]
"""

from __future__ import annotations

import argparse
from typing import Any

from .common import EPILOG, EXIT_FAILED_INPUTS, EXIT_OK, check_output, print_failures, progress_callback, say
from .options import SharedOptions, channel_list, components_list, fraction, positive_int
from .settings import build_config, make_featurizer, runtime_config

BASIS_SUFFIXES = (".safetensors",)


def add_parser(commands: Any, shared: SharedOptions) -> None:
    """Register ``pca`` with its actions ``fit`` and ``apply`` on the main parser's subcommands."""
    pca = commands.add_parser(
        "pca",
        help="fit a PCA colour basis over many images, save it, apply it with the same colours everywhere",
        description="PCA views with one colour basis for a whole dataset: 'pca fit' samples random pixels of "
        "every input (memory does not grow with the number of images) and saves the basis; 'pca apply' "
        "colours images, stacks and folders with it (fixed colour range: no flicker along a stack).",
        epilog=EPILOG,
    )
    actions = pca.add_subparsers(dest="pca_command", metavar="ACTION", required=True)
    add_fit_parser(actions, shared)
    add_apply_parser(actions, shared)


def add_fit_parser(actions: Any, shared: SharedOptions) -> None:
    """Register ``pca fit``."""
    fit = actions.add_parser(
        "fit",
        parents=[shared.feature, shared.runtime, shared.common],
        help="fit a PCA basis over images, stacks and folders",
        description="Fit a PCA basis on random pixels of every plane of INPUTS (image files, TIFF stacks, "
        "folders) and save it as a .safetensors file with its metadata (backbone, feature settings, "
        "explained variance, images and pixels used, date).",
        epilog=EPILOG,
    )
    fit.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, TIFF stacks and/or folders")
    fit.add_argument("-o", "--output", required=True, metavar="BASIS", help="basis file to write (.safetensors)")
    fit.add_argument("--components", type=positive_int, default=3, metavar="N", help="components kept (default 3)")
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
        "--threshold", type=fraction, metavar="F", help="manual PC1 threshold, a fraction of its colour range"
    )
    fit.add_argument("--invert-foreground", action="store_true", help="take the other side as foreground")
    fit.add_argument(
        "--pixels-per-image", type=positive_int, default=20_000, metavar="N", help="random pixels per plane"
    )
    fit.add_argument(
        "--max-pixels",
        type=positive_int,
        default=100_000,
        metavar="N",
        help="most pixels kept over all inputs (bounds the memory; default 100000)",
    )
    fit.add_argument("--seed", type=int, default=0, help="random seed of the pixel sampling")
    fit.add_argument("--overwrite", action="store_true", help="replace an existing basis file")
    fit.set_defaults(run=run_fit)


def add_apply_parser(actions: Any, shared: SharedOptions) -> None:
    """Register ``pca apply``."""
    apply = actions.add_parser(
        "apply",
        parents=[shared.runtime, shared.common],
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
        type=components_list,
        default=(0, 1, 2),
        metavar="LIST",
        help="components as R,G,B (default 0,1,2; e.g. 3,4,5) or one component as grey (e.g. 0)",
    )
    apply.add_argument("--side-by-side", action="store_true", help="write input | PCA side by side")
    apply.add_argument(
        "--channels",
        type=channel_list,
        metavar="I[,J[,K]]",
        help="channels of multichannel images to use, 0-based (as given to 'pca fit')",
    )
    apply.add_argument("--overwrite", action="store_true", help="replace existing outputs instead of skipping")
    apply.set_defaults(run=run_apply)


def run_fit(args: argparse.Namespace) -> int:
    """``napari-hrdv2 pca fit``."""
    from ..core.analysis.pca import fit_pca
    from ..core.errors import InputError
    from ..core.files.atomic import check_not_an_input
    from ..core.files.images import expand_inputs

    output = check_output(args.output, BASIS_SUFFIXES, "-o", args.overwrite)
    paths = expand_inputs(args.inputs)
    check_not_an_input(output, paths)
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise InputError(f"Input file(s) not found: {', '.join(missing[:3])}{'...' if len(missing) > 3 else ''}.")
    if not paths:
        raise InputError("No input images found.")
    featurizer = make_featurizer(args, build_config(args))
    show, close = progress_callback(args, "image")
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
    say(args, f"{basis.describe()} Wrote {output}")
    return EXIT_OK


def run_apply(args: argparse.Namespace) -> int:
    """``napari-hrdv2 pca apply``."""
    from ..core.analysis.basis_files import iter_apply_pca_files
    from ..core.analysis.pca import PCABasis
    from ..core.config import FeatureConfig
    from ..core.errors import InputError
    from ..core.files.atomic import check_output_folder
    from ..core.files.paths import check_input_file
    from ..core.progress import run_steps

    check_input_file(args.basis, "PCA basis file")  # not a folder, FIFO or symlink loop
    basis = PCABasis.load(args.basis)
    saved = basis.metadata.get("config")
    if not saved:
        raise InputError(f"'{args.basis}' does not record its feature settings (fitted on bare arrays).")
    config = runtime_config(args, FeatureConfig.from_dict(saved))
    featurizer = make_featurizer(args, config, backbone_path=args.backbone)  # --backbone: where it is here
    check_output_folder(args.outdir)
    show, close = progress_callback(args, "image")
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
    print_failures(report.failed)
    text = f"Wrote {len(report.written)} PCA image(s) to {args.outdir}"
    if report.skipped:
        text += f", skipped {len(report.skipped)} existing (pass --overwrite to replace them)"
    if report.failed:
        text += f", {len(report.failed)} failed"
    say(args, text + ".")
    return EXIT_FAILED_INPUTS if report.failed else EXIT_OK
