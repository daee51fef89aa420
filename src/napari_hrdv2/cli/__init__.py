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

The package reads as the data flow of a run, each module importing only the ones above it here:

- :mod:`.common`: exit codes, messages, errors, progress bars, output checks;
- :mod:`.options`: argument types and the shared option groups (FeatureConfig options derived from
  its field metadata, :func:`napari_hrdv2.core.config.field_specs`);
- :mod:`.settings`: parsed options to a FeatureConfig and a Featurizer;
- one module per command, each with ``add_parser(commands, shared)`` and its ``run`` functions:
  :mod:`.features`, :mod:`.train`, :mod:`.segment`, :mod:`.pca` (``fit``, ``apply``), :mod:`.match`;
- :mod:`.parser`: the whole parser; :mod:`.entry`: :func:`main`.
"""

from __future__ import annotations

from .common import (
    EXIT_FAILED_INPUTS,
    EXIT_INTERRUPTED,
    EXIT_MODEL,
    EXIT_OK,
    EXIT_UNEXPECTED,
    EXIT_USAGE,
    EXIT_WEIGHTS,
    PROG,
    describe_error,
)
from .entry import main
from .options import OPTION_OF
from .parser import build_parser
from .settings import build_config, check_download, make_featurizer, model_runtime_config

__all__ = [
    "EXIT_FAILED_INPUTS",
    "EXIT_INTERRUPTED",
    "EXIT_MODEL",
    "EXIT_OK",
    "EXIT_UNEXPECTED",
    "EXIT_USAGE",
    "EXIT_WEIGHTS",
    "OPTION_OF",
    "PROG",
    "build_config",
    "build_parser",
    "check_download",
    "describe_error",
    "main",
    "make_featurizer",
    "model_runtime_config",
]
