"""The "HR-Dv2 Features" dock widget: backbone and settings, Compute (PCA / attention / feature channel layers),
progressive first views, similarity clicks.

The dock gathers inputs and starts jobs; :mod:`._feature_settings` builds the settings controls,
:class:`~._feature_views.FeatureViews` shows results and browses them, :class:`~._similarity_pick.SimilarityPicker`
maps similarities to a clicked pixel and :class:`~._analysis.AnalysisControls` holds the dataset tools.
"""

from __future__ import annotations

import contextlib
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import CheckBox, ComboBox, Container, Label, PushButton

from .._layers import SourceGeometry, current_plane, image_data
from .._workers import BackboneInfo, FeaturesResult, PartialFeatures, features_job
from ..core.config import PRESETS, FeatureConfig
from ..core.errors import HRDv2Error, InputError, WeightsNotFoundError
from ._analysis import AnalysisControls
from ._backbone_source import describe_source
from ._common import image_layer_choices, refining_message, wrap_label
from ._dock import DockFrame, tab_page
from ._feature_settings import WEIGHTS_FILTER, FeatureSettingsControls, matching_preset, weights_choice
from ._feature_views import FeatureViews
from ._runner import notify_error
from ._session import session_for
from ._similarity_pick import SimilarityPicker

if TYPE_CHECKING:  # pragma: no cover
    import napari
    from napari.qt.threading import GeneratorWorker

NOT_LOADED = "not loaded yet (loads on the first Compute)"


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
        self._image = ComboBox(label="Image", choices=self._image_choices, nullable=True)
        self.controls = FeatureSettingsControls()
        self.views = FeatureViews(napari_viewer, self._session)
        self._init_messages()
        self._runner = self._make_runner()
        self.picker = SimilarityPicker(
            napari_viewer, self._session, runner=self._runner, messages=self.messages,
            settings=lambda: self.settings, image=lambda: self._image.value, on_item=self._on_job_item,
        )  # fmt: skip
        self._analysis = AnalysisControls(
            napari_viewer, self._session, runner=self._runner, messages=self.messages,
            image=lambda: self._image.value, settings=lambda: self.settings,
        )  # fmt: skip
        self._build_compute_controls()
        self._expose_controls()
        self.extend([self._image])
        self._build_frame(self._build_tabs(), on_cancel=self.cancel)
        self._cancel = self._progress.cancel_button
        self._show_settings(self._session.config)
        self._connect()
        self._follow_layers()
        self._show_card(self._session.backbone_info)

    def _expose_controls(self) -> None:
        """The parts' controls as the dock's attributes (scripts and tests reach them there)."""
        controls = self.controls
        self._backbone, self._weights, self._preset = controls.backbone, controls.weights, controls.preset
        self._select_weights, self._facet, self._layer = controls.select_weights, controls.facet, controls.layer
        self._device = controls.device
        self._channel, self._head = self.views.channel, self.views.head
        self._similarity_mode, self._on_click = self.picker.mode, self.picker.on_click

    def _connect(self) -> None:
        """Controls and the shared session -> the dock's actions."""
        for widget in self.controls.setting_controls:
            widget.changed.connect(self._on_setting_changed)
        self._preset.changed.connect(self._on_preset_changed)
        self._device.changed.connect(self._show_precision)
        self.controls.runtime.changed.connect(self._show_precision)
        self._select_weights.changed.connect(self._select_weights_clicked)
        self._compute_plane.changed.connect(self._compute_clicked)
        self._compute_all.changed.connect(partial(self._compute_clicked, all_planes=True))
        self._channel.changed.connect(lambda channel: self.views.channel_changed(self._image.value, channel))
        self._head.changed.connect(lambda head: self.views.head_changed(self._image.value, head))
        self._image.changed.connect(self._image_changed)
        self._session.config_changed.connect(self._show_settings)
        self._session.backbone_changed.connect(self._show_card)
        self._viewer.layers.events.removed.connect(self._on_layer_removed)

    def _build_compute_controls(self) -> None:
        """The Compute tab's controls besides the settings: what loads, the model card, outputs and buttons."""
        self._source = Label(label="Loads", tooltip="What Compute will load")
        self._card = Label(label="Model", value=NOT_LOADED)
        self._precision = Label(label="Precision", tooltip="Device and compute dtype in use, and why")
        for label in (self._source, self._card, self._precision):
            wrap_label(label.native, selectable=True)
        self._want_pca = CheckBox(text="PCA view", value=True)
        self._want_attention = CheckBox(text="Attention", value=True)
        self._want_features = CheckBox(text="Features", value=True, tooltip="Browse channels in the Views tab")
        self._compute_plane = PushButton(text="Compute")
        self._compute_plane.native.setToolTip("Compute the current plane (the image, or the plane shown of a stack)")
        self._compute_all = PushButton(text="All planes")
        self._compute_all.native.setToolTip("Compute every plane of a stack")

    def _build_tabs(self) -> list[tuple[str, Container] | tuple[str, Container, Container | None]]:
        """The Compute, Views and Advanced pages."""
        outputs = Container(widgets=[self._want_pca, self._want_attention, self._want_features], layout="horizontal")
        outputs.label = "Layers"
        outputs.native.layout().setContentsMargins(0, 0, 0, 0)
        buttons = Container(widgets=[self._compute_plane, self._compute_all], layout="horizontal", labels=False)
        controls = self.controls
        compute = tab_page(controls.backbone, controls.weights_row, self._source, self._card, controls.preset, outputs)
        # One label column for the whole Views tab (a labelled container inside a labelled page doubles it).
        for index, widget in enumerate((self._channel, self._head, self._similarity_mode)):
            self._analysis.insert(index, widget)
        self._analysis.native.layout().setContentsMargins(4, 4, 4, 4)
        self._views_page = self._analysis
        return [
            ("Compute", compute, buttons),
            ("Views", self._views_page),
            ("Advanced", tab_page(*controls.advanced_controls, self._precision)),
        ]

    # ------------------------------------------------------------------ settings
    @property
    def settings(self) -> FeatureConfig:
        """The FeatureConfig the controls describe (raises InputError if a field is invalid)."""
        return self.controls.read(self._session.config)

    def set_settings(self, config: FeatureConfig) -> None:
        """Show ``config`` in the controls and share it with the viewer's other HR-Dv2 widget."""
        self._session.config = config
        self._show_settings(config)

    def _show_settings(self, config: FeatureConfig) -> None:
        self._syncing = True
        try:
            self.controls.show(config)
        finally:
            self._syncing = False
        self._show_source(config)
        self._show_precision()

    def _show_source(self, config: FeatureConfig) -> None:
        """The one line that says what Compute will load; the preset box is greyed out while a path overrides it."""
        self._source.value = describe_source(config.backbone)
        self._backbone.enabled = not self.controls.uses_weights_path
        info = self._session.backbone_info
        if info is not None and info[0] != config.backbone:
            self._show_card(None)

    def _show_card(self, info: tuple[str, BackboneInfo] | None) -> None:
        if info is None:
            self._card.value = NOT_LOADED
        elif info[0] == self._session.config.backbone:
            self._card.value = info[1].card()
            self._card.tooltip = f"Loaded from {info[1].source}"
            self._show_help(None)

    def _show_precision(self) -> None:
        """Show which device and compute dtype the selected device and runtime give here (e.g. bfloat16 on AMX)."""
        from ..core.runtime.devices import describe_precision

        try:
            self._precision.value = describe_precision(
                self._device.value, self._session.config.dtype, runtime=self.controls.runtime.value
            )
        except HRDv2Error as err:
            self._precision.value = str(err)

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
            self._preset.value = matching_preset(config)
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
            self._show_help(f"{error}", backbone=self._session.config.backbone)
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
        self.views.sync_channel_box(layer)

    def _on_layer_removed(self, event: Any) -> None:
        """Free what a removed layer kept alive (see :meth:`FeatureViews.forget`)."""
        self.views.forget(event.value)

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
        data, channel_names = image_data(self._viewer, layer, config.channel_mode)
        if len(channel_names) > 1:
            self._set_status(f"Channels (encoded separately): {', '.join(channel_names)}")
        return self._runner.start(
            features_job,
            data,
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
        if self.views.show_partial(geometry, config, item):
            remaining = self._progress.remaining
            self._set_status(refining_message(geometry.name, item, remaining, self._session.backbone_info))

    def _show_features(self, geometry: SourceGeometry, result: FeaturesResult, *, want_features: bool = True) -> None:
        status = self.views.show_features(geometry, result, image=self._image.value, want_features=want_features)
        self._set_status(status)

    # ------------------------------------------------------------------ similarity
    def similarity(self, layer: Any, row: int, col: int, *, plane: int = 0) -> GeneratorWorker | None:
        """Map the cosine similarity of every pixel of ``plane`` to pixel (row, col) as "<image> similarity"."""
        return self.picker.similarity(layer, row, col, plane=plane)

    # ------------------------------------------------------------------ status
    @property
    def is_busy(self) -> bool:
        """True while a job started from this widget is running."""
        return self._runner.busy

    def _set_busy(self, busy: bool) -> None:
        self._compute_plane.enabled = not busy
        self._compute_all.enabled = not busy
        self._progress.set_busy(busy)

    def _on_dock_closed(self) -> None:
        with contextlib.suppress(RuntimeError):  # the viewer's layers may already be deleted
            self.picker.toggle(False)
        super()._on_dock_closed()
