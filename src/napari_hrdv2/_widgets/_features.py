"""The "HR-Dv2 Features" dock widget: backbone and settings, Compute (PCA / attention / feature channel layers),
progressive first views, similarity clicks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, Label, LineEdit, PushButton, SpinBox

from .._layers import (
    SourceGeometry,
    assemble_planes,
    attention_layer_data,
    current_plane,
    feature_channel,
    features_layer_data,
    find_result_layer,
    pca_layer_data,
    plane_of,
    plugin_tag,
    result_name,
    similarity_layer_data,
    upsert_layer,
)
from .._workers import BackboneInfo, FeaturesResult, PartialFeatures, features_job, similarity_job
from ..core.backbone.loading import backbone_names, find_spec
from ..core.config import FACETS, PRESETS, FeatureConfig
from ..core.errors import HRDv2Error, InputError, WeightsNotFoundError
from ._common import image_layer_choices, wrap_label
from ._dock import DockFrame, tab_page
from ._runner import format_duration, notify_error
from ._session import session_for

if TYPE_CHECKING:  # pragma: no cover
    import napari
    from napari.qt.threading import GeneratorWorker

CUSTOM_PRESET = "custom"
DEVICES = ("auto", "cpu", "cuda", "mps")
WEIGHTS_FILTER = "DINOv2 weights (*.pth *.pt *.safetensors config.json);;All files (*)"
#: The Block box's range is -MAX_BLOCKS .. MAX_BLOCKS - 1 (the largest DINOv2/v3 ViT has 40 blocks).
MAX_BLOCKS = 64
#: The Block box's value for "the last block" (``FeatureConfig.layer=None``).
LAST_BLOCK = -1
#: Shown while no weights path is set.
WEIGHTS_PLACEHOLDER = "empty: use the Backbone preset"


def _parse_distances(text: str) -> tuple[int, ...]:
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


def _path_text(value: Any) -> str:
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


def describe_source(backbone: str) -> str:
    """What loading ``backbone`` will actually read, in words (no loading, no network)."""
    try:
        return _describe_source(backbone)
    except OSError as err:  # e.g. a name longer than the file system allows
        return f"{backbone} (unusable path: {err.strerror or err})"


def _describe_source(backbone: str) -> str:
    spec = find_spec(backbone)
    path = Path(backbone).expanduser()
    if spec is not None and not path.exists():
        where = _hub_cache_state(spec.hf_id)
        return f"preset {spec.name} = Hugging Face {spec.hf_id} ({where})"
    if path.is_dir():
        ok = (path / "config.json").is_file()
        return f"local folder {path}" + ("" if ok else " (no config.json: not a save_pretrained folder)")
    if path.is_file():
        return f"checkpoint file {path.name} in {path.parent}"
    if path.suffix or "/" in backbone and backbone.startswith((".", "/", "~")):
        return f"{backbone} (does not exist)"
    return f"Hugging Face {backbone} ({_hub_cache_state(backbone)})"


def _hub_cache_state(hf_id: str) -> str:
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(hf_id, "config.json")
    except Exception:  # noqa: BLE001 - only a hint
        cached = None
    if isinstance(cached, str):
        return "in the Hugging Face cache"
    return f"not downloaded yet: Compute asks before downloading it, or run `hf download {hf_id}`"


def refining_message(name: str, item: Any, remaining: float | None, backbone: Any) -> str:
    """Status after a partial result, e.g. 'First view of cells (1 of 9 passes); refining. About 2 min left ...'."""
    text = f"{'First view' if item.n_transforms == 1 else 'Refined view'} of {name} "
    text += f"({item.n_transforms} of {item.total} passes); refining."
    if remaining is not None:
        text += f" About {format_duration(remaining)} left"
        on_cpu = backbone is None or str(backbone[1].device).startswith("cpu")
        if remaining > 30 and on_cpu:
            text += " on the CPU (the 'fast' quality or a GPU is quicker)"
        text += "."
    return text


@contextmanager
def keep_active_layer(viewer: Any) -> Iterator[None]:
    """Restore the selected layer after adding result layers (the user keeps painting the scribbles)."""
    active = viewer.layers.selection.active
    try:
        yield
    finally:
        if active is not None and active in viewer.layers and viewer.layers.selection.active is not active:
            viewer.layers.selection.active = active


class FeaturesWidget(DockFrame, Container):
    """Compute HR-Dv2 features of an image layer and show them as PCA-RGB, attention and feature layers.

    Pinned API: :meth:`set_settings`, :attr:`settings`, :meth:`compute` (returns the started worker).
    The settings are shared with the viewer's "HR-Dv2 Segmentation" widget.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__(labels=True)
        self._viewer = napari_viewer
        self._session = session_for(napari_viewer)
        self._syncing = False
        self._runners = []
        self._feature_ranges: dict[str, tuple[float, float]] = {}
        #: Per source image: (config dict, (1 + heads, [N,] H, W) attention maps) behind the attention layer.
        self._attention_maps: dict[str, tuple[dict, np.ndarray]] = {}

        self._image = ComboBox(label="Image", choices=self._image_choices, nullable=True)
        # ---- Compute tab
        self._backbone = ComboBox(
            label="Backbone", choices=backbone_names(), value="dinov2_vits14", tooltip="DINOv2 preset"
        )
        self._weights = LineEdit(
            label="Weights",
            value="",
            tooltip="Optional: a downloaded Hugging Face folder (save_pretrained / hf download --local-dir), an "
            "official torch.hub .pth file, or a Hugging Face id. Empty: the Backbone preset.",
        )
        self._weights.native.setPlaceholderText(WEIGHTS_PLACEHOLDER)
        self._weights.native.setClearButtonEnabled(True)
        self._select_weights = PushButton(text="Select weights...")
        self._select_weights.native.setToolTip(
            "Pick an official .pth file, or the config.json inside a downloaded Hugging Face model folder"
        )
        weights_row = Container(widgets=[self._weights, self._select_weights], layout="horizontal", labels=False)
        weights_row.label = "Weights"
        weights_row.native.layout().setContentsMargins(0, 0, 0, 0)
        self._source = Label(label="Loads", tooltip="What Compute will load")
        self._card = Label(label="Model", value="not loaded yet (loads on the first Compute)")
        self._preset = ComboBox(
            label="Quality",
            choices=[*PRESETS, CUSTOM_PRESET],
            value="balanced",
            tooltip="fast: 5 passes; balanced: 9 passes; quality: 17 passes (advanced tab for the details)",
        )
        self._want_pca = CheckBox(text="PCA view", value=True)
        self._want_attention = CheckBox(text="Attention", value=True)
        self._want_features = CheckBox(text="Features", value=True, tooltip="Browse channels in the Views tab")
        outputs = Container(widgets=[self._want_pca, self._want_attention, self._want_features], layout="horizontal")
        outputs.label = "Layers"
        outputs.native.layout().setContentsMargins(0, 0, 0, 0)
        self._compute_plane = PushButton(text="Compute")
        self._compute_plane.native.setToolTip("Compute the current plane (the image, or the plane shown of a stack)")
        self._compute_all = PushButton(text="All planes")
        self._compute_all.native.setToolTip("Compute every plane of a stack")
        buttons = Container(widgets=[self._compute_plane, self._compute_all], layout="horizontal", labels=False)
        buttons.native.layout().setContentsMargins(0, 0, 0, 0)
        # ---- Views tab
        self._channel = SpinBox(
            label="Channel", min=0, max=0, tooltip="Which feature channel the '<image> features' layer shows"
        )
        self._head = SpinBox(
            label="Attention head", min=0, max=0, enabled=False, tooltip="0: mean over heads; 1, 2...: one head"
        )
        self._similarity_mode = CheckBox(
            text="Similarity: click a pixel",
            tooltip="Click the image to map the cosine similarity of every pixel to it",
        )
        # ---- Advanced tab
        self._shifts = ComboBox(label="Shifts", choices=["none", "neumann", "moore"])
        self._distances = LineEdit(label="Shift distances", tooltip="Pixels, comma separated, e.g. '3, 6'")
        self._flips = CheckBox(text="Flips", value=False)
        self._rotations = CheckBox(
            text="Rotations", value=False, tooltip="Also rotate every copy by 90, 180 and 270 degrees (4x the passes)"
        )
        self._stride = SpinBox(label="Stride", min=0, max=16, tooltip="Patch stride in pixels; 0 = patch size")
        self._resize = ComboBox(label="Resize", choices=["bilinear", "nearest"])
        self._tile_size = SpinBox(label="Tile size", min=0, max=8192, step=14, tooltip="Pixels; 0 = whole image")
        self._facet = ComboBox(
            label="Facet",
            choices=list(FACETS),
            value="token",
            tooltip="What each pixel's features are: 'token' (default) = the block's output tokens after the final "
            "norm; 'key' / 'query' / 'value' = the block's attention projections (HR-Dv2 and Amir et al. use the last "
            "block's keys). A model trained on one facet only applies to features of that facet.",
        )
        self._layer = SpinBox(
            label="Block",
            min=-MAX_BLOCKS,
            max=MAX_BLOCKS - 1,
            value=LAST_BLOCK,
            tooltip="Which transformer block to read: -1 = the last (default), 0 = the first, negative counts from "
            "the end (e.g. -4 for an intermediate block). The attention maps are that block's.",
        )
        self._device = ComboBox(label="Device", choices=list(DEVICES))
        self._precision = Label(label="Precision", tooltip="Device and compute dtype in use, and why")
        for label in (self._source, self._card, self._precision):
            wrap_label(label.native, selectable=True)

        self.extend([self._image])
        from ._analysis import AnalysisControls  # PCA basis over planes, region/CLS similarity, matching

        self._analysis = AnalysisControls(self)
        self._views_page = tab_page(self._channel, self._head, self._similarity_mode, self._analysis)
        self._build_frame(
            [
                ("Compute", tab_page(self._backbone, weights_row, self._source, self._card, self._preset, outputs, buttons)),
                ("Views", self._views_page),
                (
                    "Advanced",
                    tab_page(
                        self._shifts, self._distances, self._flips, self._rotations, self._stride, self._resize,
                        self._facet, self._layer, self._tile_size,
                        self._device, self._precision,
                    ),
                ),
            ],
            on_cancel=self.cancel,
        )  # fmt: skip
        self._cancel = self._progress.cancel_button
        self._runner = self._make_runner()

        self._show_settings(self._session.config)
        for widget in (self._backbone, self._weights, self._shifts, self._distances, self._flips, self._rotations):
            widget.changed.connect(self._on_setting_changed)
        for widget in (self._stride, self._resize, self._facet, self._layer, self._tile_size, self._device):
            widget.changed.connect(self._on_setting_changed)
        self._preset.changed.connect(self._on_preset_changed)
        self._device.changed.connect(self._show_precision)
        self._select_weights.changed.connect(self._select_weights_clicked)
        self._compute_plane.changed.connect(self._compute_clicked)
        self._compute_all.changed.connect(partial(self._compute_clicked, all_planes=True))
        self._channel.changed.connect(self._channel_changed)
        self._head.changed.connect(self._head_changed)
        self._similarity_mode.changed.connect(self._similarity_toggled)
        self._image.changed.connect(self._image_changed)
        self._session.config_changed.connect(self._show_settings)
        self._session.backbone_changed.connect(self._show_card)
        napari_viewer.layers.events.removed.connect(self._on_layer_removed)
        self._follow_layers()
        self._show_card(self._session.backbone_info)

    # ------------------------------------------------------------------ settings
    @property
    def settings(self) -> FeatureConfig:
        """The FeatureConfig the controls describe (raises InputError if a field is invalid)."""
        base = self._session.config
        tile = int(self._tile_size.value) or None
        overlap = base.tile_overlap if tile is None else min(base.tile_overlap, max(tile // 2 - 1, 0))
        return base.replace(
            backbone=_path_text(self._weights.value) or str(self._backbone.value),
            shifts=self._shifts.value,
            shift_distances=_parse_distances(self._distances.value),
            flips=bool(self._flips.value),
            rotations=bool(self._rotations.value),
            stride=int(self._stride.value) or None,
            resize=self._resize.value,
            facet=self._facet.value,
            layer=block_setting(int(self._layer.value)),
            tile_size=tile,
            tile_overlap=overlap,
            device=self._device.value,
        )

    def set_settings(self, config: FeatureConfig) -> None:
        """Show ``config`` in the controls and share it with the viewer's other HR-Dv2 widget."""
        self._session.config = config
        self._show_settings(config)

    def _show_settings(self, config: FeatureConfig) -> None:
        self._syncing = True
        try:
            if config.backbone in backbone_names():
                self._backbone.value = config.backbone
                self._weights.value = ""
            else:
                self._weights.value = config.backbone
            self._shifts.value = config.shifts
            self._distances.value = ", ".join(str(d) for d in config.shift_distances)
            self._flips.value = config.flips
            self._rotations.value = config.rotations
            self._stride.value = config.stride or 0
            self._resize.value = config.resize
            self._facet.value = config.facet
            self._layer.value = LAST_BLOCK if config.layer is None else int(config.layer)
            self._tile_size.value = config.tile_size or 0
            if config.device not in self._device.choices:
                self._device.set_choice(config.device, config.device)
            self._device.value = config.device
            self._preset.value = self._matching_preset(config)
        finally:
            self._syncing = False
        self._show_source(config)
        self._show_precision()

    def _show_source(self, config: FeatureConfig) -> None:
        """The one line that says what Compute will load; the preset box is greyed out while a path overrides it."""
        self._source.value = describe_source(config.backbone)
        self._backbone.enabled = not _path_text(self._weights.value)
        info = self._session.backbone_info
        if info is not None and info[0] != config.backbone:
            self._show_card(None)

    def _show_card(self, info: tuple[str, BackboneInfo] | None) -> None:
        if info is None:
            self._card.value = "not loaded yet (loads on the first Compute)"
        elif info[0] == self._session.config.backbone:
            self._card.value = info[1].card()
            self._card.tooltip = f"Loaded from {info[1].source}"
            self._show_help(None)

    def _show_precision(self) -> None:
        """Show which device and compute dtype the selected device gives here (e.g. bfloat16 on an AMX CPU)."""
        from ..core.runtime.devices import describe_precision

        try:
            self._precision.value = describe_precision(self._device.value, self._session.config.dtype)
        except HRDv2Error as err:
            self._precision.value = str(err)

    @staticmethod
    def _matching_preset(config: FeatureConfig) -> str:
        for name, values in PRESETS.items():
            if all(getattr(config, field) == value for field, value in values.items()):
                return name
        return CUSTOM_PRESET

    def _on_setting_changed(self, *_: Any) -> None:
        if self._syncing:
            return
        try:
            config = self.settings
        except HRDv2Error as err:
            self._set_status(str(err))
            return
        self._session.config = config
        self._syncing = True
        try:
            self._preset.value = self._matching_preset(config)
        finally:
            self._syncing = False
        self._show_source(config)
        self._set_status("")

    def _on_preset_changed(self, name: str) -> None:
        if self._syncing or name not in PRESETS:
            return
        try:
            self.set_settings(self.settings.replace(**PRESETS[name]))
        except HRDv2Error as err:
            self._set_status(str(err))

    def select_weights(self, path: str | Path) -> None:
        """Use the weights at ``path`` (a .pth/.safetensors file, a model folder, or a config.json inside one)."""
        self._weights.value = weights_choice(path)

    def _select_weights_clicked(self, *_: Any) -> None:
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getOpenFileName(self.native, "Select DINOv2 weights", "", WEIGHTS_FILTER)
        if path:
            self.select_weights(path)

    def _on_job_error(self, error: BaseException) -> None:
        if isinstance(error, WeightsNotFoundError):
            self._show_help(f"{error}")
            self._tabs.setCurrentIndex(0)
            self._select_weights.native.setFocus()

    def _on_job_item(self, item: Any) -> None:
        """A job's non-progress report: the loaded backbone's card, or a partial result."""
        if isinstance(item, BackboneInfo):
            self._session.backbone_info = (self._session.config.backbone, item)

    # ------------------------------------------------------------------ layer choices
    def _image_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        return image_layer_choices(self._viewer)

    def _refresh_choices(self, *_: Any) -> None:
        self._auto_select()

    def _select(self, layer: Any) -> None:
        """Show the layer a programmatic call used in the Image box (similarity clicks follow it)."""
        if layer in self._viewer.layers and layer is not self._image.value:
            self._choose_image(layer)

    def _image_changed(self, layer: Any) -> None:
        self._sync_channel_box(layer)

    # ------------------------------------------------------------------ compute
    def compute(self, layer: Any, *, all_planes: bool = False) -> GeneratorWorker | None:
        """Compute HR-Dv2 features of the current plane (or all planes) of ``layer`` in a thread worker.

        Adds or updates "<image> PCA" (a first view after the identity pass, then refined), "<image>
        attention" and "<image> features". Returns the started worker, or None after notifying the
        user when the input or settings are invalid.
        """
        try:
            if layer is None:
                raise InputError("Choose an image layer first (open an image, or File > Open Sample > HR-Dv2).")
            geometry = SourceGeometry.from_layer(layer)
            config = self.settings
        except HRDv2Error as err:
            notify_error(err)
            self._set_status(str(err))
            return None
        self._session.config = config
        self._select(layer)
        self._show_help(None)
        if not self._may_download(config.backbone):
            return None
        indices = geometry.plane_indices if all_planes else [current_plane(self._viewer, layer)]
        basis = self._session.pca_bases.get((geometry.name, config)) if geometry.is_stack else None
        return self._runner.start(
            features_job,
            layer.data,
            indices,
            config,
            self._session.cache,
            is_stack=geometry.is_stack,
            pca=bool(self._want_pca.value),
            attention=bool(self._want_attention.value),
            basis=basis,
            description=f"HR-Dv2 features of {geometry.name}",
            on_returned=partial(self._show_features, geometry, want_features=bool(self._want_features.value)),
            on_yielded=partial(self._on_features_item, geometry, config),
            source=layer,
        )

    def cancel(self, *_: Any) -> None:
        """Stop running computations at their next step."""
        self._runner.cancel()

    def _compute_clicked(self, *_: Any, all_planes: bool = False) -> None:
        self.compute(self._image.value, all_planes=all_planes)

    def _on_features_item(self, geometry: SourceGeometry, config: FeatureConfig, item: Any) -> None:
        if isinstance(item, PartialFeatures):
            self._show_partial(geometry, config, item)
        else:
            self._on_job_item(item)

    def _show_partial(self, geometry: SourceGeometry, config: FeatureConfig, item: PartialFeatures) -> None:
        """A first (or refined) PCA view of one plane while the other passes run."""
        if item.pca is None:
            return
        config_dict = config.to_dict()
        base = self._reusable_data(geometry, "PCA", "image", config_dict)
        rgb = assemble_planes(geometry, {item.index: item.pca}, dtype=np.float32, base=base)
        with keep_active_layer(self._viewer):
            upsert_layer(self._viewer, pca_layer_data(geometry, rgb, config=config_dict, partial=True))
        self._set_status(refining_message(geometry.name, item, self._progress.remaining, self._session.backbone_info))

    def _show_features(self, geometry: SourceGeometry, result: FeaturesResult, *, want_features: bool = True) -> None:
        key = (geometry.name, result.config)
        config_dict = result.config.to_dict()
        for stale in [k for k in self._session.encodings if k[0] == geometry.name and k != key]:
            del self._session.encodings[stale]
        if want_features:  # the planes encoded so far back the lazy features layer (held only for it)
            encodings = self._session.encodings.setdefault(key, {})
            encodings.update(result.encodings)
        if result.basis is not None:
            self._session.pca_bases[key] = result.basis
        with keep_active_layer(self._viewer):
            # Added bottom-up above the image: attention and features (hidden), then the PCA view on top.
            if result.attention:
                previous = self._attention_maps.get(geometry.name)
                same = previous is not None and previous[0] == config_dict
                base = previous[1] if same else None
                maps = assemble_planes(geometry, result.attention, dtype=np.float32, base=base, channel_axis=True)
                self._attention_maps[geometry.name] = (config_dict, maps)
                self._head.max = maps.shape[0] - 1
                self._head.enabled = True
                head = min(int(self._head.value), maps.shape[0] - 1)
                upsert_layer(self._viewer, attention_layer_data(geometry, maps, head=head, config=config_dict))
            if want_features:
                self._feature_ranges[geometry.name] = result.feature_range
                self._sync_channel_box(self._image.value)
                self._show_channel(geometry, key, int(self._channel.value))
            if result.pca:
                base = self._reusable_data(geometry, "PCA", "image", config_dict)
                rgb = assemble_planes(geometry, result.pca, dtype=np.float32, base=base)
                upsert_layer(self._viewer, pca_layer_data(geometry, rgb, config=config_dict))
        planes = ", ".join(str(i + 1) for i in sorted(result.encodings)) if geometry.is_stack else ""
        self._set_status(f"Features of {geometry.name}{' plane(s) ' + planes if planes else ''} ready.")

    # ------------------------------------------------------------------ feature channels
    def _encodings_of(self, name: str) -> tuple[tuple[str, FeatureConfig], dict[int, Any]] | None:
        for key, encodings in self._session.encodings.items():
            if key[0] == name and encodings:
                return key, encodings
        return None

    def _sync_channel_box(self, layer: Any) -> None:
        """Range of the channel box: the features of the selected image (disabled until computed)."""
        found = self._encodings_of(layer.name) if layer is not None else None
        n_features = next(iter(found[1].values())).n_features if found else 0
        self._channel.enabled = n_features > 0
        self._channel.max = max(n_features - 1, 0)
        self._channel.label = f"Channel (0-{n_features - 1})" if n_features else "Channel"

    def _channel_changed(self, channel: int) -> None:
        image = self._image.value
        found = self._encodings_of(image.name) if image is not None else None
        if found is None:
            return
        try:
            geometry = SourceGeometry.from_layer(image)
        except HRDv2Error:
            return
        self._show_channel(geometry, found[0], int(channel), reveal=True)

    def _head_changed(self, head: int) -> None:
        image = self._image.value
        stored = self._attention_maps.get(image.name) if image is not None else None
        if stored is None:
            return
        try:
            geometry = SourceGeometry.from_layer(image)
        except HRDv2Error:
            return
        config_dict, maps = stored
        with keep_active_layer(self._viewer):
            layer = upsert_layer(self._viewer, attention_layer_data(geometry, maps, head=int(head), config=config_dict))
        layer.visible = True

    def _show_channel(self, geometry: SourceGeometry, key: Any, channel: int, *, reveal: bool = False) -> None:
        """Put feature ``channel`` into the one "<image> features" layer ((H, W) or (N, H, W))."""
        encodings = self._session.encodings.get(key)
        if not encodings:
            return
        n_features = next(iter(encodings.values())).n_features
        channel = min(max(int(channel), 0), n_features - 1)
        data = feature_channel(geometry, encodings, channel)
        low, high = self._feature_ranges.get(geometry.name, (0.0, 1.0))
        layer_data = features_layer_data(
            geometry, data, channel=channel, n_features=n_features, contrast_limits=(low, high),
            config=key[1].to_dict(),
        )  # fmt: skip
        with keep_active_layer(self._viewer):
            layer = upsert_layer(self._viewer, layer_data)
        if reveal:
            layer.visible = True

    def _on_layer_removed(self, event: Any) -> None:
        """Free what a removed layer kept alive: a source's encodings and PCA basis, a features layer's maps."""
        layer = event.value
        tag = plugin_tag(layer)
        if tag is None:
            self._session.forget_layer(str(layer.name))
            self._attention_maps.pop(str(layer.name), None)
            self._feature_ranges.pop(str(layer.name), None)
        elif tag.get("kind") == "features":
            for key in [k for k in self._session.encodings if k[0] == tag.get("source")]:
                del self._session.encodings[key]
        elif tag.get("kind") == "attention":
            self._attention_maps.pop(str(tag.get("source")), None)

    def _reusable_data(self, geometry: SourceGeometry, kind: str, layer_type: str, config: dict) -> Any:
        """Current data of a result layer computed with the same settings (other planes are kept)."""
        layer = find_result_layer(self._viewer, result_name(geometry.name, kind), layer_type)
        if layer is None or (plugin_tag(layer) or {}).get("config") != config:
            return None
        return layer.data

    # ------------------------------------------------------------------ similarity
    def similarity(self, layer: Any, row: int, col: int, *, plane: int = 0) -> GeneratorWorker | None:
        """Map the cosine similarity of every pixel of ``plane`` to pixel (row, col) as "<image> similarity"."""
        try:
            geometry = SourceGeometry.from_layer(layer)
            config = self.settings
            pixels = plane_of(layer, plane)
            height, width = geometry.plane_shape
            if not (0 <= row < height and 0 <= col < width):
                raise InputError(f"Pixel ({row}, {col}) lies outside the {height}x{width} image.")
        except HRDv2Error as err:
            notify_error(err)
            return None
        if not self._may_download(config.backbone):
            return None
        return self._runner.start(
            similarity_job,
            pixels,
            row,
            col,
            config,
            self._session.cache,
            description=f"HR-Dv2 similarity on {geometry.name}",
            on_returned=partial(self._show_similarity, geometry, plane, (row, col)),
            on_yielded=self._on_job_item,
            source=layer,
        )

    def _show_similarity(self, geometry: SourceGeometry, plane: int, pixel: tuple[int, int], similarity: Any) -> None:
        existing = find_result_layer(self._viewer, result_name(geometry.name, "similarity"), "image")
        base = existing.data if existing is not None else None
        data = assemble_planes(geometry, {plane: similarity}, dtype=np.float32, base=base)
        where = (plane, *pixel) if geometry.is_stack else pixel
        with keep_active_layer(self._viewer):
            upsert_layer(self._viewer, similarity_layer_data(geometry, data, pixel=where))
        self._set_status(f"Similarity to pixel {where} of {geometry.name}.")

    def _similarity_toggled(self, enabled: bool) -> None:
        callbacks = self._viewer.mouse_drag_callbacks
        if enabled and self._on_click not in callbacks:
            callbacks.append(self._on_click)
            self._set_status("Click a pixel of the image to map its feature similarity.")
        elif not enabled and self._on_click in callbacks:
            callbacks.remove(self._on_click)

    def _on_click(self, _viewer: Any, event: Any) -> None:
        layer = self._image.value
        if layer is None or event.type != "mouse_press" or getattr(event, "button", 1) != 1:
            return
        try:
            geometry = SourceGeometry.from_layer(layer)
        except HRDv2Error:
            return
        coords = np.asarray(layer.world_to_data(event.position), dtype=float)
        row, col = int(round(coords[-2])), int(round(coords[-1]))
        height, width = geometry.plane_shape
        if not (0 <= row < height and 0 <= col < width):
            return
        plane = int(np.clip(round(coords[0]), 0, geometry.n_planes - 1)) if geometry.is_stack else 0
        self.similarity(layer, row, col, plane=plane)

    # ------------------------------------------------------------------ status
    @property
    def is_busy(self) -> bool:
        """True while a job started from this widget is running."""
        return self._runner.busy

    def _set_busy(self, busy: bool) -> None:
        self._compute_plane.enabled = not busy
        self._compute_all.enabled = not busy
        self._progress.set_busy(busy)
