"""Argument types and the option groups several commands share.

The FeatureConfig options (``--backbone``, ``--shifts``, ``--tile-size``...) are derived from the field
metadata of :class:`~napari_hrdv2.core.config.FeatureConfig` (:func:`~napari_hrdv2.core.config.field_specs`):
their names, help, choices and value checks are declared there once.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..core.backbone.registry import backbone_names

# Torch-free (read before any heavy import, so --help stays instant).
from ..core.config import PRESETS, FieldSpec, field_specs

#: What an optional integer option returns for "none" / "0" (``None`` already means "not given").
NONE = "none"

#: Command-line option of every FeatureConfig field.
OPTION_OF: dict[str, str] = {spec.name: spec.flag for spec in field_specs()}


# ---------------------------------------------------------------------------------------------- types
def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``minimum``."""
    positive = minimum == 1

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            expected = "a positive integer" if positive else "an integer"
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if value < minimum:
            rule = "be a positive integer" if positive else f"be at least {minimum}"
            raise argparse.ArgumentTypeError(f"must {rule}, got {value}")
        return value

    return parse


#: An integer >= 1.
positive_int = int_at_least(1)


def none_or_int(minimum: int) -> Callable[[str], int | str]:
    """An argparse type: an int >= ``minimum``, or "none" / "0" meaning "no value" (returned as :data:`NONE`)."""

    def parse(text: str) -> int | str:
        if text.strip().lower() in (NONE, "0"):
            return NONE
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer or 'none', got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum} (or 'none'), got {value}")
        return value

    return parse


def channel_list(text: str) -> tuple[int, ...]:
    """An argparse type: channels of a multichannel image, ``"0,2"`` -> ``(0, 2)``."""
    from ..core.errors import InputError
    from ..core.files.images import parse_channels

    try:
        channels = parse_channels(text, at_most=None)  # the joint mode refuses more than 3 when reading
    except InputError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    assert channels is not None
    return channels


def refine_option(text: str) -> tuple[str, float]:
    """An argparse type: ``NAME=VALUE`` of a refinement option (``--refine-option radius=4``)."""
    name, sep, value = text.partition("=")
    try:
        number = float(value)
    except ValueError:
        number = None
    if not sep or not name.strip() or number is None:
        raise argparse.ArgumentTypeError(f"expected NAME=NUMBER (e.g. radius=4 or eps=0.001), got {text!r}")
    return name.strip().replace("-", "_"), int(number) if number.is_integer() else number


def add_refine_options(group: Any) -> None:
    """``--refine`` and ``--refine-option`` (the refinement of the class probabilities saved with a model)."""
    group.add_argument(
        "--refine",
        choices=("none", "crf", "guided"),
        default=None,
        help="edge-aware refinement of the class probabilities, saved in the model and used by 'segment': "
        "a local dense CRF, a guided filter, or none (default: the library's default)",
    )
    group.add_argument(
        "--refine-option",
        type=refine_option,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an option of the refinement, repeatable: crf iterations, radius, spatial_sigma, intensity_sigma, "
        "weight; guided radius, eps (default: the method's defaults)",
    )


def components_list(text: str) -> tuple[int, ...]:
    """An argparse type: three PCA components (R,G,B) or one (grey), 0-based."""
    try:
        values = tuple(int(part) for part in text.replace(";", ",").split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected component numbers like 0,1,2 or 3, got {text!r}") from None
    if len(values) not in (1, 3) or min(values) < 0:
        raise argparse.ArgumentTypeError(f"give three components (R,G,B) or one (grey), 0-based; got {text!r}")
    return values


def fraction(text: str) -> float:
    """An argparse type: a number strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must lie strictly between 0 and 1, got {value}")
    return value


# ---------------------------------------------------------------------------------------------- FeatureConfig options
def option_arguments(spec: FieldSpec) -> dict[str, Any]:
    """``add_argument`` keywords of a FeatureConfig field's option; the value lands in ``args.<field name>``."""
    kwargs: dict[str, Any] = {"dest": spec.name, "help": spec.help}
    if spec.metavar:
        kwargs["metavar"] = spec.metavar
    if spec.kind == "backbone":
        kwargs["help"] = f"{spec.help}; presets: {', '.join(backbone_names())}"
    elif spec.kind == "choice":
        kwargs["choices"] = spec.choices
    elif spec.kind == "bool":
        kwargs.update(action=argparse.BooleanOptionalAction, default=None)
    elif spec.kind == "int":
        kwargs["type"] = int if spec.minimum is None else int_at_least(spec.minimum)
    elif spec.kind == "optional_int":
        kwargs["type"] = none_or_int(spec.minimum if spec.minimum is not None else 1)
    elif spec.kind == "int_list":
        kwargs.update(type=int_at_least(spec.minimum if spec.minimum is not None else 1), nargs="+")
    return kwargs


def add_field_options(group: Any, sections: tuple[str, ...]) -> None:
    """Add the option of every FeatureConfig field of ``sections`` (in field order) to ``group``."""
    for spec in field_specs():
        if spec.section in sections:
            group.add_argument(spec.flag, **option_arguments(spec))


# ---------------------------------------------------------------------------------------------- shared groups
def common_options() -> argparse.ArgumentParser:
    """Output and messages: ``--progress``, ``--quiet``, ``--debug``, ``--verbose``."""
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


def runtime_options() -> argparse.ArgumentParser:
    """Backbone and computation: ``--backbone``, the runtime fields, ``--allow-download``."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("backbone and computation")
    add_field_options(group, ("backbone", "computation"))
    group.add_argument(
        "--allow-download",
        action="store_true",
        help="let a backbone that is not on this computer (a preset or Hugging Face id not in the local Hugging "
        "Face cache) be downloaded from the Hugging Face Hub; never done without this option",
    )
    return parent


def feature_options() -> argparse.ArgumentParser:
    """Features (``--preset`` and the feature-defining fields) and ``--channels``."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("features (default: the 'balanced' preset)")
    group.add_argument("--preset", choices=tuple(PRESETS), help="speed/quality trade-off; the options below refine it")
    add_field_options(group, ("features",))
    inputs = parent.add_argument_group("input images")
    inputs.add_argument(
        "--channels",
        type=channel_list,
        metavar="I[,J[,K...]]",
        help="channels of multichannel images to use, 0-based: one (grey), two (red and green) or three (RGB), "
        "e.g. --channels 0,2 (default: grey or RGB as stored, alpha dropped); with --channel-mode separate any "
        "number, in that order (default: all)",
    )
    return parent


def add_spacing_option(parser: Any) -> None:
    """``--spacing DZ DY DX``: voxel sizes of volumes (``--volume``)."""
    parser.add_argument(
        "--spacing",
        type=float,
        nargs=3,
        metavar=("DZ", "DY", "DX"),
        help="voxel sizes of volumes (--volume), any unit, e.g. --spacing 2 0.5 0.5: XZ and YZ planes are resampled "
        "along z to square pixels (default: isotropic voxels)",
    )


@dataclass(frozen=True)
class SharedOptions:
    """The parent parsers a command's parser may inherit from."""

    feature: argparse.ArgumentParser
    runtime: argparse.ArgumentParser
    common: argparse.ArgumentParser

    @classmethod
    def create(cls) -> SharedOptions:
        return cls(feature=feature_options(), runtime=runtime_options(), common=common_options())
