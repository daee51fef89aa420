"""``napari-hrdv2 train``: a segmentation model (linear or MLP head) from images and brush labels."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .common import EPILOG, EXIT_OK, encode_with_progress, progress_callback, say, say_precision
from .options import SharedOptions, add_refine_options, add_spacing_option, positive_int
from .settings import build_config, make_featurizer

#: The classifier heads of ``--head`` and ``--hidden``'s default: copies of ``core.segmentation.heads.HEADS`` and
#: ``core.segmentation.mlp.DEFAULT_HIDDEN`` (a test keeps them equal), so that building the parser imports no model code.
HEADS = ("linear", "mlp")
DEFAULT_HIDDEN = 32


def add_parser(commands: Any, shared: SharedOptions) -> None:
    """Register ``train`` on the main parser's subcommands."""
    train = commands.add_parser(
        "train",
        parents=[shared.feature, shared.runtime, shared.common],
        help="train a segmentation model from images and brush labels",
        description="Train a segmentation model (a linear classifier, or a small MLP with --head mlp) on the labelled pixels of one or more images. Label images hold "
        "class values (1, 2, ...) and 0 for unlabelled pixels, one label file per image; a TIFF stack takes a "
        "label stack of as many planes (planes without labels are skipped). With --volume a stack (Z, Y, X) is a "
        "volume and its labels (Z, Y, X) may be painted on any plane.",
        epilog=EPILOG,
    )
    train.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    train.add_argument("--labels", nargs="+", required=True, metavar="LABELS", help="label images, one per IMAGE")
    train.add_argument("-o", "--output", required=True, metavar="MODEL", help="model file to write (.hrdv2)")
    train.add_argument("--overwrite", action="store_true", help="replace an existing model file")
    group = train.add_argument_group("classifier")
    group.add_argument(
        "--head",
        choices=HEADS,
        default="linear",
        help="classifier on the features: linear (logistic regression, default) or mlp (one hidden layer, "
        "computed as exactly and lightly: only its hidden channels are made at full resolution)",
    )
    group.add_argument(
        "--hidden", type=positive_int, metavar="N", help=f"hidden units of --head mlp (default {DEFAULT_HIDDEN})"
    )
    group.add_argument(
        "--hybrid", action="store_true", help="add classical multiscale filters (edges, texture...) to the features"
    )
    group.add_argument("--l2", type=float, default=1e-3, help="L2 penalty on the weights (default 1e-3)")
    group.add_argument("--max-iter", type=positive_int, default=100, help="L-BFGS iterations (default 100)")
    group.add_argument(
        "--majority-size", type=int, default=0, metavar="PX", help="clean-up of predictions: majority filter side"
    )
    group.add_argument(
        "--min-object-size", type=int, default=0, metavar="PX", help="clean-up: merge regions smaller than this"
    )
    add_refine_options(group)
    add_spacing_option(train)
    train.set_defaults(run=run)


def training_planes(
    images: Sequence[str], labels: Sequence[str], channels: Sequence[int] | None = None, *, separate: bool = False
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(description, plane, labels) for every labelled plane; checks shapes before any encoding.

    ``separate`` (``--channel-mode separate``): images keep all their channels (or the chosen ones).
    """
    from ..core.errors import InputError
    from ..core.files.images import is_stack
    from ..core.files.lazy import read_input_image, read_input_labels
    from ..core.segmentation.labels import check_labels

    if len(images) != len(labels):
        raise InputError(f"Got {len(images)} image(s) but {len(labels)} label file(s): give one label file per image.")
    pairs = []
    for image_path, labels_path in zip(images, labels):
        image = read_input_image(image_path, channels=channels, separate=separate)
        lab = read_input_labels(labels_path)
        iname, lname = Path(image_path).name, Path(labels_path).name
        if is_stack(image, separate=separate):
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
    check_two_classes(pairs)
    return pairs


def check_two_classes(pairs: Sequence[tuple[str, np.ndarray, np.ndarray]]) -> None:
    """Raise an InputError unless the labels hold at least two classes (values > 0)."""
    from ..core.errors import InputError

    classes = np.unique(np.concatenate([np.unique(lab) for _, _, lab in pairs])) if pairs else np.array([], int)
    classes = classes[classes > 0]
    if classes.size == 0:
        raise InputError("No pixels are labelled: the label images must hold class values 1, 2, ... (0 = unlabelled).")
    if classes.size == 1:
        raise InputError(f"Only one class (value {classes[0]}) is labelled: label pixels of at least two classes.")


def train_volumes(args: argparse.Namespace, segmenter: Any, config: Any) -> int:
    """``--volume``: train on the labelled voxels of volumes (Z, Y, X[, C]); returns the labelled XY planes."""
    from ..core.errors import InputError
    from ..core.features.cache import EncodingCache
    from ..core.features.volume import VolumeEncoder
    from ..core.files.lazy import read_input_image, read_input_labels
    from ..core.progress import run_steps
    from ..core.segmentation.volume import iter_fit_volume

    if len(args.images) != len(args.labels):
        raise InputError(
            f"Got {len(args.images)} volume(s) but {len(args.labels)} label file(s): give one label file per volume."
        )
    featurizer = make_featurizer(args, config.replace(volume=False))
    say_precision(args, featurizer)
    cache = EncodingCache()
    encoders, labels = [], []
    for image_path, labels_path in zip(args.images, args.labels):
        encoders.append(
            VolumeEncoder(read_input_image(image_path, channels=args.channels), featurizer, spacing=args.spacing,
                          cache=cache)
        )  # fmt: skip
        labels.append(read_input_labels(labels_path))
    show, close = progress_callback(args, "plane")
    try:
        run_steps(iter_fit_volume(segmenter, encoders, labels), progress=show)
    finally:
        close()
    return sum(int(lab.reshape(len(lab), -1).any(axis=1).sum()) for lab in labels)


def run(args: argparse.Namespace) -> int:
    """``napari-hrdv2 train``."""
    from ..core.errors import InputError
    from ..core.files.atomic import check_not_an_input, check_output_folder
    from ..core.files.paths import check_path
    from ..core.runtime.devices import inference_mode
    from ..core.segmentation.heads import new_segmenter

    output = check_path(args.output, "model file")
    check_not_an_input(output, [*args.images, *args.labels])
    if output.is_dir():
        raise InputError(f"'{output}' is a folder; give a model file name such as model.hrdv2.")
    if output.exists() and not args.overwrite:
        raise InputError(f"'{output}' already exists; pass --overwrite to replace it.")
    check_output_folder(output.parent)
    refine = {"refine": args.refine} if args.refine is not None else {}
    if args.refine_option:
        refine["refine_options"] = dict(args.refine_option)
    head_options = {}
    if args.hidden is not None:
        if args.head != "mlp":
            raise InputError("--hidden sets the hidden units of an MLP: add --head mlp, or leave --hidden out.")
        head_options["hidden"] = args.hidden
    segmenter = new_segmenter(
        args.head,
        hybrid=args.hybrid,
        l2=args.l2,
        max_iter=args.max_iter,
        majority_size=args.majority_size,
        min_object_size=args.min_object_size,
        **refine,
        **head_options,
    )
    config = build_config(args)
    if config.volume:
        n_planes = train_volumes(args, segmenter, config)
    else:
        pairs = training_planes(args.images, args.labels, args.channels, separate=config.channel_mode == "separate")
        featurizer = make_featurizer(args, config)
        say_precision(args, featurizer)
        encodings = []
        with inference_mode():
            for i, (desc, plane, _) in enumerate(pairs):
                desc = f"{desc} ({i + 1}/{len(pairs)})"
                encodings.append(encode_with_progress(args, featurizer, plane, desc, with_attention=False))
        # Outside inference mode: the optimiser needs autograd.
        segmenter.fit(encodings, [lab for _, _, lab in pairs])
        n_planes = len(pairs)
    segmenter.channels = args.channels  # segment reads its inputs with the same channels
    segmenter.save(output, overwrite=args.overwrite)
    summary = segmenter.summary_
    counts = ", ".join(f"{value}: {count}" for value, count in summary.pixels_per_class.items())
    say(
        args,
        f"Trained {'an MLP' if args.head == 'mlp' else 'a linear'} model on {n_planes} labelled plane(s), "
        f"pixels per class {{{counts}}}, training accuracy {summary.training_accuracy:.3f}, "
        f"refinement {segmenter.refine_settings.describe()}. Wrote {output}",
    )
    return EXIT_OK
