"""The "HR-Dv2 Features" dock widget: settings, Compute (PCA / attention / features layers), similarity clicks."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, LineEdit, PushButton, SpinBox

from .._layers import (
    SourceGeometry,
    assemble_planes,
    attention_layer_data,
    current_plane,
    features_layer_data,
    find_result_layer,
    lazy_features,
    pca_layer_data,
    plane_of,
    plugin_tag,
    result_name,
    similarity_layer_data,
    upsert_layer,
)
from .._workers import FeaturesResult, features_job, similarity_job
from ..core.backbones import backbone_names
from ..core.config import PRESETS, FeatureConfig
from ..core.errors import HRDv2Error, InputError
from ._common import connect_layer_list, image_layer_choices
from ._runner import JobRunner, notify_error
from ._session import session_for

if TYPE_CHECKING:  # pragma: no cover
    import napari
    from napari.qt.threading import GeneratorWorker

CUSTOM_PRESET = "custom"
DEVICES = ("auto", "cpu", "cuda", "mps")


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


def _path_text(value: Any) -> str:
    text = str(value or "").strip()
    return "" if text in ("", ".") else text


class FeaturesWidget(Container):
    """Compute HR-Dv2 features of an image layer and show them as PCA-RGB, attention and feature layers.

    Pinned API: :meth:`set_settings`, :attr:`settings`, :meth:`compute` (returns the started worker).
    The settings are shared with the viewer's "HR-Dv2 Segmentation" widget.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__(labels=True)
        self._viewer = napari_viewer
        self._session = session_for(napari_viewer)
        self._syncing = False

        self._image = ComboBox(label="Image", choices=self._image_choices, nullable=True)
        self._backbone = ComboBox(label="Backbone", choices=backbone_names(), value="dinov2_vits14")
        self._weights = FileEdit(
            label="Local weights",
            mode="r",
            filter="Weights (*.pth *.pt *.safetensors);;All files (*)",
            tooltip="Optional: an official torch.hub .pth file, or type the path of a save_pretrained folder. "
            "Overrides Backbone when set (for air-gapped PCs).",
        )
        self._preset = ComboBox(label="Quality", choices=[*PRESETS, CUSTOM_PRESET], value="balanced")
        self._show_advanced = CheckBox(text="Advanced settings", value=False)
        self._shifts = ComboBox(label="Shifts", choices=["none", "neumann", "moore"])
        self._distances = LineEdit(label="Shift distances", tooltip="Pixels, comma separated, e.g. '3, 6'")
        self._flips = CheckBox(text="Flips", value=False)
        self._stride = SpinBox(label="Stride", min=0, max=16, tooltip="Patch stride in pixels; 0 = patch size")
        self._resize = ComboBox(label="Resize", choices=["bilinear", "nearest"])
        self._tile_size = SpinBox(label="Tile size", min=0, max=8192, step=14, tooltip="Pixels; 0 = whole image")
        self._device = ComboBox(label="Device", choices=list(DEVICES))
        self._precision = Label(label="Precision", tooltip="Device and compute dtype in use, and why")
        self._advanced = Container(
            widgets=[
                self._shifts,
                self._distances,
                self._flips,
                self._stride,
                self._resize,
                self._tile_size,
                self._device,
                self._precision,
            ],
            labels=True,
            visible=False,
        )
        self._want_pca = CheckBox(text="PCA view", value=True)
        self._want_attention = CheckBox(text="Attention", value=True)
        self._want_features = CheckBox(text="Features (lazy)", value=True)
        outputs = Container(widgets=[self._want_pca, self._want_attention, self._want_features], layout="horizontal")
        outputs.label = "Layers"
        self._compute_plane = PushButton(text="Compute current plane")
        self._compute_all = PushButton(text="Compute all planes")
        self._cancel = PushButton(text="Cancel", enabled=False)
        buttons = Container(
            widgets=[self._compute_plane, self._compute_all, self._cancel], layout="horizontal", labels=False
        )
        self._similarity_mode = CheckBox(
            text="Similarity: click a pixel",
            tooltip="Click the image to map the cosine similarity of every pixel to it",
        )
        self._status = Label(value="")
        self.extend(
            [
                self._image,
                self._backbone,
                self._weights,
                self._preset,
                self._show_advanced,
                self._advanced,
                outputs,
                buttons,
                self._similarity_mode,
                self._status,
            ]
        )

        self._runner = JobRunner(on_busy=self._set_busy, on_status=self._set_status)
        self._show_settings(self._session.config)
        for widget in (self._backbone, self._weights, self._shifts, self._distances, self._flips):
            widget.changed.connect(self._on_setting_changed)
        for widget in (self._stride, self._resize, self._tile_size, self._device):
            widget.changed.connect(self._on_setting_changed)
        self._preset.changed.connect(self._on_preset_changed)
        self._device.changed.connect(self._show_precision)
        self._show_advanced.changed.connect(self._advanced_toggled)
        self._compute_plane.changed.connect(self._compute_clicked)
        self._compute_all.changed.connect(partial(self._compute_clicked, all_planes=True))
        self._cancel.changed.connect(self.cancel)
        self._similarity_mode.changed.connect(self._similarity_toggled)
        self._session.config_changed.connect(self._show_settings)
        connect_layer_list(napari_viewer, self._refresh_choices)
        napari_viewer.layers.events.removed.connect(self._on_layer_removed)

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
            stride=int(self._stride.value) or None,
            resize=self._resize.value,
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
            self._stride.value = config.stride or 0
            self._resize.value = config.resize
            self._tile_size.value = config.tile_size or 0
            if config.device not in self._device.choices:
                self._device.set_choice(config.device, config.device)
            self._device.value = config.device
            self._preset.value = self._matching_preset(config)
        finally:
            self._syncing = False
        self._show_precision()

    def _show_precision(self) -> None:
        """Show which device and compute dtype the selected device gives here (e.g. bfloat16 on an AMX CPU)."""
        from ..core.devices import describe_precision

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
        self._set_status("")

    def _on_preset_changed(self, name: str) -> None:
        if self._syncing or name not in PRESETS:
            return
        try:
            self.set_settings(self.settings.replace(**PRESETS[name]))
        except HRDv2Error as err:
            self._set_status(str(err))

    def _advanced_toggled(self, shown: bool) -> None:
        self._advanced.visible = bool(shown)

    # ------------------------------------------------------------------ layer choices
    def _image_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        return image_layer_choices(self._viewer)

    def _refresh_choices(self, *_: Any) -> None:
        self._image.reset_choices()

    def _select(self, layer: Any) -> None:
        """Show the layer a programmatic call used in the Image box (similarity clicks follow it)."""
        if layer in self._viewer.layers and layer is not self._image.value:
            self._image.reset_choices()
            self._image.value = layer

    # ------------------------------------------------------------------ compute
    def compute(self, layer: Any, *, all_planes: bool = False) -> GeneratorWorker | None:
        """Compute HR-Dv2 features of the current plane (or all planes) of ``layer`` in a thread worker.

        Adds or updates "<image> PCA", "<image> attention" and "<image> features". Returns the
        started worker, or None after notifying the user when the input or settings are invalid.
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
        )

    def cancel(self, *_: Any) -> None:
        """Stop running computations at their next step."""
        self._runner.cancel()

    def _compute_clicked(self, *_: Any, all_planes: bool = False) -> None:
        self.compute(self._image.value, all_planes=all_planes)

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
        if result.pca:
            base = self._reusable_data(geometry, "PCA", "image", config_dict)
            rgb = assemble_planes(geometry, result.pca, dtype=np.float32, base=base)
            upsert_layer(self._viewer, pca_layer_data(geometry, rgb, config=config_dict))
        if result.attention:
            base = self._reusable_data(geometry, "attention", "image", config_dict)
            maps = assemble_planes(geometry, result.attention, dtype=np.float32, base=base, channel_axis=True)
            upsert_layer(self._viewer, attention_layer_data(geometry, maps, config=config_dict))
        if want_features:
            lazy = lazy_features(geometry, encodings, result.n_features)
            upsert_layer(
                self._viewer,
                features_layer_data(geometry, lazy, contrast_limits=result.feature_range, config=config_dict),
            )
        planes = ", ".join(str(i + 1) for i in sorted(result.encodings)) if geometry.is_stack else ""
        self._set_status(f"Features of {geometry.name}{' plane(s) ' + planes if planes else ''} ready.")

    def _on_layer_removed(self, event: Any) -> None:
        """Free what a removed layer kept alive: a source's encodings and PCA basis, a features layer's maps."""
        layer = event.value
        tag = plugin_tag(layer)
        if tag is None:
            self._session.forget_layer(str(layer.name))
        elif tag.get("kind") == "features":
            for key in [k for k in self._session.encodings if k[0] == tag.get("source")]:
                del self._session.encodings[key]

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
        return self._runner.start(
            similarity_job,
            pixels,
            row,
            col,
            config,
            self._session.cache,
            description=f"HR-Dv2 similarity on {geometry.name}",
            on_returned=partial(self._show_similarity, geometry, plane, (row, col)),
        )

    def _show_similarity(self, geometry: SourceGeometry, plane: int, pixel: tuple[int, int], similarity: Any) -> None:
        existing = find_result_layer(self._viewer, result_name(geometry.name, "similarity"), "image")
        base = existing.data if existing is not None else None
        data = assemble_planes(geometry, {plane: similarity}, dtype=np.float32, base=base)
        where = (plane, *pixel) if geometry.is_stack else pixel
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
        self._cancel.enabled = busy

    def _set_status(self, text: str) -> None:
        self._status.value = text
