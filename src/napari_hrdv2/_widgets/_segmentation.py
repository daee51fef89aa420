"""The "HR-Dv2 Segmentation" dock widget: scribbles -> linear classifier -> label layers, live, batch, export.

The dock gathers inputs and starts jobs; its tabs (:mod:`._segmentation_train`, :mod:`._segmentation_predict`,
:mod:`._segmentation_batch`) hold the controls, :class:`~._live.LiveRetrain` the live mode,
:class:`~._class_sync.ClassSync` the class table, :class:`~._segmentation_results.SegmentationResults` the
result layers, :mod:`._segmentation_files` the files and :mod:`._segmentation_keys` the shortcuts.
"""

from __future__ import annotations

import contextlib
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, Container

from .._layers import ViewRegion, current_plane, find_result_layer, result_name
from ..core.config import FeatureConfig
from ..core.errors import HRDv2Error, WeightsNotFoundError
from ._class_sync import ClassSync
from ._common import image_layer_choices
from ._dock import DockFrame
from ._live import LiveRetrain
from ._model_text import describe_config, model_text
from ._scribbles_box import ScribblesBox
from ._segmentation_batch import BatchTab
from ._segmentation_files import ModelFiles, confirm_overwrite
from ._segmentation_jobs import SegmentationJobs, geometry_of, is_volume_layer, new_segmenter, warm_factory
from ._segmentation_keys import CLASS_KEYS, SHORTCUTS, DockShortcuts
from ._segmentation_predict import PredictTab
from ._segmentation_results import SegmentationResults
from ._segmentation_train import TrainTab
from ._session import session_for

if TYPE_CHECKING:  # pragma: no cover
    import napari
    from napari.qt.threading import GeneratorWorker


class SegmentationWidget(DockFrame, Container):
    """Train a linear classifier on HR-Dv2 features under brush scribbles and segment images.

    Pinned API: :meth:`train`, :meth:`predict` (both return the started worker), :meth:`save_model`,
    :meth:`load_model`. Feature settings and cached encodings are shared with the viewer's
    "HR-Dv2 Features" widget. The scribbles layer is only ever read (copied) here.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__(labels=True)
        self._viewer = napari_viewer
        self._session = session_for(napari_viewer)
        self._runners = []
        #: Factory of untrained segmenters (tests or scripts may swap in other hyper-parameters).
        self.make_segmenter = self._new_segmenter
        #: Asks before files are replaced; returns True to replace (tests swap in an answer).
        self.confirm_overwrite = confirm_overwrite
        self._image = ComboBox(label="Image", choices=self._image_choices, nullable=True)
        self.scribbles_box = ScribblesBox(napari_viewer)
        self._scribbles = self.scribbles_box.combo
        self.train_tab = TrainTab(on_pick_class=self._pick_class)
        self.predict_tab = PredictTab()
        self.batch_tab = BatchTab()
        self._expose_controls()
        self.extend([self._image, self.scribbles_box.row])
        self._build_frame(
            [
                ("Train", self.train_tab.page, self.train_tab.footer),
                ("Predict && export", self.predict_tab.page),
                ("Batch", self.batch_tab.page),
            ],
            on_cancel=self.cancel,
        )
        self._cancel = self._progress.cancel_button
        self._runner = self._make_runner()
        self._live_runner = self._make_runner(on_busy=self._set_live_busy)
        self._live_worker: GeneratorWorker | None = None
        self.live_mode = LiveRetrain(on_due=self._live_update)
        self._live_timer = self.live_mode.timer
        self.class_sync = ClassSync(self._classes, self._session, scribbles=lambda: self._scribbles.value)
        self.results = SegmentationResults(napari_viewer, self._session, display=self.predict_tab.display)
        self.shortcuts = DockShortcuts(napari_viewer, self.native)
        self.files = ModelFiles(
            napari_viewer, self._session, self.messages, self.native, confirm=lambda: self.confirm_overwrite,
            image=lambda: self._image.value, per_plane=lambda: bool(self.predict_tab.export_per_plane.value),
        )  # fmt: skip
        self.jobs = SegmentationJobs(
            napari_viewer,
            self._session,
            runner=self._runner,
            live_runner=self._live_runner,
            live_mode=self.live_mode,
            train_tab=self.train_tab,
            predict_tab=self.predict_tab,
            results=self.results,
            messages=self.messages,
            select=self._select,
            refresh_classes=self._refresh_classes,
            segmenter_factory=self._segmenter_factory,
            progress=self._progress,
        )
        self._connect()
        self._follow_layers()
        self.shortcuts.bind(self._key_actions())
        self._show_config(self._session.config)
        self._show_model(self._session.segmenter)

    def _expose_controls(self) -> None:
        """The tabs' controls as the dock's attributes (scripts and tests reach them there)."""
        train, predict, batch = self.train_tab, self.predict_tab, self.batch_tab
        self._classes, self._train, self._live = train.classes, train.train, train.live
        self._auto_segment, self._hybrid = train.auto_segment, train.hybrid
        self._head, self._refine = train.head, train.refine
        self._model_status, self._shortcuts = train.model_status, train.shortcuts
        self._predict_plane, self._predict_all = predict.predict_plane, predict.predict_all
        self._predict_view = predict.predict_view
        self._want_uncertainty, self._want_probabilities = predict.want_uncertainty, predict.want_probabilities
        self._opacity, self._contour = predict.opacity, predict.contour
        self._save, self._load, self._export = predict.save, predict.load, predict.export
        self._settings_summary = predict.settings_summary
        self._apply_folder = batch.apply_folder

    def _connect(self) -> None:
        """Buttons, boxes and the shared session -> the dock's actions."""
        self.scribbles_box.new_button.changed.connect(self._new_scribbles_clicked)
        self.predict_tab.open_features.changed.connect(self._open_features_widget)
        self._train.changed.connect(self._train_clicked)
        self._refine.changed.connect(self._refine_changed)
        self._live.changed.connect(self._live_toggled)
        self._scribbles.changed.connect(self._scribbles_changed)
        self._image.changed.connect(self._image_changed)
        self._predict_plane.changed.connect(self._predict_clicked)
        self._predict_all.changed.connect(partial(self._predict_clicked, all_planes=True))
        self._predict_view.changed.connect(self._predict_view_clicked)
        self._opacity.changed.connect(self._display_changed)
        self._contour.changed.connect(self._display_changed)
        self._save.changed.connect(self.files.save_clicked)
        self._load.changed.connect(self.files.load_clicked)
        self._export.changed.connect(self.files.export_clicked)
        self._apply_folder.changed.connect(self._apply_folder_clicked)
        self._classes.names_changed.connect(self._class_names_changed)
        self._session.config_changed.connect(self._show_config)
        self._session.segmenter_changed.connect(self._show_model)

    @property
    def is_busy(self) -> bool:
        """True while a job (training, prediction, batch, or a live update) started here is running."""
        return self._runner.busy or self._live_runner.busy

    def _new_segmenter(self) -> Any:
        return new_segmenter(hybrid=bool(self._hybrid.value), head=self._head.value, refine=str(self._refine.value))

    def _segmenter_factory(self, live: bool) -> Any:
        """What makes a training's model: for live updates a warm copy of the current one (see ``warm_factory``)."""
        if not live:
            return self.make_segmenter
        default = self.make_segmenter == self._new_segmenter
        return warm_factory(
            self._session.segmenter,
            self.make_segmenter,
            bool(self._hybrid.value),
            default=default,
            head=self._head.value,
        )

    # ------------------------------------------------------------------ layer choices
    def _image_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        return image_layer_choices(self._viewer)

    def _auto_select(self) -> None:
        """Image: the active/only one (see DockFrame); scribbles: the layer made for it, else the one that fits."""
        super()._auto_select()
        self._choose_scribbles()

    def _choose_scribbles(self) -> None:
        self.scribbles_box.choose_for(self._image.value)
        self.class_sync.watch(self._scribbles.value)
        self.train_tab.volume.enabled = is_volume_layer(self._image.value)

    def _image_changed(self, _layer: Any) -> None:
        self._choose_scribbles()

    def _on_layer_inserted(self, event: Any) -> None:
        super()._on_layer_inserted(event)
        self._choose_scribbles()

    def _on_active_layer(self, event: Any) -> None:
        super()._on_active_layer(event)
        self.scribbles_box.follow_active(self._image.value, getattr(event, "value", None))

    def _select(self, image_layer: Any, labels_layer: Any = None) -> None:
        """Show the layers a programmatic call used in the combo boxes (live mode and Export follow them)."""
        if image_layer is not None and image_layer in self._viewer.layers and self._image.value is not image_layer:
            self._choose_image(image_layer)
        self.scribbles_box.show(labels_layer)

    def _segmentation_layer(self, image: Any) -> Any:
        """The "<image> segmentation" layer, or None."""
        return find_result_layer(self._viewer, result_name(image.name, "segmentation"), "labels") if image else None

    # ------------------------------------------------------------------ classes and shortcuts
    def _refresh_classes(self, *_: Any) -> None:
        """Classes: those painted in the scribbles, those the model knows, and at least 1 and 2."""
        self.class_sync.refresh()

    def _pick_class(self, label: int) -> None:
        """Paint ``label`` next: select it in the scribbles layer (and the layer, in paint mode)."""
        status = self.class_sync.pick(self._viewer, label)
        if status is not None:
            self._set_status(status)

    def _class_names_changed(self, names: dict[int, str]) -> None:
        self.class_sync.rename(names, self._segmentation_layer(self._image.value))

    def _key_actions(self) -> dict[str, Any]:
        """napari key name -> action of the dock's shortcuts (see :data:`SHORTCUTS` and :data:`CLASS_KEYS`)."""
        actions = {
            SHORTCUTS["train"]: lambda: self._train_clicked(),
            SHORTCUTS["predict"]: lambda: self._predict_clicked(),
            SHORTCUTS["live"]: lambda: setattr(self._live, "value", not self._live.value),
        }
        for digit, key in enumerate(CLASS_KEYS, start=1):
            actions[key] = partial(lambda label: self._pick_class(label), digit)
        return actions

    def _on_dock_closed(self) -> None:
        for step in (self.live_mode.stop, lambda: self.class_sync.watch(None)):
            with contextlib.suppress(RuntimeError):  # Qt objects may already be deleted
                step()
        self.shortcuts.unbind()
        super()._on_dock_closed()

    def _display_changed(self, *_: Any) -> None:
        """Apply the opacity/contour options to the segmentation of the selected image."""
        layer = self._segmentation_layer(self._image.value)
        if layer is not None:
            layer.opacity = float(self._opacity.value)
            layer.contour = int(self._contour.value)

    # ------------------------------------------------------------------ pinned API
    def train(
        self, image_layer: Any, labels_layer: Any, *, predict_planes: list[int] | None = None, live: bool = False
    ) -> GeneratorWorker | None:
        """Train a new model on the scribbles of ``labels_layer`` over ``image_layer``, then predict.

        Predicts the planes that have scribbles (or ``predict_planes``) into "<image> segmentation".
        The scribbles are copied before the worker starts. Returns the started worker, or None after
        notifying the user (only a status text when ``live``) if the input is unusable.
        """
        return self.jobs.train(image_layer, labels_layer, predict_planes=predict_planes, live=live)

    def predict(self, image_layer: Any, *, all_planes: bool = False) -> GeneratorWorker | None:
        """Segment the current plane (or all planes) of ``image_layer`` with the trained or loaded model."""
        return self.jobs.predict(image_layer, all_planes=all_planes)

    def predict_view(self, image_layer: Any, region: ViewRegion | None = None) -> GeneratorWorker | None:
        """Segment only the part of ``image_layer``'s current plane shown in the canvas ("Predict current view").

        ``region`` defaults to :func:`visible_region` (camera and canvas size). Only the tiles touching it
        are read and encoded; the result (equal to the whole-plane prediction cropped) is pasted into
        "<image> segmentation" (and uncertainty / probabilities when ticked), the rest of that layer kept.
        For a lazily read (dask/Zarr) image of more than ``LAZY_RESULT_PIXELS`` pixels the new result layers
        are chunked in-memory Zarr arrays holding only the predicted views. A multiscale (pyramid) image is
        read at full resolution and its result layers are pyramids with the same levels.
        """
        return self.jobs.predict_view(image_layer, region)

    def apply_to_folder(
        self, folder_in: str | Path, folder_out: str | Path, *, suffix: str = ".tif", overwrite: bool = False
    ) -> GeneratorWorker | None:
        """Segment every image in ``folder_in`` and write label images to ``folder_out`` (in a worker)."""
        return self.jobs.apply_to_folder(folder_in, folder_out, suffix=suffix, overwrite=overwrite)

    def save_model(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Save the current model (weights, classes and feature settings) to one file.

        An existing file is only replaced with ``overwrite=True`` (the Save button asks first).
        """
        return self.files.save_model(path, overwrite=overwrite)

    def load_model(self, path: str | Path) -> Any:
        """Load a model file; the feature settings switch to the ones it was trained with."""
        return self.files.load_model(path)

    def export_segmentation(
        self, path: str | Path, image_layer: Any = None, *, per_plane: bool = False, overwrite: bool = False
    ) -> list[Path]:
        """Write "<image> segmentation" to ``path``; returns the files written.

        ``.tif``: one multi-page file for a stack (or one file per plane with ``per_plane``); ``.png``:
        one file per plane (``<stem>_000.png``...). Existing files are only replaced with ``overwrite``
        (the Export button asks first); otherwise nothing is written and an InputError names them.
        """
        return self.files.export_segmentation(path, image_layer, per_plane=per_plane, overwrite=overwrite)

    def cancel(self, *_: Any) -> None:
        """Stop running jobs (training, prediction, batch) at their next step."""
        self._runner.cancel()
        self._live_runner.cancel()

    def new_scribbles_layer(self, image_layer: Any = None) -> Any:
        """Add an empty uint8 Labels layer shaped like the image's planes, ready to paint."""
        image_layer = image_layer if image_layer is not None else self._image.value
        geometry = geometry_of(image_layer)
        layer = self._viewer.add_labels(
            np.zeros(geometry.planes_shape, dtype=np.uint8), name=f"{geometry.name} scribbles", **geometry.placement()
        )
        layer.brush_size = max(3, min(geometry.plane_shape) // 60)
        layer.selected_label = 1
        layer.mode = "paint"
        self._select(image_layer, layer)
        return layer

    # ------------------------------------------------------------------ model and settings lines
    def _show_config(self, config: FeatureConfig) -> None:
        self._settings_summary.value = describe_config(config)
        self._show_model(self._session.segmenter)

    def _show_model(self, segmenter: Any) -> None:
        self._model_status.value = model_text(segmenter, self._session.class_names, self._session.config)
        method = getattr(segmenter, "refine", None)
        if method is not None and method != self._refine.value:  # a loaded model shows its own refinement
            self._refine.value = method

    def _refine_changed(self, method: str) -> None:
        """*Refine edges*: the current model refines this way from now on (new models too); Live / View apply it."""
        segmenter = self._session.segmenter
        if segmenter is not None and getattr(segmenter, "refine", method) != method:
            segmenter.refine = method
            self._show_model(segmenter)

    # ------------------------------------------------------------------ live mode
    def _live_toggled(self, enabled: bool) -> None:
        self.live_mode.toggle(enabled, self._scribbles.value)
        if not enabled:
            self._live_runner.cancel()

    def _scribbles_changed(self, layer: Any) -> None:
        if self._live.value:
            self.live_mode.watch(layer)
        self.class_sync.watch(layer)

    def _live_update(self) -> None:
        image, scribbles = self._image.value, self._scribbles.value
        if image is None or scribbles is None or not self._live.value:
            return
        self._live_runner.cancel()  # a stale run stops at its next step; its result is ignored anyway
        self._live_worker = self.train(image, scribbles, predict_planes=[current_plane(self._viewer, image)], live=True)

    # ------------------------------------------------------------------ buttons
    def _train_clicked(self, *_: Any) -> None:
        self.train(self._image.value, self._scribbles.value)

    def _predict_clicked(self, *_: Any, all_planes: bool = False) -> None:
        self.predict(self._image.value, all_planes=all_planes)

    def _predict_view_clicked(self, *_: Any) -> None:
        self.predict_view(self._image.value)

    def _new_scribbles_clicked(self, *_: Any) -> None:
        try:
            self.new_scribbles_layer()
        except HRDv2Error as err:
            self._report(err)

    def _open_features_widget(self, *_: Any) -> None:
        self._viewer.window.add_plugin_dock_widget("napari-hrdv2", "HR-Dv2 Features")

    def _apply_folder_clicked(self, *_: Any) -> None:
        try:
            folder_in, folder_out, options = self.batch_tab.request()
        except HRDv2Error as err:
            self._report(err)
            return
        self.apply_to_folder(folder_in, folder_out, **options)

    def _guarded(self, action: Any) -> Any:
        """Run a quick main-thread action; any error becomes a notification (never a traceback dialog)."""
        try:
            return action()
        except Exception as err:  # noqa: BLE001 - shown to the user with a hint, traceback logged
            self._report(err)
            return None

    # ------------------------------------------------------------------ status
    def _report(self, error: BaseException, *, quiet: bool = False) -> None:
        self.messages.report(error, quiet=quiet)

    def _set_busy(self, busy: bool) -> None:
        for button in (self._train, *self.predict_tab.buttons, self._apply_folder):
            button.enabled = not busy
        self._progress.set_busy(busy or self._live_runner.busy)

    def _set_live_busy(self, busy: bool) -> None:
        self._progress.set_busy(busy or self._runner.busy)

    def _on_job_error(self, error: BaseException) -> None:
        if isinstance(error, WeightsNotFoundError):
            self._show_help(f"{error}", backbone=self._session.config.backbone)
