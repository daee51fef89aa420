"""The Segmentation dock's lines about features and the model: which settings, which classes, what differs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.config import FeatureConfig

#: The model line while there is no model.
NO_MODEL = "none (paint scribbles, then Train)"


def describe_config(config: FeatureConfig) -> str:
    """One line summarising feature settings, e.g. 'dinov2_vits14, moore shifts 5, cpu' or '..., moore shifts 2+5'."""
    backbone = Path(config.backbone).name if ("/" in config.backbone or "\\" in config.backbone) else config.backbone
    shifts = (
        "no shifts"
        if config.shifts == "none"
        else f"{config.shifts} shifts {'+'.join(str(d) for d in config.shift_distances)}"
    )
    flips = ", flips" if config.flips else ""
    facet = f", {config.facet} facet" if config.facet != "token" else ""
    block = f", block {config.layer}" if config.layer is not None else ""
    volume = ", volume (3D features)" if config.volume else ""
    return f"{backbone}, {shifts}{flips}{facet}{block}{volume}, {config.device}"


def dock_mismatch(model_config: FeatureConfig | None, settings: FeatureConfig) -> str | None:
    """What differs between a model's features and the Features dock's settings, in words; None if nothing does.

    The wording of the differences is the shared compatibility check's; the model refuses features computed
    otherwise, so Predict keeps using the model's own settings and only a new Train uses the dock's.
    """
    from ..core.segmentation.compatibility import feature_mismatch

    if model_config is not None:  # volume features are the Segmentation dock's choice, not the Features dock's
        settings = settings.replace(volume=model_config.volume)
    listed = feature_mismatch(model_config, settings, used_by="Features dock")
    if listed is None:
        return None
    return (
        f"The model was trained on other features ({listed}) and refuses features of another kind: Predict uses "
        "the model's settings; Train makes a new model with the dock's."
    )


def model_text(segmenter: Any, class_names: dict[int, str], settings: FeatureConfig) -> str:
    """The Model line: its classes and features, and what differs from the Features dock's ``settings``."""
    if segmenter is None:
        return NO_MODEL
    names = {**getattr(segmenter, "class_names", {}), **class_names}
    classes = ", ".join(names.get(int(c), str(int(c))) for c in getattr(segmenter, "classes_", []))
    trained_with = segmenter.feature_config
    mismatch = dock_mismatch(trained_with, settings)
    features = f"; {describe_config(trained_with)}" if trained_with is not None else ""
    refine = getattr(segmenter, "refine", "none")
    refined = f"; edges refined ({refine})" if refine != "none" else ""
    head = f"MLP ({segmenter.hidden} hidden units), " if getattr(segmenter, "HEAD", "linear") == "mlp" else ""
    return f"{head}trained, classes {classes}{features}{refined}" + (f". {mismatch}" if mismatch else "")
