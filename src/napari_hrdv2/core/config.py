"""``FeatureConfig``: every setting of the HR-Dv2 feature pipeline, frozen and JSON-serialisable.

This module imports neither torch nor scipy (the CLI reads its choices and field lists before any
heavy import). :class:`FeatureConfig` also owns which of its fields define the features
(:data:`FEATURE_DEFINING_FIELDS`: a trained model must be applied with the same values) and which
only say how to compute them (:data:`RUNTIME_FIELDS`, marked ``runtime`` below); and the one check
that a model's settings match the features (:func:`check_same_features`).

Each user-facing field declares once, as dataclass field metadata, how a user sets it: its
command-line option, help text, value kind, range and a widget hint. :func:`field_specs` returns
them as :class:`FieldSpec` objects, from which the CLI options (and the Features dock) are derived.
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .errors import InputError
from .transforms import SHIFT_PATTERNS, ShiftPattern, Transform, make_transforms

Normalize = Literal["minmax", "percentile", "dtype"]
#: Accepted values of ``FeatureConfig.normalize`` (how intensities are scaled to [0, 1]).
NORMALIZE_OPTIONS: tuple[str, ...] = ("minmax", "percentile", "dtype")
#: Percentiles used by ``normalize="percentile"`` (robust to a few hot or dead pixels).
ROBUST_PERCENTILES = (0.5, 99.5)
Resize = Literal["bilinear", "nearest"]
#: Accepted values of ``FeatureConfig.resize`` (how low-resolution maps are brought to full size).
RESIZE_OPTIONS: tuple[str, ...] = ("bilinear", "nearest")
#: Accepted values of ``FeatureConfig.dtype`` and ``FeatureConfig.storage_dtype`` (torch dtype names, or auto).
DTYPE_OPTIONS: tuple[str, ...] = ("auto", "float32", "float16", "bfloat16")
Runtime = Literal["torch", "onnxruntime", "openvino"]
#: Runtimes that run an ONNX export of the backbone's forward pass on the CPU, in float32: their titles, and the
#: pip extra that installs each (``pip install 'napari-hrdv2[<extra>]'``).
EXPORTED_RUNTIMES: dict[str, tuple[str, str]] = {
    "onnxruntime": ("ONNX Runtime", "onnx"),
    "openvino": ("OpenVINO", "openvino"),
}
#: Accepted values of ``FeatureConfig.runtime``: what runs the backbone's forward pass (torch, or an exported runtime).
RUNTIMES: tuple[str, ...] = ("torch", *EXPORTED_RUNTIMES)
ChannelMode = Literal["joint", "separate"]
#: Accepted values of ``FeatureConfig.channel_mode``: channels encoded together as one grey/RGB image, or one by one.
CHANNEL_MODES: tuple[str, ...] = ("joint", "separate")


#: Value kinds of :attr:`FieldSpec.kind`.
VALUE_KINDS: tuple[str, ...] = ("backbone", "choice", "bool", "int", "optional_int", "int_list", "text")
#: Widget hints of :attr:`FieldSpec.widget` ("" = not shown in the Features dock).
WIDGET_KINDS: tuple[str, ...] = ("combo", "check", "spin", "line", "")
#: Sections of :attr:`FieldSpec.section`: what the backbone is, how its tokens become features, how it runs.
SECTIONS: tuple[str, ...] = ("backbone", "features", "computation")


@dataclass(frozen=True)
class FieldSpec:
    """How a user sets one :class:`FeatureConfig` field: declared once, read by the CLI and the widgets.

    Attributes
    ----------
    name : str
        The field's name.
    default : Any
        The field's default value.
    runtime : bool
        True for fields that only say how the features are computed (:data:`RUNTIME_FIELDS`).
    flag : str
        Command-line option, e.g. ``"--distances"``.
    label : str
        Short human name, e.g. ``"Shift distances"`` (a widget's label).
    help : str
        One sentence for ``--help`` and tooltips (says the default where it is not obvious).
    kind : str
        Value kind (:data:`VALUE_KINDS`): ``"backbone"`` (a preset of the backbone registry, a Hugging
        Face id or a path), ``"choice"`` (one of :attr:`choices`), ``"bool"``, ``"int"`` (at least
        :attr:`minimum` where given), ``"optional_int"`` (an int >= :attr:`minimum`, or ``None``,
        written ``none`` or ``0``), ``"int_list"`` (one or more ints >= :attr:`minimum`), ``"text"``.
    choices : tuple of str
        Accepted values of a ``"choice"`` field, else empty.
    minimum, maximum : int or None
        Range of an integer value (``None``: unbounded). The CLI checks ``minimum``; ``maximum``
        (and the rules between fields) are checked by :class:`FeatureConfig`.
    metavar : str or None
        Placeholder of the value in ``--help`` (e.g. ``"PX"``).
    widget : str
        Widget hint (:data:`WIDGET_KINDS`): ``"combo"``, ``"check"``, ``"spin"``, ``"line"``, or ``""``
        for a field the Features dock does not show.
    section : str
        Where the field belongs (:data:`SECTIONS`): ``"backbone"``, ``"features"`` or ``"computation"``.
    """

    name: str
    default: Any
    runtime: bool
    flag: str
    label: str
    help: str
    kind: str
    choices: tuple[str, ...] = ()
    minimum: int | None = None
    maximum: int | None = None
    metavar: str | None = None
    widget: str = ""
    section: str = "features"


def _setting(
    default: Any,
    *,
    flag: str,
    label: str,
    help: str,  # noqa: A002  (the FieldSpec attribute's name)
    kind: str,
    choices: tuple[str, ...] = (),
    minimum: int | None = None,
    maximum: int | None = None,
    metavar: str | None = None,
    widget: str = "",
    section: str = "features",
    runtime: bool = False,
) -> Any:
    """A FeatureConfig field with its :class:`FieldSpec` (minus name and default) as metadata.

    ``runtime=True`` marks a field that says how the features are computed, not what they are
    (device, precision, tiling...).
    """
    assert kind in VALUE_KINDS and widget in WIDGET_KINDS and section in SECTIONS
    spec = {
        "flag": flag,
        "label": label,
        "help": help,
        "kind": kind,
        "choices": tuple(choices),
        "minimum": minimum,
        "maximum": maximum,
        "metavar": metavar,
        "widget": widget,
        "section": section,
    }
    return dataclasses.field(default=default, metadata={"runtime": runtime, "spec": spec})


Facet = Literal["token", "key", "query", "value"]
#: What a backbone block gives as features: output tokens, or the block's key / query / value projections.
FACETS: tuple[str, ...] = ("token", "key", "query", "value")

#: Bounds on settings read from files (a crafted model must not make a run last for days).
MAX_PASSES = 512
MAX_SHIFT_DISTANCES = 16
MAX_SHIFT_DISTANCE = 512
MAX_BATCH_SIZE = 4096


def _is_whole(value: Any) -> bool:
    """An int (not a bool), or an integer-valued float."""
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, numbers.Integral):
        return True
    return isinstance(value, (float, np.floating)) and float(value).is_integer()


@dataclass(frozen=True)
class FeatureConfig:
    """Settings of the HR-Dv2 feature pipeline.

    Parameters
    ----------
    backbone : str
        Preset (``"dinov2_vits14"``, ``"dinov2_vitb14_reg"``...), Hugging Face id,
        ``save_pretrained`` folder or official ``.pth`` file.
    shifts : {"none", "neumann", "moore"}
        Shift directions: none, 4 axial, or 8 axial + diagonal.
    shift_distances : tuple of int
        Shift lengths in pixels; each adds 4 or 8 transforms. The default
        ``(5,)`` with Moore shifts samples the 14-px patch grid at phases
        {-5, 0, +5} px along each axis, i.e. nearly evenly every ~4.7 px, for 9
        forward passes (see the README's "Choosing the defaults").
    flips : bool
        Also apply horizontal and vertical flips to every shift (3x the passes).
    rotations : bool
        Also rotate every shifted (and flipped) copy by 90, 180 and 270 degrees
        (4x the passes; with ``flips`` the 8 symmetries of the square, 8x).
    stride : int or None
        Patch-embedding stride; ``None`` = patch size. Smaller strides give
        overlapping patches and cost ~(P / stride)^2 to ^4 more.
    resize : {"bilinear", "nearest"}
        How token maps are brought to pixels.
    normalize : {"minmax", "percentile", "dtype"}
        Intensity scaling to [0, 1] before ImageNet normalisation.
    tile_size : int or None
        Upper bound on a tile side in pixels, set by memory (None = the whole
        image in one tile). Within it the tiles are cut where they cost least
        (:func:`~napari_hrdv2.core.features.tiling.plan_tiles`: estimated backbone
        FLOPs, tiles evenly sized and aligned to the patch grid): an image that
        fits the bound is one tile, a larger one is often cut into tiles smaller
        than the bound. Default 896 (64 x 64 patches of 14 px): 1024 x 1024
        is 4 tiles of 560 px (6,400 tokens, not 9 of 518 px: 12,996).
    tile_overlap : int
        Overlap of neighbouring tiles in pixels; blended with linear ramps.
    device : str
        ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``.
    dtype : str
        Compute precision of the backbone: ``"auto"`` (float16 on CUDA; on the
        CPU bfloat16 where the processor computes it natively, AMX-BF16 /
        AVX512-BF16 / Arm BF16, else float32; float32 on MPS), ``"float32"``
        (bit-for-bit reproducible), ``"float16"``, ``"bfloat16"``. The choice and
        its reason: ``Featurizer.dtype_choice``.
    storage_dtype : str
        Precision of the low-resolution maps an :class:`Encoding` keeps:
        ``"auto"`` (the compute dtype when it is 16-bit, else float16),
        ``"float32"``, ``"float16"``, ``"bfloat16"``. float16 halves the memory
        of an encoding (0.9 GiB instead of 1.8 GiB for 4096 x 4096 with ViT-S/14
        and 9 transforms) at a relative rounding error of ~5e-4 of each map
        value; everything read from the maps is computed in float32.
    batch_size : int or None
        Transformed copies per forward pass; ``None`` (auto) = 1 on the CPU,
        where batching is slower (``benchmarks/bench_features.py`` (a): 17
        ViT-S/14 forwards of 518 x 518 take 8.9 s in batches of 4, 8.1 s one at
        a time), and 4 on CUDA/MPS. Halved automatically on out-of-memory.
    weights_sha256 : str or None
        Expected sha256 of a local weights file (checked on load).
    facet : {"token", "key", "query", "value"}
        What the block gives: ``"token"`` (default) its output tokens after the
        model's final norm; ``"key"`` / ``"query"`` / ``"value"`` its attention
        projections of the normalised input (HR-Dv2 and Amir et al. use the last
        block's keys), before RoPE. All are linear-compatible with ``project``.
    layer : int or None
        Block to read, 0-based (negative counts from the end); ``None`` = the
        last. The attention maps are those of this block.
    channel_mode : {"joint", "separate"}
        ``"joint"`` (default, the behaviour before this option): the image is one
        grey or RGB picture (1 or 3 channels, scaled together) and gives ``D``
        features. ``"separate"``: an ``(H, W, C)`` image with any ``C >= 1`` is
        encoded channel by channel, each channel as a grey image scaled on its own
        (``normalize`` over that channel of the whole image); the features are the
        ``C`` blocks of ``D`` concatenated in channel order (``C x D`` features,
        ``C`` times the time and memory of one grey image).
    volume : bool
        A ``(Z, Y, X[, C])`` stack is a volume: each voxel's feature is the mean
        of the features of the XY, XZ and YZ planes through it, each plane an
        ordinary encoding with these settings (``napari_hrdv2.fit_stack`` /
        ``predict_stack``, :mod:`~napari_hrdv2.core.features.volume`). About 3x
        the passes of plane-by-plane features. Default False: a stack is a pile
        of independent planes.
    """

    backbone: str = _setting(
        "dinov2_vits14",
        flag="--backbone",
        label="Backbone",
        help="preset (default dinov2_vits14; presets win over same-named folders: write ./NAME for a folder), "
        "Hugging Face id, save_pretrained or timm folder, or a .pth / .safetensors checkpoint (official "
        "DINOv2/DINOv3 or timm layout)",
        kind="backbone",
        widget="combo",
        section="backbone",
    )
    shifts: ShiftPattern = _setting(
        "moore",
        flag="--shifts",
        label="Shifts",
        help="shift directions: none, 4 axial, 8 axial+diagonal",
        kind="choice",
        choices=SHIFT_PATTERNS,
        widget="combo",
    )
    shift_distances: tuple[int, ...] = _setting(
        (5,),
        flag="--distances",
        label="Shift distances",
        help="shift lengths, e.g. 3 6",
        kind="int_list",
        minimum=1,
        maximum=MAX_SHIFT_DISTANCE,
        metavar="PX",
        widget="line",
    )
    flips: bool = _setting(
        False,
        flag="--flips",
        label="Flips",
        help="also flip every shifted copy (3x slower)",
        kind="bool",
        widget="check",
    )
    rotations: bool = _setting(
        False,
        flag="--rotations",
        label="Rotations",
        help="also rotate every copy by 90, 180 and 270 degrees (4x slower)",
        kind="bool",
        widget="check",
    )
    stride: int | None = _setting(
        None,
        flag="--stride",
        label="Stride",
        help="patch stride (default 'none' = patch size)",
        kind="optional_int",
        minimum=1,
        metavar="PX|none",
        widget="spin",
    )
    resize: Resize = _setting(
        "bilinear",
        flag="--resize",
        label="Resize",
        help="token maps to pixels (default bilinear)",
        kind="choice",
        choices=RESIZE_OPTIONS,
        widget="combo",
    )
    normalize: Normalize = _setting(
        "minmax",
        flag="--normalize",
        label="Normalize",
        help="intensity scaling (default minmax)",
        kind="choice",
        choices=NORMALIZE_OPTIONS,
    )
    tile_size: int | None = _setting(
        896,
        flag="--tile-size",
        label="Tile size",
        help=(
            "largest tile side (memory bound, default 896); the cheapest tiles under it are used; "
            "0 or 'none' = whole image"
        ),
        kind="optional_int",
        minimum=28,
        metavar="PX|none",
        widget="spin",
        section="computation",
        runtime=True,
    )
    tile_overlap: int = _setting(
        84,
        flag="--tile-overlap",
        label="Tile overlap",
        help="overlap of neighbouring tiles (default 84)",
        kind="int",
        metavar="PX",
        section="computation",
        runtime=True,
    )
    device: str = _setting(
        "auto",
        flag="--device",
        label="Device",
        help="auto (default: CUDA, then MPS, then CPU), cpu, cuda, cuda:1, mps",
        kind="text",
        widget="combo",
        section="computation",
        runtime=True,
    )
    dtype: str = _setting(
        "auto",
        flag="--dtype",
        label="Compute dtype",
        help="compute precision (default auto: float16 on CUDA, bfloat16 on CPUs with native bfloat16, else float32)",
        kind="choice",
        choices=DTYPE_OPTIONS,
        section="computation",
        runtime=True,
    )
    runtime: Runtime = _setting(
        "torch",
        flag="--runtime",
        label="Runtime",
        help="what runs the backbone: torch (default), onnxruntime or openvino (CPU, float32; often faster there; "
        "need pip install 'napari-hrdv2[onnx]' or 'napari-hrdv2[openvino]'; export the backbone once, cached on disk)",
        kind="choice",
        choices=RUNTIMES,
        widget="combo",
        section="computation",
        runtime=True,
    )
    storage_dtype: str = _setting(
        "auto",
        flag="--storage-dtype",
        label="Storage dtype",
        help="precision of the low-resolution maps kept in memory (default auto: float16, half the memory of float32)",
        kind="choice",
        choices=DTYPE_OPTIONS,
        section="computation",
        runtime=True,
    )
    batch_size: int | None = _setting(
        None,
        flag="--batch-size",
        label="Batch size",
        help="transformed copies per forward pass (default auto: 1 on the CPU, 4 on a GPU)",
        kind="int",
        minimum=1,
        maximum=MAX_BATCH_SIZE,
        metavar="N",
        section="computation",
        runtime=True,
    )
    weights_sha256: str | None = _setting(
        None,
        flag="--sha256",
        label="Weights sha256",
        help="expected sha256 of a local weights file",
        kind="text",
        metavar="HEX",
        section="computation",
        runtime=True,
    )
    facet: Facet = _setting(
        "token",
        flag="--facet",
        label="Facet",
        help="block output tokens (default) or its key/query/value projections",
        kind="choice",
        choices=FACETS,
        widget="combo",
    )
    layer: int | None = _setting(
        None,
        flag="--layer",
        label="Block",
        help="block to read, 0-based, negative from the end (default: the last)",
        kind="int",
        metavar="I",
        widget="spin",
    )
    channel_mode: ChannelMode = _setting(
        "joint",
        flag="--channel-mode",
        label="Channels",
        help="joint (default: one grey or RGB image) or separate (every channel encoded on its own as grey, "
        "features concatenated: any number of channels, C times the time and memory)",
        kind="choice",
        choices=CHANNEL_MODES,
        widget="combo",
    )
    volume: bool = _setting(
        False,
        flag="--volume",
        label="Volume (3D features)",
        help="a (Z, Y, X[, C]) stack is a volume: each voxel's feature is the mean of the XY, XZ and YZ plane "
        "features through it (about 3x the passes); default off: plane by plane",
        kind="bool",
    )

    def __post_init__(self) -> None:
        distances = self.shift_distances
        if isinstance(distances, int):
            distances = (distances,)
        try:
            distances = tuple(int(d) for d in distances)
        except (TypeError, ValueError):
            raise InputError(f"shift_distances must be positive integers, got {self.shift_distances!r}.") from None
        object.__setattr__(self, "shift_distances", distances)
        if any(d < 1 for d in distances):
            raise InputError(f"shift_distances must be positive integers, got {distances}.")
        if self.shifts not in SHIFT_PATTERNS:
            raise InputError(f"shifts={self.shifts!r} is not one of {SHIFT_PATTERNS}.")
        if self.resize not in RESIZE_OPTIONS:
            raise InputError(f"resize={self.resize!r} is not one of {RESIZE_OPTIONS}.")
        if self.normalize not in NORMALIZE_OPTIONS:
            raise InputError(f"normalize={self.normalize!r} is not one of {NORMALIZE_OPTIONS}.")
        for name in ("stride", "tile_size", "tile_overlap", "batch_size"):
            value = getattr(self, name)
            optional = name != "tile_overlap"
            if not (_is_whole(value) or (optional and value is None)):
                raise InputError(f"{name} must be an integer{' or None' if optional else ''}, got {value!r}.")
            if value is not None:
                object.__setattr__(self, name, int(value))
        if len(distances) > MAX_SHIFT_DISTANCES or any(d > MAX_SHIFT_DISTANCE for d in distances):
            raise InputError(
                f"shift_distances {distances[:8]}{'...' if len(distances) > 8 else ''}: at most "
                f"{MAX_SHIFT_DISTANCES} distances of at most {MAX_SHIFT_DISTANCE} px."
            )
        if self.stride is not None and int(self.stride) < 1:
            raise InputError(f"stride must be a positive integer or None, got {self.stride}.")
        if self.tile_size is not None and int(self.tile_size) < 28:
            raise InputError(f"tile_size must be at least 28 pixels (two patches) or None, got {self.tile_size}.")
        if self.tile_overlap < 0 or (self.tile_size is not None and self.tile_overlap >= self.tile_size // 2):
            raise InputError(f"tile_overlap must be >= 0 and less than half of tile_size, got {self.tile_overlap}.")
        for name in ("dtype", "storage_dtype"):
            if getattr(self, name) not in DTYPE_OPTIONS:
                raise InputError(f"{name}={getattr(self, name)!r} is not one of {DTYPE_OPTIONS}.")
        if self.runtime not in RUNTIMES:
            raise InputError(f"runtime={self.runtime!r} is not one of {RUNTIMES}.")
        if self.channel_mode not in CHANNEL_MODES:
            raise InputError(f"channel_mode={self.channel_mode!r} is not one of {CHANNEL_MODES}.")
        if self.facet not in FACETS:
            raise InputError(f"facet={self.facet!r} is not one of {FACETS}.")
        if self.layer is not None:
            if isinstance(self.layer, bool) or not isinstance(self.layer, int):
                raise InputError(f"layer must be a block index (int) or None, got {self.layer!r}.")
            if not -1000 < self.layer < 1000:
                raise InputError(f"layer={self.layer} is not a block index of any ViT.")
        if self.batch_size is not None and not 1 <= int(self.batch_size) <= MAX_BATCH_SIZE:
            raise InputError(f"batch_size must be 1..{MAX_BATCH_SIZE}, got {self.batch_size}.")
        if not isinstance(self.volume, (bool, np.bool_)):
            raise InputError(f"volume must be True or False, got {self.volume!r}.")
        object.__setattr__(self, "volume", bool(self.volume))
        if self.volume and self.channel_mode == "separate":
            raise InputError(
                "volume=True with channel_mode='separate' is not supported yet: encode the volume's channels together "
                "(channel_mode='joint', up to 3 channels) or segment its planes one by one (volume=False)."
            )
        if not isinstance(self.backbone, str) or not self.backbone.strip():
            raise InputError(f"backbone must be a preset name, Hugging Face id or path, got {self.backbone!r}.")
        if self._passes_upper_bound() > MAX_PASSES:
            raise InputError(
                f"These settings ask for {self._passes_upper_bound()} passes per image (shifts={self.shifts!r}, "
                f"{len(distances)} distances, flips={self.flips}); at most {MAX_PASSES} are allowed."
            )

    def _passes_upper_bound(self) -> int:
        """At least :attr:`n_transforms`, without building the transforms (that would import torch)."""
        directions = {"none": 0, "neumann": 4, "moore": 8}[self.shifts]
        per_shift = (3 if self.flips else 1) * (1 if not getattr(self, "rotations", False) else 4)
        return (1 + directions * len(self.shift_distances)) * per_shift

    @property
    def transforms(self) -> tuple[Transform, ...]:
        """The transform set, identity first."""
        distances = self.shift_distances if self.shifts != "none" else ()
        return make_transforms(self.shifts, distances, self.flips, self.rotations)

    def resolved_batch_size(self, device_type: str) -> int:
        """``batch_size``, or its automatic value for a device type (``"cpu"``, ``"cuda"``, ``"mps"``)."""
        if self.batch_size is not None:
            return int(self.batch_size)
        return 1 if device_type == "cpu" else 4

    @property
    def n_transforms(self) -> int:
        return len(self.transforms)

    def replace(self, **changes: Any) -> FeatureConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (tuples become lists)."""
        data = dataclasses.asdict(self)
        data["shift_distances"] = list(self.shift_distances)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise an :class:`InputError`."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise InputError(f"Unknown FeatureConfig fields {sorted(unknown)}; known: {sorted(names)}.")
        values = dict(data)
        if "shift_distances" in values:
            values["shift_distances"] = tuple(values["shift_distances"])
        return cls(**values)

    def feature_signature(self) -> dict[str, Any]:
        """The settings that define the features (:data:`FEATURE_DEFINING_FIELDS`), JSON-safe."""
        data = self.to_dict()
        return {name: data[name] for name in FEATURE_DEFINING_FIELDS}

    def with_runtime_of(self, other: FeatureConfig) -> FeatureConfig:
        """These features, computed as ``other`` says (its :data:`RUNTIME_FIELDS`: device, tiling, ...).

        A checksum is kept when ``other`` gives none (``weights_sha256=None`` means "no check", not "unchecked").
        """
        changes = {name: getattr(other, name) for name in RUNTIME_FIELDS}
        if changes["weights_sha256"] is None:
            changes["weights_sha256"] = self.weights_sha256
        return self.replace(**changes)

    def feature_differences(self, other: FeatureConfig) -> dict[str, tuple[Any, Any]]:
        """``{field: (mine, theirs)}`` for every feature-defining field whose values differ."""
        mine, theirs = self.feature_signature(), other.feature_signature()
        return {name: (mine[name], theirs[name]) for name in mine if mine[name] != theirs[name]}


#: Fields that only say how the features are computed; a trained model may be applied with other values.
RUNTIME_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(FeatureConfig) if f.metadata.get("runtime"))
#: Fields that define the features (every field not marked runtime); a trained model must use the same values.
FEATURE_DEFINING_FIELDS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(FeatureConfig) if not f.metadata.get("runtime")
)


def describe_feature_differences(trained: FeatureConfig, used: FeatureConfig, *, used_by: str = "image") -> str:
    """Every setting where ``used`` computes other features than ``trained``, in words; ``""`` if none.

    E.g. ``"flips: model False vs image True, facet: model 'key' vs Features dock 'token'"`` (``used_by``
    names where ``used`` comes from). The one wording of feature mismatches.
    """
    differences = trained.feature_differences(used)
    return ", ".join(f"{name}: model {mine!r} vs {used_by} {theirs!r}" for name, (mine, theirs) in differences.items())


def field_specs() -> tuple[FieldSpec, ...]:
    """The :class:`FieldSpec` of every user-facing FeatureConfig field, in field order (torch-free).

    The one declaration of each field's option, help, value kind and widget hint: the CLI options
    and the Features dock's controls are derived from it.
    """
    return tuple(
        FieldSpec(name=f.name, default=f.default, runtime=bool(f.metadata.get("runtime")), **f.metadata["spec"])
        for f in dataclasses.fields(FeatureConfig)
        if "spec" in f.metadata
    )


def field_spec(name: str) -> FieldSpec:
    """The :class:`FieldSpec` of one FeatureConfig field (``KeyError`` for an unknown name)."""
    for spec in field_specs():
        if spec.name == name:
            return spec
    raise KeyError(name)


def check_same_features(trained: FeatureConfig, used: FeatureConfig) -> None:
    """Raise :class:`InputError` naming every setting where ``used`` computes other features than ``trained``.

    The one compatibility check between a model (``trained``: its ``feature_config``) and the
    features it is applied to or trained on together with (``used``).
    """
    listed = describe_feature_differences(trained, used)
    if listed:
        raise InputError(
            f"This model was trained with different feature settings ({listed}). Encode the image with "
            "the model's settings (segmenter.feature_config) or retrain."
        )


#: Named speed/quality trade-offs offered in the GUI and CLI.
PRESETS: dict[str, dict[str, Any]] = {
    "fast": {"shifts": "neumann", "shift_distances": (5,), "flips": False, "stride": None},
    "balanced": {"shifts": "moore", "shift_distances": (5,), "flips": False, "stride": None},
    "quality": {"shifts": "moore", "shift_distances": (3, 6), "flips": False, "stride": None},
}
