"""From parsed options to a FeatureConfig and a Featurizer (downloads only with ``--allow-download``)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.config import FEATURE_DEFINING_FIELDS, PRESETS, RUNTIME_FIELDS, field_specs
from .options import NONE, OPTION_OF

if TYPE_CHECKING:  # pragma: no cover
    from ..core.config import FeatureConfig
    from ..core.features.encoding import Featurizer


def config_values(args: argparse.Namespace, fields: Sequence[str]) -> dict[str, Any]:
    """FeatureConfig values of the options given on the command line for ``fields`` (absent = not given).

    "none" means ``None`` for every field but the choice ``--shifts none``; ``--distances`` becomes a tuple.
    """
    kinds = {spec.name: spec.kind for spec in field_specs()}
    values: dict[str, Any] = {}
    for name in fields:
        value = getattr(args, name, None)
        if value is None:
            continue
        if value == NONE and kinds[name] != "choice":
            value = None
        elif kinds[name] == "int_list":
            value = tuple(value)
        values[name] = value
    return values


def build_config(args: argparse.Namespace) -> FeatureConfig:
    """FeatureConfig defaults, then ``--preset``, then the options given."""
    from ..core.config import FeatureConfig

    values: dict[str, Any] = dict(PRESETS[args.preset]) if args.preset else {}
    values.update(config_values(args, FEATURE_DEFINING_FIELDS + RUNTIME_FIELDS))
    return FeatureConfig(**values)


def runtime_config(args: argparse.Namespace, saved: FeatureConfig) -> FeatureConfig:
    """``saved`` computed with the runtime options given; device and dtypes default to "auto", the runtime
    to torch (another computer may lack the saved one's)."""
    runtime: dict[str, Any] = {"device": "auto", "dtype": "auto", "storage_dtype": "auto", "runtime": "torch"}
    runtime.update(config_values(args, RUNTIME_FIELDS))
    return saved.replace(**runtime)


def same_backbone(a: str, b: str) -> bool:
    """Whether two backbone sources name the same backbone (a preset and its id, or one path)."""
    from ..core.backbone.loading import find_spec

    if a == b:
        return True
    spec_a, spec_b = find_spec(a), find_spec(b)
    if spec_a is not None or spec_b is not None:
        return spec_a == spec_b
    try:
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    except OSError:  # pragma: no cover
        return False


def model_runtime_config(args: argparse.Namespace, trained: FeatureConfig) -> FeatureConfig:
    """The model's FeatureConfig with the runtime options given; feature options must agree with the model.

    ``--device``, ``--dtype`` and ``--storage-dtype`` default to "auto" (the model may come from another
    computer); tiling and batching default to the model's values.
    """
    from ..core.errors import InputError
    from ..core.segmentation.compatibility import feature_mismatch

    given: dict[str, Any] = dict(PRESETS[args.preset]) if args.preset else {}
    option_of = {name: f"--preset {args.preset}" for name in given}
    explicit = config_values(args, FEATURE_DEFINING_FIELDS)
    given.update(explicit)
    option_of.update({name: OPTION_OF[name] for name in explicit})
    if "backbone" in given and same_backbone(str(given["backbone"]), str(trained.backbone)):
        given["backbone"] = trained.backbone  # the same backbone, named another way (preset, id or path)
    mismatch = feature_mismatch(trained, trained.replace(**given), used_by="options")
    if mismatch:
        differing = trained.feature_differences(trained.replace(**given))
        options = sorted({option_of[name] for name in differing if name in option_of})
        hint = (
            " (use --backbone-path to say where the model's backbone weights are on this computer)"
            if "backbone" in differing
            else ""
        )
        raise InputError(
            f"segment computes the features the model was trained on, but the options ask for others ({mismatch}). "
            f"Leave out {', '.join(options)}{hint}."
        )
    return runtime_config(args, trained)


def check_download(args: argparse.Namespace, source: str, *, hint: str = "") -> None:
    """Refuse a backbone whose loading would download it, unless ``--allow-download`` (every command's rule).

    A local folder or file, or a preset / Hugging Face id already in the local Hugging Face cache, needs
    no option. ``hint`` is appended to the message (e.g. how to point at weights elsewhere).
    """
    from ..core.backbone.identity import download_needed
    from ..core.errors import WeightsNotFoundError

    if getattr(args, "allow_download", False):
        return
    repo = download_needed(source)
    if repo is not None:
        raise WeightsNotFoundError(
            f"The backbone '{source}' is not on this computer; loading it would download the Hugging Face "
            f"repository '{repo}'. Download it first with `hf download {repo}`, or pass --allow-download.{hint}"
        )


def make_featurizer(
    args: argparse.Namespace,
    config: FeatureConfig,
    *,
    backbone_path: str | None = None,
    hint: str = "",
    load: bool = True,
) -> Featurizer:
    """The Featurizer of ``config`` (its backbone loaded from ``backbone_path`` if given), downloads refused
    unless ``--allow-download`` (:func:`check_download`). ``load``: load the weights now, before any work
    (otherwise when first needed, e.g. not at all when a batch skips every input)."""
    import os

    from ..core.errors import WeightsNotFoundError
    from ..core.features.encoding import Featurizer
    from ..core.files.paths import check_input_file

    source = backbone_path or config.backbone
    if source and os.path.lexists(source):  # a local folder or file: not a FIFO, device or symlink loop
        check_input_file(source, "Backbone", folder=True, error=WeightsNotFoundError)
    if backbone_path:
        from ..core.backbone.loading import load_backbone
        from ..core.runtime.devices import resolve_device, resolve_dtype

        check_download(args, backbone_path, hint=hint)
        device = resolve_device(config.device)
        backbone = load_backbone(
            backbone_path, device=device, dtype=resolve_dtype(config.dtype, device), sha256=config.weights_sha256
        )
        featurizer = Featurizer(config, backbone=backbone)
    else:
        check_download(args, config.backbone, hint=hint)
        featurizer = Featurizer(config)
    if load:
        featurizer.backbone  # noqa: B018  (weights errors before any work)
    return featurizer
