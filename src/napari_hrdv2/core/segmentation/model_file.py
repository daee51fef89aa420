"""The model file of :class:`~.segmenter.LinearSegmenter`: one safetensors file, no pickle.

Layout (format version :data:`FORMAT_VERSION`):

tensors
    ``coef`` (n_classes, n_features) float32 (scaler folded in), ``intercept`` (n_classes,)
    float32, ``classes`` (n_classes,) int64.
metadata (strings)
    ``format`` = :data:`FORMAT_NAME`, ``format_version``, ``params`` (JSON of
    ``LinearSegmenter.get_params()``), ``feature_config`` (JSON of ``FeatureConfig.to_dict()`` or
    ``null``), ``n_hr_features``, ``summary`` (JSON of the :class:`TrainingSummary` or ``null``),
    optional ``class_names`` (JSON ``{"label": "name"}``; files without it load with no names),
    optional ``backbone_weights`` (hash of the ``backbone_fingerprint`` tensor) and ``backbone_family``
    (``dinov2``, ``dinov2_reg``, ``dinov3``); files without them load and are not checked for them;
    optional ``channels`` (JSON list of the image channels used for training, ``io.read_image(channels=)``).

:func:`model_to_contents` / :func:`model_from_contents` are the (de)serialisation;
:func:`save_model` / :func:`load_model` add the file handling.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..config import FeatureConfig
from ..errors import ModelFileError

if TYPE_CHECKING:  # pragma: no cover
    from .segmenter import LinearSegmenter

#: Version of the model file layout written by :func:`save_model`.
FORMAT_VERSION = 1
#: Identifies our files among other safetensors files.
FORMAT_NAME = "napari-hrdv2-linear-segmenter"


def model_to_contents(model: LinearSegmenter) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The tensors and string metadata that represent a trained ``model`` in a file."""
    meta = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "params": json.dumps(model.get_params()),
        "feature_config": json.dumps(model.feature_config.to_dict() if model.feature_config else None),
        "n_hr_features": str(model.n_hr_features_),
        "summary": json.dumps(asdict(model.summary_) if model.summary_ else None),
    }
    names = getattr(model, "class_names", None)
    if names:
        meta["class_names"] = json.dumps({str(int(label)): str(name) for label, name in names.items()})
    tensors = {
        "coef": np.ascontiguousarray(model.coef_, dtype=np.float32),
        "intercept": np.ascontiguousarray(model.intercept_, dtype=np.float32),
        "classes": np.ascontiguousarray(model.classes_, dtype=np.int64),
    }
    fingerprint = getattr(model, "backbone_fingerprint_", None)
    if fingerprint is not None:
        from ..backbone.identity import fingerprint_hash

        tensors["backbone_fingerprint"] = np.ascontiguousarray(fingerprint, dtype=np.float32)
        meta["backbone_weights"] = fingerprint_hash(fingerprint)
    family = getattr(model, "backbone_family_", None)
    if family is not None:
        meta["backbone_family"] = str(family)
    channels = getattr(model, "channels", None)
    if channels is not None:
        meta["channels"] = json.dumps([int(c) for c in channels])
    return tensors, meta


def model_from_contents(
    tensors: dict[str, np.ndarray], meta: dict[str, str], *, name: str, cls: type[LinearSegmenter] | None = None
) -> LinearSegmenter:
    """Inverse of :func:`model_to_contents`; ``name`` (the file name) appears in the errors.

    Raises
    ------
    ModelFileError
        Not one of our files, written by a newer version, or damaged.
    """
    from .segmenter import LinearSegmenter, TrainingSummary

    cls = cls or LinearSegmenter
    if meta.get("format") != FORMAT_NAME:
        raise ModelFileError(f"'{name}' is a safetensors file but not a napari-hrdv2 segmentation model.")
    version_text = str(meta.get("format_version", "")).strip()
    if not version_text.isdigit() or int(version_text) < 1:
        raise ModelFileError(f"'{name}' is damaged: its format version {version_text!r} is not a whole number >= 1.")
    version = int(version_text)
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"'{name}' was written by a newer napari-hrdv2 (format {version}); please upgrade the plugin."
        )
    try:
        model = cls(**json.loads(meta["params"]))
        config = json.loads(meta["feature_config"])
        model.feature_config = FeatureConfig.from_dict(config) if config else None
        model.coef_ = np.asarray(tensors["coef"], dtype=np.float32)
        model.intercept_ = np.asarray(tensors["intercept"], dtype=np.float32)
        model.classes_ = np.asarray(tensors["classes"], dtype=np.int64)
        model.n_hr_features_ = int(meta["n_hr_features"])
        model.class_names = {int(k): str(v) for k, v in json.loads(meta.get("class_names", "{}")).items()}
        family = meta.get("backbone_family")  # optional: files written before it was recorded have none
        if family is not None and re.fullmatch(r"[a-z0-9_]{1,32}", family) is None:
            raise ValueError(f"backbone_family {family[:40]!r}")
        model.backbone_family_ = family
        if "channels" in meta:  # optional: the channels of image files the model was trained on
            from ..errors import InputError
            from ..files.images import parse_channels

            try:
                model.channels = parse_channels(json.loads(meta["channels"]))
            except InputError as err:
                raise ValueError(f"channels: {err}") from None
        summary = json.loads(meta.get("summary", "null"))
        if summary:
            summary["pixels_per_class"] = {int(k): v for k, v in summary["pixels_per_class"].items()}
            model.summary_ = TrainingSummary(**summary)
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as err:
        raise ModelFileError(f"'{name}' is damaged (missing or invalid entry: {err}).") from err
    _check_contents(model, tensors, name)
    return model


def _check_contents(model: LinearSegmenter, tensors: dict[str, np.ndarray], name: str) -> None:
    """Shapes, dtypes and values a model needs to predict valid labels; :class:`ModelFileError` otherwise."""
    from ..files.label_images import MAX_LABEL

    for key, kinds in (("coef", "f"), ("intercept", "f"), ("classes", "iu")):
        if np.asarray(tensors[key]).dtype.kind not in kinds:
            raise ModelFileError(f"'{name}' is damaged: '{key}' has dtype {np.asarray(tensors[key]).dtype}.")
    n_classes, n_features = model.coef_.shape if model.coef_.ndim == 2 else (-1, -1)
    if (
        model.intercept_.shape != (n_classes,)
        or model.classes_.shape != (n_classes,)
        or model.n_hr_features_ < 1
        or n_features != model.n_hr_features_ + model.n_classical
    ):
        raise ModelFileError(f"'{name}' is damaged (inconsistent array shapes).")
    if n_classes < 2:
        raise ModelFileError(f"'{name}' is damaged: a model needs at least two classes, it has {n_classes}.")
    if not (np.isfinite(model.coef_).all() and np.isfinite(model.intercept_).all()):
        raise ModelFileError(f"'{name}' is damaged: its weights contain NaN or infinite values.")
    classes = model.classes_
    if classes.min() < 1 or classes.max() > MAX_LABEL:
        raise ModelFileError(
            f"'{name}' is damaged: its class values {classes.tolist()[:8]} must lie in 1..{MAX_LABEL} "
            "(0 is unlabelled)."
        )
    if np.unique(classes).size != classes.size:
        raise ModelFileError(f"'{name}' is damaged: its class values {classes.tolist()[:8]} are not distinct.")
    fingerprint = tensors.get("backbone_fingerprint")
    if fingerprint is not None:
        fingerprint = np.asarray(fingerprint)
        if fingerprint.ndim != 1 or fingerprint.dtype.kind != "f" or not np.isfinite(fingerprint).all():
            raise ModelFileError(f"'{name}' is damaged: invalid backbone fingerprint.")
        model.backbone_fingerprint_ = fingerprint.astype(np.float32)


def save_model(model: LinearSegmenter, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write a trained ``model`` to ``path`` all-or-nothing (:mod:`.atomic`); refuses to replace a file unless ``overwrite``."""
    from ..files.atomic import check_target, write_safetensors

    path = check_target(path, overwrite=overwrite, what="model file")
    tensors, meta = model_to_contents(model)
    return write_safetensors(path, tensors, metadata=meta, overwrite=overwrite)


def load_model(path: str | Path, cls: type[LinearSegmenter] | None = None) -> LinearSegmenter:
    """Read a model written by :func:`save_model`; raises :class:`ModelFileError` for anything else."""
    from safetensors import SafetensorError, safe_open

    from ..files.paths import check_path

    path = check_path(path, "model file", error=ModelFileError)
    if not path.is_file():
        raise ModelFileError(f"Model file '{path}' does not exist.")
    try:
        with safe_open(str(path), framework="numpy") as handle:
            meta = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelFileError(f"'{path.name}' is not a napari-hrdv2 model file (or it is corrupt): {err}") from err
    return model_from_contents(tensors, meta, name=path.name, cls=cls)
