"""The one check that features can be fed to a trained model, with one wording for every caller.

A model (:class:`~.protocol.Segmenter`) records what its features were: the feature-defining settings
(``feature_config``, compared by :func:`~..config.check_same_features`), the backbone family, the
backbone width and a fingerprint of its weights, and the channels of the image files it was trained on.
Features made otherwise have the same shape but mean something else, so the model would predict
silently wrong labels: every caller (the segmenter itself, batch, cluster, streaming, stacks) asks here.

- :func:`check_compatible`: all of it at once, for applying a model to image files;
- :func:`check_model_features`, :func:`check_backbone`, :func:`check_backbone_family`,
  :func:`check_backbone_weights`, :func:`channels_for`: the parts, for callers that know only some.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..config import FeatureConfig, check_same_features, describe_feature_differences
from ..errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from ..backbone.loading import Backbone
    from .protocol import Segmenter

__all__ = [
    "check_backbone",
    "check_backbone_family",
    "check_backbone_weights",
    "check_compatible",
    "check_fitted",
    "check_model_features",
    "channels_for",
    "check_channel_count",
    "common_feature_config",
    "describe_feature_differences",
    "feature_mismatch",
]


def check_fitted(model: Segmenter) -> None:
    """Raise :class:`InputError` if ``model`` is not trained yet."""
    if not model.is_fitted:
        kind = type(model).__name__
        raise InputError(f"This {kind} is not trained yet: call fit(...) or {kind}.load(path).")


def feature_mismatch(trained: FeatureConfig | None, used: FeatureConfig, *, used_by: str = "image") -> str | None:
    """The settings where ``used`` defines other features than a model's ``trained`` config, in words; None if none.

    ``used_by`` names where ``used`` comes from (``"image"``, ``"Features dock"``); a model that records
    no config (trained on plain arrays) matches anything.
    """
    if trained is None:
        return None
    return describe_feature_differences(trained, used, used_by=used_by) or None


def check_model_features(model: Segmenter, config: FeatureConfig | None, *, required: bool = False) -> None:
    """Raise :class:`InputError` if ``config`` computes other features than ``model`` was trained on.

    Parameters
    ----------
    model : trained Segmenter
    config : the feature settings of the features to be fed (None: unknown, e.g. plain arrays: passes)
    required : bool
        The model must record its feature settings (to be applied to image files, whose features it computes).
    """
    check_fitted(model)
    trained = model.feature_config
    if trained is None and required:
        raise InputError(
            "This model does not record the feature settings it was trained with (it was trained on plain "
            "arrays); train it from images (napari-hrdv2 train, or the napari widget) to apply it to files."
        )
    if trained is not None and config is not None:
        check_same_features(trained, config)


def check_backbone_family(model: Segmenter, family: str | None, *, source: str | None = None) -> None:
    """Raise :class:`InputError` if ``family`` (of the backbone of some features) is not the model's.

    A DINOv2 and a DINOv3 backbone of the same width give features of the same shape that mean
    different things. Unknown families (old model files, plain arrays) pass.
    """
    trained_family = model.backbone_family_
    if family is None or trained_family is None or family == trained_family:
        return
    from ..backbone.identity import family_title

    trained = model.feature_config.backbone if model.feature_config is not None else "?"
    where = f" ('{source}')" if source else ""
    raise InputError(
        f"These features come from a {family_title(family)} backbone{where}, but the model was trained on "
        f"{family_title(trained_family)} features ('{trained}'): use a {family_title(trained_family)} "
        "backbone (the one the model was trained with), or retrain the model."
    )


def check_backbone_weights(model: Segmenter, fingerprint: np.ndarray | None) -> None:
    """Raise :class:`InputError` if ``fingerprint`` (k,) (of a backbone) is not the one the model was trained with.

    Backbones of the same width give features of the same shape, so without this check a model would
    predict silently wrong labels with other weights. Unknown fingerprints (old model files) pass.
    """
    from ..backbone.identity import fingerprint_hash, same_weights

    if not same_weights(model.backbone_fingerprint_, fingerprint):
        trained = model.feature_config.backbone if model.feature_config is not None else "?"
        raise InputError(
            f"These features come from other backbone weights (fingerprint {fingerprint_hash(fingerprint)}) "
            f"than the model was trained with ('{trained}', fingerprint "
            f"{fingerprint_hash(model.backbone_fingerprint_)}): use the same weights, or retrain the model."
        )


def check_backbone(model: Segmenter, backbone: Backbone) -> None:
    """Raise :class:`InputError` if a loaded ``backbone`` cannot give the features ``model`` was trained on:
    another family, another width (features per pixel) or other weights.
    """
    from ..backbone.identity import backbone_family_of, backbone_fingerprint

    check_fitted(model)
    check_backbone_family(model, backbone_family_of(backbone), source=str(backbone.source))
    expected = model.n_hr_features_
    separate = model.feature_config is not None and model.feature_config.channel_mode == "separate"
    if separate and expected is not None and int(expected) % int(backbone.embed_dim) == 0:
        expected = backbone.embed_dim  # C blocks of embed_dim (the channel count is checked with the image)
    if expected is not None and int(backbone.embed_dim) != int(expected):
        raise InputError(
            f"The backbone '{backbone.source}' gives {backbone.embed_dim} features per pixel but the model was "
            f"trained on {expected}: use the backbone the model was trained with."
        )
    check_backbone_weights(model, backbone_fingerprint(backbone.model))


def check_channel_count(model: Segmenter, n_channels: int, block_width: int) -> None:
    """Raise :class:`InputError` if features of ``n_channels`` image channels encoded separately do not fit ``model``.

    A model trained with ``channel_mode="separate"`` has ``C x D`` HR-Dv2 features (``D = block_width``, the
    features of one channel): it takes images of exactly ``C`` channels.
    """
    check_fitted(model)
    n_hr = model.n_hr_features_
    if n_hr is None or block_width < 1 or int(n_hr) % int(block_width):
        return  # another width: the width check names it
    trained = int(n_hr) // int(block_width)
    if trained != int(n_channels):
        chosen = f" (channels {','.join(str(c) for c in model.channels)} of its images)" if model.channels else ""
        raise InputError(
            f"This model was trained on {trained} channels separately{chosen}; the image has {n_channels}. "
            f"Give it an image of {trained} channels (choose them with --channels / channels=), or retrain."
        )


def channels_for(model: Segmenter, channels: Sequence[int] | str | None) -> tuple[int, ...] | None:
    """The channels to read image files with for ``model``: those given, else the model's.

    Raises
    ------
    InputError
        ``channels`` are not the ones the model was trained on (they give other features).
    """
    from ..files.images import parse_channels

    chosen = parse_channels(channels, at_most=None)
    trained = model.channels
    trained = tuple(trained) if trained is not None else None
    if chosen is None:
        return trained
    if trained is not None and chosen != trained:
        listed = ",".join(str(c) for c in trained)
        raise InputError(
            f"The model was trained on channels {listed} of its images; channels "
            f"{','.join(str(c) for c in chosen)} give other features. Use channels {listed} (or leave the option out)."
        )
    return chosen


def check_compatible(
    model: Segmenter,
    config: FeatureConfig,
    *,
    backbone: Backbone | None = None,
    channels: Sequence[int] | str | None = None,
) -> tuple[int, ...] | None:
    """Everything at once, for applying ``model`` to image files: returns the channels to read them with.

    Checks the feature settings (the model must record them), the channels (:func:`channels_for`) and,
    when given, the loaded ``backbone`` (:func:`check_backbone`; loading it is slow, so callers pass it
    once it is needed).
    """
    chosen = channels_for(model, channels)
    check_model_features(model, config, required=True)
    if backbone is not None:
        check_backbone(model, backbone)
    return chosen


def common_feature_config(configs: Sequence[FeatureConfig | None]) -> FeatureConfig | None:
    """The one feature config of features trained on together (None entries: unknown); None if all are unknown.

    Raises
    ------
    InputError
        Two of them define different features.
    """
    known = [config for config in configs if config is not None]
    if not known:
        return None
    for config in known[1:]:
        differences = known[0].feature_differences(config)
        if differences:
            raise InputError(
                f"The encodings were computed with different feature settings ({', '.join(differences)}); "
                "use one FeatureConfig."
            )
    return known[0]
