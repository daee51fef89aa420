"""The Features dock's settings controls: built in one place (:class:`FeatureSettingsControls`), read into a
:class:`~..core.config.FeatureConfig` and shown from one.

Each control is derived from its field's declaration in :func:`~..core.config.field_specs` (label, help as the
tooltip, choices, range, widget kind), the same declaration the command line's options come from; only what
is the dock's own is given here (the Block box's -1 for the last block, the device list, the tile step).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from magicgui.widgets import CheckBox, ComboBox, Container, LineEdit, PushButton, SpinBox

from ..core.backbone.loading import backbone_names
from ..core.config import PRESETS, FeatureConfig, field_spec
from ..core.errors import InputError

CUSTOM_PRESET = "custom"
DEVICES = ("auto", "cpu", "cuda", "mps")
WEIGHTS_FILTER = "DINOv2 weights (*.pth *.pt *.safetensors config.json);;All files (*)"
#: The Block box's range is -MAX_BLOCKS .. MAX_BLOCKS - 1 (the largest DINOv2/v3 ViT has 40 blocks).
MAX_BLOCKS = 64
#: The Block box's value for "the last block" (``FeatureConfig.layer=None``).
LAST_BLOCK = -1
#: Shown while no weights path is set.
WEIGHTS_PLACEHOLDER = "empty: use the Backbone preset"
FACET_TIP = (
    "What each pixel's features are: 'token' (default) = the block's output tokens after the final norm; 'key' / "
    "'query' / 'value' = the block's attention projections (HR-Dv2 and Amir et al. use the last block's keys). A "
    "model trained on one facet only applies to features of that facet."
)
BLOCK_TIP = (
    "Which transformer block to read: -1 = the last (default), 0 = the first, negative counts from the end (e.g. -4 "
    "for an intermediate block). The attention maps are that block's."
)
CHANNELS_TIP = (
    "joint (default): the image is one grey or RGB picture. separate: every channel is encoded on its own as a grey "
    "image (scaled on its own) and the features are concatenated: any number of channels, each costing the time and "
    "memory of one grey image. The channels are the chosen layer and every other visible image layer of the same "
    "shape (as napari opens a multichannel image with channel_axis), bottom to top; hide a layer to leave it out."
)
WEIGHTS_TIP = (
    "Optional: a downloaded Hugging Face folder (save_pretrained / hf download --local-dir), an official torch.hub "
    ".pth file, or a Hugging Face id. Empty: the Backbone preset."
)


def field_control(name: str, **overrides: Any) -> Any:
    """The magicgui control of FeatureConfig field ``name``, as its :class:`~..core.config.FieldSpec` declares it.

    ``overrides`` replace the declared options (e.g. a richer tooltip, the dock's own range).
    """
    spec = field_spec(name)
    if spec.widget == "check":
        options: dict[str, Any] = {"text": spec.label, "value": bool(spec.default), "tooltip": spec.help}
        return CheckBox(**{**options, **overrides})
    options = {"label": spec.label, "tooltip": spec.help}
    if spec.widget == "combo":
        options["choices"] = list(spec.choices)
        if spec.default in spec.choices:
            options["value"] = spec.default
        return ComboBox(**{**options, **overrides})
    if spec.widget == "spin":
        if spec.minimum is not None:
            options["min"] = spec.minimum
        if spec.maximum is not None:
            options["max"] = spec.maximum
        return SpinBox(**{**options, **overrides})
    return LineEdit(**{**options, **overrides})


def parse_distances(text: str) -> tuple[int, ...]:
    """'3, 6' -> (3, 6); InputError for anything but whole numbers, or none."""
    try:
        values = tuple(int(part) for part in text.replace(";", ",").split(",") if part.strip())
    except ValueError:
        raise InputError(
            f"Shift distances must be whole numbers separated by commas, e.g. '3, 6'; got '{text}'."
        ) from None
    if not values:
        raise InputError("Give at least one shift distance (e.g. '5'), or set shifts to 'none'.")
    return values


def block_setting(value: int) -> int | None:
    """``FeatureConfig.layer`` for the Block box's value: -1 (the last block) is the default ``None``."""
    return None if value == LAST_BLOCK else int(value)


def weights_text(value: Any) -> str:
    """The weights field's text; empty (or '.') means "use the preset"."""
    text = str(value or "").strip()
    return "" if text in ("", ".") else text


def weights_choice(path: str | Path) -> str:
    """What to load for a file picked in the weights dialog: a .pth/.safetensors file, or the folder of a config.json."""
    path = Path(path)
    if (
        path.name in ("config.json", "model.safetensors", "pytorch_model.bin")
        and (path.parent / "config.json").exists()
    ):
        return str(path.parent)
    return str(path)


def matching_preset(config: FeatureConfig) -> str:
    """The quality preset whose values ``config`` has, else :data:`CUSTOM_PRESET`."""
    for name, values in PRESETS.items():
        if all(getattr(config, field) == value for field, value in values.items()):
            return name
    return CUSTOM_PRESET


class FeatureSettingsControls:
    """The controls of the feature settings: backbone, weights and quality (Compute tab), the rest (Advanced tab).

    :meth:`read` turns them into a FeatureConfig, :meth:`show` shows one; :attr:`setting_controls` are those
    whose change makes new settings (the quality preset applies a preset instead).
    """

    def __init__(self) -> None:
        self.backbone = field_control("backbone", choices=backbone_names(), tooltip="DINOv2 / DINOv3 preset")
        self.weights = LineEdit(label="Weights", value="", tooltip=WEIGHTS_TIP)
        self.weights.native.setPlaceholderText(WEIGHTS_PLACEHOLDER)
        self.weights.native.setClearButtonEnabled(True)
        self.select_weights = PushButton(text="Select weights...")
        self.select_weights.native.setToolTip(
            "Pick an official .pth file, or the config.json inside a downloaded Hugging Face model folder"
        )
        self.weights_row = Container(widgets=[self.weights, self.select_weights], layout="horizontal", labels=False)
        self.weights_row.label = "Weights"
        self.weights_row.native.layout().setContentsMargins(0, 0, 0, 0)
        self.preset = ComboBox(
            label="Quality",
            choices=[*PRESETS, CUSTOM_PRESET],
            value="balanced",
            tooltip="fast: 5 passes; balanced: 9 passes; quality: 17 passes (advanced tab for the details)",
        )
        self.shifts = field_control("shifts")
        self.distances = field_control("shift_distances", tooltip="Pixels, comma separated, e.g. '3, 6'")
        self.flips = field_control("flips")
        self.rotations = field_control("rotations")
        # 0 stands for the field's None in the dock's spin boxes: the patch size (stride), the whole image (tile).
        self.stride = field_control("stride", min=0, max=16, tooltip="Patch stride in pixels; 0 = patch size")
        self.resize = field_control("resize")
        self.tile_size = field_control(
            "tile_size", min=0, max=8192, step=14, tooltip=f"{field_spec('tile_size').help}; 0 = the whole image"
        )
        self.facet = field_control("facet", tooltip=FACET_TIP)
        self.layer = field_control("layer", min=-MAX_BLOCKS, max=MAX_BLOCKS - 1, value=LAST_BLOCK, tooltip=BLOCK_TIP)
        self.runtime = field_control("runtime")
        self.device = field_control("device", choices=list(DEVICES), value="auto")
        self.channel_mode = field_control("channel_mode", tooltip=CHANNELS_TIP)

    @property
    def setting_controls(self) -> tuple[Any, ...]:
        """The controls whose change makes new settings."""
        return (
            self.backbone, self.weights, self.shifts, self.distances, self.flips, self.rotations, self.stride,
            self.resize, self.facet, self.layer, self.tile_size, self.runtime, self.device, self.channel_mode,
        )  # fmt: skip

    @property
    def advanced_controls(self) -> tuple[Any, ...]:
        """The Advanced tab's controls, in order (runtime and device last: the precision line follows them)."""
        return (
            self.shifts, self.distances, self.flips, self.rotations, self.stride, self.resize, self.facet,
            self.layer, self.channel_mode, self.tile_size, self.runtime, self.device,
        )  # fmt: skip

    @property
    def uses_weights_path(self) -> bool:
        """True while a weights path overrides the Backbone preset."""
        return bool(weights_text(self.weights.value))

    def read(self, base: FeatureConfig) -> FeatureConfig:
        """``base`` with the controls' values (raises InputError if a field is invalid)."""
        tile = int(self.tile_size.value) or None
        overlap = base.tile_overlap if tile is None else min(base.tile_overlap, max(tile // 2 - 1, 0))
        return base.replace(
            backbone=weights_text(self.weights.value) or str(self.backbone.value),
            shifts=self.shifts.value,
            shift_distances=parse_distances(self.distances.value),
            flips=bool(self.flips.value),
            rotations=bool(self.rotations.value),
            stride=int(self.stride.value) or None,
            resize=self.resize.value,
            facet=self.facet.value,
            layer=block_setting(int(self.layer.value)),
            tile_size=tile,
            tile_overlap=overlap,
            runtime=self.runtime.value,
            device=self.device.value,
            channel_mode=self.channel_mode.value,
        )

    def show(self, config: FeatureConfig) -> None:
        """Show ``config`` in the controls (the caller blocks its change handlers meanwhile)."""
        if config.backbone in backbone_names():
            self.backbone.value = config.backbone
            self.weights.value = ""
        else:
            self.weights.value = config.backbone
        self.shifts.value = config.shifts
        self.distances.value = ", ".join(str(d) for d in config.shift_distances)
        self.flips.value = config.flips
        self.rotations.value = config.rotations
        self.stride.value = config.stride or 0
        self.resize.value = config.resize
        self.facet.value = config.facet
        self.layer.value = LAST_BLOCK if config.layer is None else int(config.layer)
        self.tile_size.value = config.tile_size or 0
        if config.device not in self.device.choices:
            self.device.set_choice(config.device, config.device)
        self.device.value = config.device
        self.runtime.value = config.runtime
        self.channel_mode.value = config.channel_mode
        self.preset.value = matching_preset(config)
