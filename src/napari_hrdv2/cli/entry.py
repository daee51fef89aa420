"""``main``: parse, run the command, turn every error into one line and an exit code."""

from __future__ import annotations

from collections.abc import Sequence

from .common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    describe_error,
    library_progress_bars,
    one_line_warnings,
    print_error,
    progress_enabled,
)
from .parser import build_parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (also when called in-process)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, usage errors
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else EXIT_USAGE)
    try:
        with library_progress_bars(progress_enabled(args)), one_line_warnings():
            return int(args.run(args) or EXIT_OK)
    except KeyboardInterrupt:
        print_error(args, "interrupted.", show_traceback=False)
        return EXIT_INTERRUPTED
    except Exception as err:  # every exit path prints one line (--debug adds the traceback)
        code, message = describe_error(err)
        print_error(args, message)
        return code
