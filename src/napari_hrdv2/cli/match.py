"""``napari-hrdv2 match``: optimal one-to-one matches of the patches of two images.

napari-hrdv2 match A B -o matches.csv [--png lines.png] [--top-k K] [--refine]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .common import EPILOG, EXIT_OK, check_output, encode_with_progress, say, status
from .options import SharedOptions, positive_int
from .settings import build_config, make_featurizer


def add_parser(commands: Any, shared: SharedOptions) -> None:
    """Register ``match`` on the main parser's subcommands."""
    match = commands.add_parser(
        "match",
        parents=[shared.feature, shared.runtime, shared.common],
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
    match.add_argument("--top-k", type=positive_int, metavar="K", help="keep only the K best matches")
    match.add_argument(
        "--refine", action="store_true", help="move matches to the most similar pixel near the matched patch"
    )
    match.add_argument("--lines", type=positive_int, default=100, metavar="N", help="lines drawn in --png (100)")
    match.add_argument("--overwrite", action="store_true", help="replace existing output files")
    match.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """``napari-hrdv2 match``."""
    from ..core.analysis.match import draw_matches, match_patches, matches_to_csv_text
    from ..core.errors import InputError
    from ..core.files.atomic import check_not_an_input, write_png, write_text
    from ..core.files.images import is_stack
    from ..core.files.lazy import read_input_image

    csv_path = check_output(args.output, (".csv",), "-o", args.overwrite)
    png_path = check_output(args.png, (".png",), "--png", args.overwrite) if args.png else None
    if png_path is not None and png_path.resolve() == csv_path.resolve():
        raise InputError("-o and --png must be different files.")
    for output, option in ((csv_path, "-o"), (png_path, "--png")):
        if output is not None:
            check_not_an_input(output, [args.image_a, args.image_b], option=option)
    images = []
    for path in (args.image_a, args.image_b):
        separate = getattr(args, "channel_mode", None) == "separate"
        image = read_input_image(path, channels=args.channels, separate=separate)
        if is_stack(image, separate=separate):
            raise InputError(f"'{Path(path).name}' is a stack of {len(image)} planes; match two single images.")
        images.append(image)
    featurizer = make_featurizer(args, build_config(args))
    names = [Path(path).name for path in (args.image_a, args.image_b)]
    encodings = [
        encode_with_progress(args, featurizer, image, f"{name} ({i + 1}/2)", with_attention=False)
        for i, (image, name) in enumerate(zip(images, names))
    ]
    with status(args, f"matching the patches of {names[0]} and {names[1]} (optimal assignment)"):
        matches = match_patches(encodings[0], encodings[1], top_k=args.top_k, refine=args.refine)
    write_text(csv_path, matches_to_csv_text(matches), overwrite=args.overwrite)
    written = [str(csv_path)]
    if png_path is not None:
        write_png(png_path, draw_matches(images[0], images[1], matches, max_lines=args.lines), overwrite=args.overwrite)
        written.append(str(png_path))
    mean = float(matches[:, 4].mean()) if len(matches) else float("nan")
    say(args, f"{len(matches)} matches (mean cosine similarity {mean:.3f}). Wrote {', '.join(written)}")
    return EXIT_OK
