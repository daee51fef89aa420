"""``napari-hrdv2 segment``: label images of images, stacks and folders with a trained model."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .common import (
    EPILOG,
    EXIT_FAILED_INPUTS,
    EXIT_OK,
    print_failures,
    progress_callback,
    say,
    say_precision,
)
from .options import SharedOptions, add_spacing_option
from .settings import make_featurizer, model_runtime_config


def add_parser(commands: Any, shared: SharedOptions) -> None:
    """Register ``segment`` on the main parser's subcommands."""
    segment = commands.add_parser(
        "segment",
        parents=[shared.feature, shared.runtime, shared.common],
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
    add_spacing_option(segment)
    segment.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """``napari-hrdv2 segment``."""
    from ..core.errors import InputError, ModelFileError, WeightsNotFoundError
    from ..core.files.paths import check_input_file, check_path
    from ..core.scale.batch import segment_files
    from ..core.segmentation.heads import load_segmenter

    check_input_file(args.model, "Model file", error=ModelFileError)  # not a folder, FIFO or symlink loop
    if args.scheduler:
        from ..core.scale.distributed import parse_scheduler

        parse_scheduler(args.scheduler)  # a wrong address is refused before the model is loaded
    segmenter = load_segmenter(args.model)
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
    say_precision(args, featurizer)
    if args.outdir and check_path(args.outdir, "output folder").exists() and not Path(args.outdir).is_dir():
        raise InputError(f"-o '{args.outdir}' is a file; give a folder for the label images.")
    show, close = progress_callback(args, "image")  # done of total input files
    client = cluster = None
    cluster_options: dict[str, Any] = {}
    if args.scheduler:
        from ..core.scale.distributed import make_client

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
            progress=show,
            client=client,
            channels=args.channels,
            spacing=args.spacing,
            **cluster_options,
        )
    except WeightsNotFoundError as err:
        if args.backbone_path:
            raise
        raise WeightsNotFoundError(
            f"{err} If the model's backbone weights are elsewhere on this computer, pass --backbone-path PATH."
        ) from err
    finally:
        close()
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    print_failures(report.failed)
    say(args, report.summary("pass --overwrite to replace them"))
    return EXIT_FAILED_INPUTS if report.failed else EXIT_OK
