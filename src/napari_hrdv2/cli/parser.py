"""The ``napari-hrdv2`` argument parser: the shared option groups, then one subcommand per module."""

from __future__ import annotations

import argparse

from .. import __version__
from . import features, match, pca, segment, train
from .common import EPILOG, PROG
from .options import SharedOptions

#: The command modules, in the order ``--help`` lists them; each has ``add_parser(commands, shared)``.
COMMANDS = (features, train, segment, pca, match)


def build_parser() -> argparse.ArgumentParser:
    """The ``napari-hrdv2`` argument parser (``features``, ``train``, ``segment``, ``pca fit|apply``, ``match``).

    Every command's parser sets ``run``: the function that runs it with the parsed arguments.
    """
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Pixel-resolution DINOv2 (HR-Dv2) features and weakly supervised segmentation.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--debug", action="store_true", default=False, help="show tracebacks of errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    shared = SharedOptions.create()
    for command in COMMANDS:
        command.add_parser(commands, shared)
    return parser
