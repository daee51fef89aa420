"""The model file of a linear segmenter: one safetensors file, no pickle.

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
    optional ``channels`` (JSON list of the image channels used for training, ``io.read_image(channels=)``);
    optional ``checksum`` (:func:`~..files.checksums.contents_sha256` of every other entry and tensor,
    written on save: a file whose checksum does not match was edited or damaged and is
    refused; files written before it have none and load unchecked);
    optional ``head`` (the per-pixel head after the first linear map: ``"linear"`` when absent, or ``"mlp"``).
    A ``"mlp"`` file's ``coef`` / ``intercept`` are the MLP's first layer ``(hidden, n_features)`` / ``(hidden,)``
    (scaler folded in) and it adds the tensors ``output_weight`` (n_classes, hidden) and ``output_bias``
    (n_classes,) float32 (files with a head are version 2 or later).

Format version 2 adds the refinement of the probabilities to ``params``: ``"refine"`` (``"none"``,
``"crf"`` or ``"guided"``) and ``"refine_options"`` (its options, :class:`~.refine.RefineSettings`), so
a folder or cluster run refines exactly as the model did when it was saved. Version-1 files have no
refinement: they load with ``refine="none"`` (whatever the segmenter's default).

:class:`ModelRecord` is what a file holds, as plain values: this module knows no segmenter class
(:meth:`~.segmenter.LinearSegmenter.save` / ``load`` convert it). :func:`record_to_contents` /
:func:`record_from_contents` are the (de)serialisation, :func:`check_record` the checks a record must
pass to predict valid labels; :func:`write_model_file` / :func:`read_model_file` add the file handling.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import FeatureConfig
from ..errors import ModelFileError

#: Version of the model file layout written by :func:`write_model_file`.
FORMAT_VERSION = 2
#: The first format version whose ``params`` hold the refinement (``refine``, ``refine_options``).
REFINE_VERSION = 2
#: The per-pixel heads a model file may hold after its first linear map (``head`` entry; absent = "linear").
HEAD_KINDS = ("linear", "mlp")
#: Identifies our files among other safetensors files.
FORMAT_NAME = "napari-hrdv2-linear-segmenter"
#: Metadata entry holding the integrity checksum (optional: files written before it have none).
CHECKSUM_KEY = "checksum"


@dataclass
class ModelRecord:
    """What a model file holds.

    Attributes
    ----------
    params : dict
        The segmenter's hyper-parameters (``get_params()``, JSON-safe).
    coef : (n_classes, n_features) float32
        Weights on the raw features (scaler folded in).
    intercept : (n_classes,) float32
    classes : (n_classes,) int64
        The label values predicted.
    n_hr_features : int
        Backbone features per pixel (``n_features`` minus the classical ones).
    feature_config : FeatureConfig or None
        The feature settings of the training features (None: trained on plain arrays).
    summary : dict or None
        The training summary's fields (``pixels_per_class`` with int keys).
    class_names : dict of int to str
    backbone_fingerprint : (k,) float32 or None
    backbone_family : str or None
    channels : tuple of int or None
        The channels of the image files trained on.
    head : str
        One of :data:`HEAD_KINDS`: ``"linear"`` (``coef`` / ``intercept`` give the class logits) or ``"mlp"``
        (they give the hidden layer; ``output_weight`` / ``output_bias`` the logits).
    output_weight : (n_classes, hidden) float32 or None
        The MLP's output layer (``"mlp"`` only).
    output_bias : (n_classes,) float32 or None
    """

    params: dict[str, Any]
    coef: np.ndarray
    intercept: np.ndarray
    classes: np.ndarray
    n_hr_features: int
    feature_config: FeatureConfig | None = None
    summary: dict[str, Any] | None = None
    class_names: dict[int, str] = field(default_factory=dict)
    backbone_fingerprint: np.ndarray | None = None
    backbone_family: str | None = None
    channels: tuple[int, ...] | None = None
    head: str = "linear"
    output_weight: np.ndarray | None = None
    output_bias: np.ndarray | None = None
    #: Set by :func:`record_from_contents` when the file's checksum does not match its contents.
    integrity_error: str | None = None


def record_to_contents(record: ModelRecord) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The tensors and string metadata that represent ``record`` in a file."""
    meta = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "params": json.dumps(record.params),
        "feature_config": json.dumps(record.feature_config.to_dict() if record.feature_config else None),
        "n_hr_features": str(record.n_hr_features),
        "summary": json.dumps(record.summary if record.summary else None),
    }
    if record.class_names:
        meta["class_names"] = json.dumps({str(int(label)): str(name) for label, name in record.class_names.items()})
    tensors = {
        "coef": np.ascontiguousarray(record.coef, dtype=np.float32),
        "intercept": np.ascontiguousarray(record.intercept, dtype=np.float32),
        "classes": np.ascontiguousarray(record.classes, dtype=np.int64),
    }
    if record.backbone_fingerprint is not None:
        from ..backbone.identity import fingerprint_hash

        tensors["backbone_fingerprint"] = np.ascontiguousarray(record.backbone_fingerprint, dtype=np.float32)
        meta["backbone_weights"] = fingerprint_hash(record.backbone_fingerprint)
    if record.backbone_family is not None:
        meta["backbone_family"] = str(record.backbone_family)
    if record.channels is not None:
        meta["channels"] = json.dumps([int(c) for c in record.channels])
    if record.head != "linear":  # absent = linear
        meta["head"] = str(record.head)
        tensors["output_weight"] = np.ascontiguousarray(record.output_weight, dtype=np.float32)
        tensors["output_bias"] = np.ascontiguousarray(record.output_bias, dtype=np.float32)
    from ..files.checksums import contents_sha256

    meta[CHECKSUM_KEY] = contents_sha256(tensors, meta, skip=CHECKSUM_KEY)
    return tensors, meta


def _json_entry(meta: dict[str, str], key: str, kinds: tuple[type, ...], default: str | None = None) -> Any:
    """The JSON value of ``meta[key]`` (``default`` when absent); ``ValueError`` unless it is one of ``kinds``."""
    text = meta[key] if default is None else meta.get(key, default)
    value = json.loads(text)
    if not isinstance(value, kinds):
        names = " or ".join("null" if kind is type(None) else {"dict": "a JSON object"}.get(kind.__name__, kind.__name__)
                            for kind in kinds)  # fmt: skip
        raise ValueError(f"{key} must be {names}, not {type(value).__name__}")
    return value


def record_from_contents(tensors: dict[str, np.ndarray], meta: dict[str, str], *, name: str) -> ModelRecord:
    """Inverse of :func:`record_to_contents`; ``name`` (the file name) appears in the errors.

    The arrays are not checked yet (:func:`check_record`).

    Raises
    ------
    ModelFileError
        Not one of our files, written by a newer version, or damaged.
    """
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
        params = _json_entry(meta, "params", (dict,))
        params = refine_params(params, version=version, name=name)
        config = _json_entry(meta, "feature_config", (dict, type(None)))
        class_names = _json_entry(meta, "class_names", (dict,), default="{}")
        record = ModelRecord(
            params=params,
            coef=np.asarray(tensors["coef"], dtype=np.float32),
            intercept=np.asarray(tensors["intercept"], dtype=np.float32),
            classes=np.asarray(tensors["classes"], dtype=np.int64),
            n_hr_features=int(meta["n_hr_features"]),
            feature_config=FeatureConfig.from_dict(config) if config else None,
            class_names={int(k): str(v) for k, v in class_names.items()},
            backbone_fingerprint=tensors.get("backbone_fingerprint"),
        )
        family = meta.get("backbone_family")  # optional: files written before it was recorded have none
        if family is not None and re.fullmatch(r"[a-z0-9_]{1,32}", family) is None:
            raise ValueError(f"backbone_family {family[:40]!r}")
        record.backbone_family = family
        if "channels" in meta:  # optional: the channels of image files the model was trained on
            from ..errors import InputError
            from ..files.images import parse_channels

            try:
                record.channels = parse_channels(json.loads(meta["channels"]), at_most=None)
            except InputError as err:
                raise ValueError(f"channels: {err}") from None
        summary = _json_entry(meta, "summary", (dict, type(None)), default="null")
        if summary:
            pixels = summary.get("pixels_per_class")
            if not isinstance(pixels, dict):
                raise ValueError("summary.pixels_per_class must be a JSON object")
            summary["pixels_per_class"] = {int(k): v for k, v in pixels.items()}
            record.summary = summary
    except (KeyError, TypeError, ValueError, AttributeError, json.JSONDecodeError) as err:
        raise damaged(name, err) from err
    head = meta.get("head", "linear")
    if head not in HEAD_KINDS:
        raise ModelFileError(
            f"'{name}' holds a '{str(head)[:40]}' head, which this napari-hrdv2 does not know (it knows "
            f"{', '.join(HEAD_KINDS)}); please upgrade the plugin."
        )
    record.head = head
    if head != "linear":
        try:
            record.output_weight = np.asarray(tensors["output_weight"], dtype=np.float32)
            record.output_bias = np.asarray(tensors["output_bias"], dtype=np.float32)
        except KeyError as err:
            raise damaged(name, err) from err
    record.integrity_error = integrity_problem(tensors, meta)
    return record


def refine_params(params: dict[str, Any], *, version: int, name: str) -> dict[str, Any]:
    """``params`` with a checked refinement: ``"none"`` for version-1 files, the file's own for later ones.

    Raises
    ------
    ModelFileError
        A version-2 file without a valid refinement.
    """
    from ..errors import InputError
    from .refine import RefineSettings

    if version < REFINE_VERSION:
        return {**params, "refine": "none", "refine_options": {}}
    if "refine" not in params:
        raise ModelFileError(f"'{name}' is damaged (missing entry: params.refine, the refinement of its probabilities).")
    options = params.get("refine_options") or {}
    try:
        if not isinstance(options, dict):
            raise InputError(f"refine_options must be a JSON object, not {type(options).__name__}")
        settings = RefineSettings.create(params["refine"], **options)
    except InputError as err:
        raise ModelFileError(f"'{name}' is damaged (invalid refinement: {err})") from None
    return {**params, "refine": settings.method, "refine_options": settings.options()}


def integrity_problem(tensors: dict[str, np.ndarray], meta: dict[str, str]) -> str | None:
    """Why the contents fail their ``checksum`` entry, or None (they match, or the file predates checksums)."""
    from ..files.checksums import contents_sha256

    stored = meta.get(CHECKSUM_KEY)
    if stored is None:
        return None
    actual = contents_sha256(tensors, meta, skip=CHECKSUM_KEY)
    if str(stored).strip().lower() == actual:
        return None
    return f"checksum {str(stored)[:12]}... recorded, {actual[:12]}... found"


def damaged(name: str, err: Exception) -> ModelFileError:
    """The error of a file whose entries cannot make a model (``err``: what was invalid)."""
    return ModelFileError(f"'{name}' is damaged (missing or invalid entry: {err}).")


def check_record(record: ModelRecord, tensors: dict[str, np.ndarray], *, n_classical: int, name: str) -> None:
    """Shapes, dtypes and values a model needs to predict valid labels; :class:`ModelFileError` otherwise.

    ``tensors`` are the file's raw tensors (their stored dtypes are checked); ``n_classical`` is the number of
    classical features the model's parameters append to the ``n_hr_features`` backbone features. A valid
    fingerprint is stored in ``record`` as float32.
    """
    from ..files.label_images import MAX_LABEL

    keys = (("coef", "f"), ("intercept", "f"), ("classes", "iu"))
    if record.head != "linear":
        keys += (("output_weight", "f"), ("output_bias", "f"))
    for key, kinds in keys:
        if np.asarray(tensors[key]).dtype.kind not in kinds:
            raise ModelFileError(f"'{name}' is damaged: '{key}' has dtype {np.asarray(tensors[key]).dtype}.")
    n_out, n_features = record.coef.shape if record.coef.ndim == 2 else (-1, -1)
    n_classes = n_out if record.head == "linear" else record.classes.shape[0]
    if (
        record.intercept.shape != (n_out,)
        or record.classes.shape != (n_classes,)
        or record.n_hr_features < 1
        or n_features != record.n_hr_features + n_classical
        or (record.head != "linear" and not _output_layer_fits(record, n_classes, n_out))
    ):
        raise ModelFileError(f"'{name}' is damaged (inconsistent array shapes).")
    if n_classes < 2:
        raise ModelFileError(f"'{name}' is damaged: a model needs at least two classes, it has {n_classes}.")
    weights = [record.coef, record.intercept, record.output_weight, record.output_bias]
    if not all(np.isfinite(array).all() for array in weights if array is not None):
        raise ModelFileError(f"'{name}' is damaged: its weights contain NaN or infinite values.")
    classes = record.classes
    if classes.min() < 1 or classes.max() > MAX_LABEL:
        raise ModelFileError(
            f"'{name}' is damaged: its class values {classes.tolist()[:8]} must lie in 1..{MAX_LABEL} "
            "(0 is unlabelled)."
        )
    if np.unique(classes).size != classes.size:
        raise ModelFileError(f"'{name}' is damaged: its class values {classes.tolist()[:8]} are not distinct.")
    fingerprint = record.backbone_fingerprint
    if fingerprint is not None:
        fingerprint = np.asarray(fingerprint)
        if fingerprint.ndim != 1 or fingerprint.dtype.kind != "f" or not np.isfinite(fingerprint).all():
            raise ModelFileError(f"'{name}' is damaged: invalid backbone fingerprint.")
        record.backbone_fingerprint = fingerprint.astype(np.float32)
    if record.integrity_error is not None:
        raise ModelFileError(
            f"'{name}' fails its integrity check ({record.integrity_error}): its settings or weights were changed "
            "after it was saved, or the file is damaged. Use the original file, or train and save the model again."
        )


def _output_layer_fits(record: ModelRecord, n_classes: int, n_hidden: int) -> bool:
    """Whether a nonlinear head's output layer maps ``n_hidden`` units to ``n_classes`` logits."""
    weight, bias = record.output_weight, record.output_bias
    return (
        weight is not None
        and bias is not None
        and n_hidden >= 1
        and weight.shape == (n_classes, n_hidden)
        and bias.shape == (n_classes,)
    )


def check_head(record: ModelRecord, head: str, *, name: str) -> None:
    """Raise :class:`ModelFileError` unless the file's ``record`` holds a ``head`` model (``"linear"``, ``"mlp"``)."""
    if record.head != head:
        titles = {"linear": "LinearSegmenter", "mlp": "MLPSegmenter"}
        raise ModelFileError(
            f"'{name}' holds a {record.head} model, not a {head} one: load it with "
            f"napari_hrdv2.{titles.get(record.head, 'load_segmenter')}.load, or with napari_hrdv2.load_segmenter "
            "(which reads either kind)."
        )


def write_model_file(record: ModelRecord, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``record`` to ``path`` all-or-nothing (:mod:`..files.atomic`); refuses to replace a file unless ``overwrite``."""
    from ..files.atomic import check_target, write_safetensors

    path = check_target(path, overwrite=overwrite, what="model file")
    tensors, meta = record_to_contents(record)
    return write_safetensors(path, tensors, metadata=meta, overwrite=overwrite)


def read_model_file(path: str | Path) -> tuple[ModelRecord, dict[str, np.ndarray], str]:
    """Read a file written by :func:`write_model_file`: its record, its raw tensors and its name (for errors).

    Raises
    ------
    ModelFileError
        A missing file, or anything but one of our model files.
    """
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
    return record_from_contents(tensors, meta, name=path.name), tensors, path.name
