"""The "HR-Dv2 Segmentation" dock widget: scribbles -> linear classifier -> label layers, live, batch, export."""

from __future__ import annotations

import contextlib
import copy
import weakref
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSlider,
    Label,
    PushButton,
    SpinBox,
    show_file_dialog,
)
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import Qt, QTimer

from .._layers import (
    SourceGeometry,
    ViewRegion,
    assemble_planes,
    current_plane,
    find_result_layer,
    paste_region,
    paste_region_levels,
    plugin_tag,
    probabilities_layer_data,
    region_index,
    result_name,
    segmentation_layer_data,
    uncertainty_layer_data,
    upsert_layer,
    visible_region,
)
from .._workers import (
    BackboneInfo,
    BatchReport,
    PartialPrediction,
    PredictionResult,
    RegionResult,
    folder_job,
    merge_runtime,
    predict_job,
    predict_region_job,
    segmenter_config,
    train_job,
    train_lazy_job,
)
from ..core.config import FeatureConfig
from ..core.errors import HRDv2Error, InputError, WeightsNotFoundError
from ..core.files.label_images import label_dtype
from ._classes import ClassTable
from ._common import image_layer_choices, labels_layer_choices, scribbles_for, wrap_label
from ._dock import DockFrame, tab_page
from ._features import keep_active_layer, refining_message
from ._runner import notify_error
from ._session import session_for

if TYPE_CHECKING:  # pragma: no cover
    import napari
    from napari.qt.threading import GeneratorWorker

#: Quiet time after the last paint stroke before a live retrain starts (milliseconds).
LIVE_DELAY_MS = 400
#: Keyboard shortcuts of the dock (napari key names), shown in its Shortcuts line.
SHORTCUTS = {
    "train": "Shift-T",
    "predict": "Shift-P",
    "live": "Shift-L",
}
#: Lazily read (dask/Zarr) images with more pixels per plane than this train on their scribbled tiles only, and
#: "Segment after training" segments the view (as ``core.streaming.STREAM_PIXELS``: about 5800 x 5800).
LAZY_TRAIN_PIXELS = 1 << 25
#: Alt-1 ... Alt-9 pick the class painted in the scribbles layer.
CLASS_KEYS = tuple(f"Alt-{digit}" for digit in range(1, 10))
SHORTCUTS_TEXT = "Keys: Shift+T train, Shift+P predict, Shift+L live, Alt+1..9 class"
MODEL_FILTER = "HR-Dv2 model (*.hrdv2 *.npz *.safetensors);;All files (*)"


def new_segmenter(*, hybrid: bool = False) -> Any:
    """A LinearSegmenter with its documented default hyper-parameters (plus classical filters if ``hybrid``)."""
    from ..core.segmentation.segmenter import LinearSegmenter

    return LinearSegmenter(hybrid=hybrid)


def export_targets(path: str | Path, labels_shape: tuple[int, ...], *, per_plane: bool) -> list[Path]:
    """Files an export of labels of ``labels_shape`` to ``path`` writes.

    A stack goes to one multi-page TIFF, or to ``<stem>_000<suffix>``, ``<stem>_001<suffix>``... with
    ``per_plane`` or as PNG (a PNG holds one plane).
    """
    path = Path(path)
    if len(labels_shape) == 3 and (per_plane or path.suffix.lower() == ".png"):
        return [path.with_name(f"{path.stem}_{i:03d}{path.suffix}") for i in range(labels_shape[0])]
    return [path]


def confirm_overwrite(existing: list[Path], parent: Any = None) -> bool:
    """Ask the user whether to replace ``existing`` files (a Yes/No message box)."""
    from qtpy.QtWidgets import QMessageBox

    names = "\n".join(str(p) for p in existing[:8]) + ("\n..." if len(existing) > 8 else "")
    answer = QMessageBox.question(
        parent,
        "Replace files?",
        f"{len(existing)} file(s) already exist:\n{names}\n\nReplace them?",
        QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
        QMessageBox.StandardButton.No,
    )
    return answer == QMessageBox.StandardButton.Yes


def ask_save_path(caption: str, file_filter: str, parent: Any = None) -> tuple[str, str]:
    """A save dialog that does not itself confirm overwriting (the widget asks once, for every file)."""
    from qtpy.QtWidgets import QFileDialog

    path, chosen_filter = QFileDialog.getSaveFileName(
        parent, caption, "", file_filter, options=QFileDialog.Option.DontConfirmOverwrite
    )
    return path, chosen_filter


def describe_config(config: FeatureConfig) -> str:
    """One line summarising feature settings, e.g. 'dinov2_vits14, moore (5,), cpu'."""
    backbone = Path(config.backbone).name if ("/" in config.backbone or "\\" in config.backbone) else config.backbone
    shifts = "no shifts" if config.shifts == "none" else f"{config.shifts} {config.shift_distances}"
    flips = ", flips" if config.flips else ""
    facet = f", {config.facet} facet" if config.facet != "token" else ""
    block = f", block {config.layer}" if config.layer is not None else ""
    return f"{backbone}, {shifts}{flips}{facet}{block}, {config.device}"


def feature_mismatch(model_config: FeatureConfig | None, settings: FeatureConfig) -> str | None:
    """What differs between a model's features and the Features dock's settings, in words; None if nothing does.

    The model refuses features computed otherwise (``check_same_features``), so Predict keeps using the
    model's own settings and only a new Train uses the dock's.
    """
    if model_config is None:
        return None
    differences = model_config.feature_differences(settings)
    if not differences:
        return None
    listed = ", ".join(
        f"{name}: model {mine!r} vs Features dock {theirs!r}" for name, (mine, theirs) in differences.items()
    )
    return (
        f"The model was trained on other features ({listed}) and refuses features of another kind: Predict uses "
        "the model's settings; Train makes a new model with the dock's."
    )


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
        self._scribbles = ComboBox(label="Scribbles", choices=self._labels_choices, nullable=True)
        self._new_scribbles = PushButton(text="New")
        self._new_scribbles.native.setToolTip("Add an empty scribbles (Labels) layer for the image, ready to paint")
        scribbles_row = Container(widgets=[self._scribbles, self._new_scribbles], layout="horizontal", labels=False)
        scribbles_row.label = "Scribbles"
        scribbles_row.native.layout().setContentsMargins(0, 0, 0, 0)
        # ---- Train tab
        self._classes = ClassTable(on_pick=self._pick_class)
        self._train = PushButton(text="Train")
        self._train.native.setToolTip(f"Train on the scribbles ({SHORTCUTS['train']})")
        self._live = CheckBox(
            text="Live", tooltip=f"Retrain and segment the current plane after each stroke ({SHORTCUTS['live']})"
        )
        self._auto_segment = CheckBox(
            text="Segment after training", value=True, tooltip="Train also segments the scribbled plane(s)"
        )
        train_row = Container(widgets=[self._train, self._live, self._auto_segment], layout="horizontal", labels=False)
        train_row.native.layout().setContentsMargins(0, 0, 0, 0)
        self._hybrid = CheckBox(
            text="+ classical filters",
            tooltip="Also train on classical multiscale filters of the image (intensity, edges, texture): "
            "helps where the classes differ mostly in brightness",
        )
        self._settings_summary = Label(label="Features")
        self._open_features = PushButton(text="Feature settings...")
        self._model_status = Label(label="Model", value="none (paint scribbles, then Train)")
        self._shortcuts = Label(value=SHORTCUTS_TEXT)
        # ---- Predict & export tab
        self._predict_plane = PushButton(text="Predict plane")
        self._predict_plane.native.setToolTip(f"Segment the plane shown ({SHORTCUTS['predict']})")
        self._predict_all = PushButton(text="All planes")
        self._predict_view = PushButton(text="View")
        self._predict_view.native.setToolTip(
            "Segment only the part of the image shown in the canvas (pan/zoom first): quick on huge images"
        )
        predict_row = Container(
            widgets=[self._predict_plane, self._predict_all, self._predict_view], layout="horizontal", labels=False
        )
        predict_row.native.layout().setContentsMargins(0, 0, 0, 0)
        self._want_uncertainty = CheckBox(text="Uncertainty", value=False)
        self._want_probabilities = CheckBox(text="Probabilities", value=False)
        outputs = Container(
            widgets=[self._want_uncertainty, self._want_probabilities], layout="horizontal", labels=False
        )
        outputs.label = "Also"
        outputs.native.layout().setContentsMargins(0, 0, 0, 0)
        self._opacity = FloatSlider(label="Opacity", min=0.0, max=1.0, step=0.05, value=0.5)
        self._contour = SpinBox(label="Contour", min=0, max=20, value=0, tooltip="0: filled; n: outlines n px wide")
        self._save = PushButton(text="Save model...")
        self._load = PushButton(text="Load model...")
        files_row = Container(widgets=[self._save, self._load], layout="horizontal", labels=False)
        files_row.native.layout().setContentsMargins(0, 0, 0, 0)
        self._export = PushButton(text="Export segmentation...")
        self._export_per_plane = CheckBox(
            text="one file per plane",
            tooltip="Stacks: one file per plane instead of a multi-page TIFF (PNG is always one file per plane)",
        )
        export_row = Container(widgets=[self._export, self._export_per_plane], layout="horizontal", labels=False)
        export_row.native.layout().setContentsMargins(0, 0, 0, 0)
        # ---- Batch tab
        self._folder_in = FileEdit(label="Folder in", mode="d")
        self._folder_out = FileEdit(label="Folder out", mode="d")
        self._folder_format = ComboBox(label="Format", choices=["tif", "png"], value="tif")
        self._overwrite = CheckBox(text="Overwrite existing", value=False)
        self._apply_folder = PushButton(text="Apply to folder")
        for label in (self._settings_summary, self._model_status, self._shortcuts):
            wrap_label(label.native, selectable=True)

        self.extend([self._image, scribbles_row])
        self._build_frame(
            [
                (
                    "Train",
                    tab_page(self._classes.widget, train_row, self._hybrid, self._model_status, self._shortcuts),
                ),
                (
                    "Predict && export",
                    tab_page(
                        predict_row, outputs, self._opacity, self._contour, files_row, export_row,
                        self._settings_summary, self._open_features,
                    ),
                ),
                (
                    "Batch",
                    tab_page(self._folder_in, self._folder_out, self._folder_format, self._overwrite, self._apply_folder),
                ),
            ],
            on_cancel=self.cancel,
        )  # fmt: skip
        self._cancel = self._progress.cancel_button
        self._runner = self._make_runner()
        self._live_runner = self._make_runner(on_busy=self._set_live_busy)
        self._live_worker: GeneratorWorker | None = None
        self._live_generation = 0
        self._watched: weakref.ref | None = None
        self._live_timer = QTimer()
        self._live_timer.setSingleShot(True)
        self._live_timer.setInterval(LIVE_DELAY_MS)
        self._live_timer.timeout.connect(self._live_update)

        self._new_scribbles.changed.connect(self._new_scribbles_clicked)
        self._open_features.changed.connect(self._open_features_widget)
        self._train.changed.connect(self._train_clicked)
        self._live.changed.connect(self._live_toggled)
        self._scribbles.changed.connect(self._scribbles_changed)
        self._image.changed.connect(self._image_changed)
        self._predict_plane.changed.connect(self._predict_clicked)
        self._predict_all.changed.connect(partial(self._predict_clicked, all_planes=True))
        self._predict_view.changed.connect(self._predict_view_clicked)
        self._opacity.changed.connect(self._display_changed)
        self._contour.changed.connect(self._display_changed)
        self._save.changed.connect(self._save_clicked)
        self._load.changed.connect(self._load_clicked)
        self._export.changed.connect(self._export_clicked)
        self._apply_folder.changed.connect(self._apply_folder_clicked)
        self._classes.names_changed.connect(self._class_names_changed)
        self._session.config_changed.connect(self._show_config)
        self._session.segmenter_changed.connect(self._show_model)
        self._follow_layers()
        self._bind_keys()
        self._show_config(self._session.config)
        self._show_model(self._session.segmenter)

    @property
    def is_busy(self) -> bool:
        """True while a job (training, prediction, batch, or a live update) started here is running."""
        return self._runner.busy or self._live_runner.busy

    def _new_segmenter(self) -> Any:
        return new_segmenter(hybrid=bool(self._hybrid.value))

    def _warm_factory(self) -> Any:
        """For live updates: a copy of the current model that starts from its solution (fewer iterations).

        A copy, so the model other jobs may be predicting with is never changed under them.
        """
        previous = self._session.segmenter
        default = self.make_segmenter == self._new_segmenter
        if not default or previous is None or getattr(previous, "hybrid", None) != bool(self._hybrid.value):
            return self.make_segmenter
        if not hasattr(previous, "warm_start"):
            return self.make_segmenter

        def warm() -> Any:
            model = copy.deepcopy(previous)
            model.warm_start = True
            return model

        return warm

    # ------------------------------------------------------------------ layer choices
    def _image_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        return image_layer_choices(self._viewer)

    def _labels_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        return labels_layer_choices(self._viewer)

    def _auto_select(self) -> None:
        """Image: the active/only one (see DockFrame); scribbles: the layer made for it, else the one that fits."""
        super()._auto_select()
        self._choose_scribbles()

    def _choose_scribbles(self) -> None:
        self._scribbles.reset_choices()
        chosen = scribbles_for(self._viewer, self._image.value, self._scribbles.value)
        if chosen is not self._scribbles.value:
            self._scribbles.value = chosen
        self._watch_classes(self._scribbles.value)
        self._refresh_classes()

    def _watch_classes(self, layer: Any) -> None:
        """Keep the class table in step with the scribbles layer (new label values, the label being painted)."""
        previous = self._class_watched() if getattr(self, "_class_watched", None) is not None else None
        if previous is layer:
            return
        if previous is not None:
            for emitter in (previous.events.data, previous.events.paint, previous.events.selected_label):
                emitter.disconnect(self._refresh_classes)
        self._class_watched = None
        if layer is not None:
            for emitter in (layer.events.data, layer.events.paint, layer.events.selected_label):
                emitter.connect(self._refresh_classes)
            self._class_watched = weakref.ref(layer)

    def _image_changed(self, _layer: Any) -> None:
        self._choose_scribbles()

    def _on_layer_inserted(self, event: Any) -> None:
        super()._on_layer_inserted(event)
        self._choose_scribbles()

    def _on_active_layer(self, event: Any) -> None:
        super()._on_active_layer(event)
        layer = getattr(event, "value", None)
        known = layer is not None and any(layer is choice for choice in self._scribbles.choices)
        if (
            known
            and layer is not self._scribbles.value
            and scribbles_for(self._viewer, self._image.value, layer) is layer
        ):
            self._scribbles.value = layer

    # ------------------------------------------------------------------ classes and shortcuts
    def _refresh_classes(self, *_: Any) -> None:
        """Classes: those painted in the scribbles, those the model knows, and at least 1 and 2."""
        layer = self._scribbles.value
        labels = {1, 2}
        if layer is not None:
            labels |= {int(v) for v in np.unique(np.asarray(layer.data)) if v > 0}
            labels.add(int(layer.selected_label))
        segmenter = self._session.segmenter
        if segmenter is not None:
            labels |= {int(c) for c in getattr(segmenter, "classes_", [])}
        names = {**self._session.class_names}
        colors = {}
        for label in labels:
            if layer is not None:
                try:
                    colors[label] = layer.get_color(label)
                except Exception:  # noqa: BLE001 - colour is decoration only
                    colors[label] = None
        self._classes.set_classes(sorted(labels), colors, names)
        if layer is not None:
            self._classes.select(int(layer.selected_label))

    def _pick_class(self, label: int) -> None:
        """Paint ``label`` next: select it in the scribbles layer (and the layer, in paint mode)."""
        layer = self._scribbles.value
        if layer is None:
            return
        layer.selected_label = int(label)
        if layer in self._viewer.layers:
            self._viewer.layers.selection.active = layer
            layer.mode = "paint"
        self._refresh_classes()
        self._set_status(f"Painting {self._session.class_names.get(int(label), f'class {label}')} (label {label}).")

    def _class_names_changed(self, names: dict[int, str]) -> None:
        self._session.class_names = dict(names)
        segmenter = self._session.segmenter
        if segmenter is not None:
            segmenter.class_names = {c: names[c] for c in (int(k) for k in segmenter.classes_) if c in names}
        image = self._image.value
        layer = find_result_layer(self._viewer, result_name(image.name, "segmentation"), "labels") if image else None
        if layer is not None:
            tag = dict(layer.metadata.get("napari_hrdv2", {}))
            tag["class_names"] = {str(k): v for k, v in names.items()}
            layer.metadata = {**layer.metadata, "napari_hrdv2": tag}

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

    def _bind_keys(self) -> None:
        """Shift+T train, Shift+P predict, Shift+L live, Alt+1..9 class (see :data:`SHORTCUTS`).

        Bound twice: in the viewer's keymap (the canvas has focus) and as Qt shortcuts of the dock that act while
        the focus is anywhere inside it (a text field keeps the keys it types).
        """
        from qtpy.QtGui import QKeySequence, QShortcut

        self._bound_keys = []
        self._dock_shortcuts = []
        for key, action in self._key_actions().items():
            try:
                self._viewer.bind_key(key, lambda _viewer, action=action: action(), overwrite=True)
                self._bound_keys.append(key)
            except Exception:  # noqa: BLE001 - a key napari refuses stays unbound; the buttons still work
                pass
            shortcut = QShortcut(QKeySequence(key.replace("-", "+")), self.native)
            shortcut.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
            shortcut.activated.connect(action)
            self._dock_shortcuts.append(shortcut)

    def _unbind_keys(self) -> None:
        for key in getattr(self, "_bound_keys", []):
            try:
                self._viewer.bind_key(key, None, overwrite=True)
            except Exception:  # noqa: BLE001 - the viewer may be gone already
                continue
        self._bound_keys = []

    def _on_dock_closed(self) -> None:
        for step in (self._live_timer.stop, lambda: self._watch(None), lambda: self._watch_classes(None)):
            with contextlib.suppress(RuntimeError):  # Qt objects may already be deleted
                step()
        self._unbind_keys()
        super()._on_dock_closed()

    def _display_changed(self, *_: Any) -> None:
        """Apply the opacity/contour options to the segmentation of the selected image."""
        image = self._image.value
        layer = find_result_layer(self._viewer, result_name(image.name, "segmentation"), "labels") if image else None
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
        try:
            geometry = self._geometry(image_layer)
            scribbles = self._copy_scribbles(geometry, labels_layer, image_layer)
        except HRDv2Error as err:
            self._report(err, quiet=live)
            return None
        if not live:
            self._select(image_layer, labels_layer)
        self._show_help(None)
        if not self._may_download(self._session.config.backbone, interactive=not live):
            return None
        if predict_planes is not None:
            indices = list(predict_planes)
        else:
            indices = sorted(scribbles) if self._auto_segment.value else []
        runner = self._live_runner if live else self._runner
        if live:
            self._live_generation += 1
        generation = self._live_generation if live else None
        if self._trains_lazily(image_layer, geometry):
            if self._hybrid.value:
                self._report(InputError("Untick '+ classical filters' to train on a huge image: they need it "
                                        "whole in memory."), quiet=live)  # fmt: skip
                return None
            return runner.start(
                train_lazy_job,
                image_layer.data,
                scribbles,
                self._session.config,
                is_stack=geometry.is_stack,
                make_segmenter=self._warm_factory() if live else self.make_segmenter,
                cache=self._session.cache,
                description=f"HR-Dv2 training on the scribbled tiles of {geometry.name}",
                on_returned=partial(self._lazy_trained, image_layer, geometry, generation),
                source=image_layer,
                quiet_errors=live,
            )
        return runner.start(
            train_job,
            image_layer.data,
            scribbles,
            self._session.config,
            self._session.cache,
            is_stack=geometry.is_stack,
            make_segmenter=self._warm_factory() if live else self.make_segmenter,
            predict_indices=indices,
            uncertainty=bool(self._want_uncertainty.value),
            probabilities=bool(self._want_probabilities.value),
            progressive=live,
            description=f"HR-Dv2 training on {geometry.name}",
            on_returned=partial(self._show_prediction, geometry, generation=self._live_generation if live else None),
            on_yielded=partial(self._on_job_item, geometry, self._live_generation if live else None),
            source=image_layer,
            quiet_errors=live,
        )

    def _trains_lazily(self, image_layer: Any, geometry: SourceGeometry) -> bool:
        """Whether Train encodes only the scribbled tiles: a lazily read (dask/Zarr) image of huge planes."""
        height, width = geometry.plane_shape
        return not isinstance(image_layer.data, np.ndarray) and height * width > LAZY_TRAIN_PIXELS

    def _lazy_trained(
        self, image_layer: Any, geometry: SourceGeometry, generation: int | None, result: PredictionResult
    ) -> None:
        """A model trained on a huge image's scribbled tiles: keep it and segment the view (not the whole image)."""
        if generation is not None and generation != self._live_generation:
            return
        names = self._session.class_names
        result.segmenter.class_names = {c: names[c] for c in result.classes if c in names}
        self._session.segmenter = result.segmenter
        self._refresh_classes()
        self._set_status(
            f"Model trained on the scribbled tiles of {geometry.name}; press View to segment the part shown."
        )
        if self._auto_segment.value or generation is not None:
            self.predict_view(image_layer)

    def _model_or_raise(self) -> Any:
        """The trained or loaded model; InputError saying how to get one if there is none."""
        if self._session.segmenter is None:
            raise InputError("No model yet: paint scribbles of at least two classes and press Train, or Load model.")
        return self._session.segmenter

    def _model_backbone_allowed(self) -> bool:
        """False when the model's backbone would be downloaded and the user declined (see ``_may_download``)."""
        return self._may_download(self._session.prediction_config().backbone, for_model=True)

    def predict(self, image_layer: Any, *, all_planes: bool = False) -> GeneratorWorker | None:
        """Segment the current plane (or all planes) of ``image_layer`` with the trained or loaded model."""
        try:
            geometry = self._geometry(image_layer)
            self._model_or_raise()
        except HRDv2Error as err:
            self._report(err)
            return None
        self._select(image_layer)
        if not self._model_backbone_allowed():
            return None
        indices = geometry.plane_indices if all_planes else [current_plane(self._viewer, image_layer)]
        return self._runner.start(
            predict_job,
            image_layer.data,
            indices,
            self._session.segmenter,
            self._session.prediction_config(),
            self._session.cache,
            is_stack=geometry.is_stack,
            uncertainty=bool(self._want_uncertainty.value),
            probabilities=bool(self._want_probabilities.value),
            description=f"HR-Dv2 segmentation of {geometry.name}",
            on_returned=partial(self._show_prediction, geometry, generation=None),
            on_yielded=partial(self._on_job_item, geometry, None),
            source=image_layer,
        )

    def predict_view(self, image_layer: Any, region: ViewRegion | None = None) -> GeneratorWorker | None:
        """Segment only the part of ``image_layer``'s current plane shown in the canvas ("Predict current view").

        ``region`` defaults to :func:`visible_region` (camera and canvas size). Only the tiles touching it
        are read and encoded; the result (equal to the whole-plane prediction cropped) is pasted into
        "<image> segmentation" (and uncertainty / probabilities when ticked), the rest of that layer kept.
        For a lazily read (dask/Zarr) image of more than ``LAZY_RESULT_PIXELS`` pixels the new result layers
        are chunked in-memory Zarr arrays holding only the predicted views. A multiscale (pyramid) image is
        read at full resolution and its result layers are pyramids with the same levels.
        """
        try:
            if image_layer is None:
                raise InputError("Choose an image layer first (open an image, or File > Open Sample > HR-Dv2).")
            geometry = SourceGeometry.from_layer(image_layer, multiscale_ok=True)
            segmenter = self._model_or_raise()
            if getattr(segmenter, "hybrid", False):
                raise InputError(
                    "'View' segments tile by tile, which models trained with '+ classical filters' cannot do yet: "
                    "press 'Predict plane', or retrain without classical filters."
                )
            region = region if region is not None else visible_region(self._viewer, image_layer)
        except HRDv2Error as err:
            self._report(err)
            return None
        self._select(image_layer)
        if not self._model_backbone_allowed():
            return None
        data = image_layer.data[0] if geometry.level_shapes is not None else image_layer.data
        plane, is_stack = region.plane, geometry.is_stack
        if isinstance(data, np.ndarray):  # in memory: the worker gets a copy of the plane, not the layer's array
            data, plane, is_stack = np.array(data[region.plane] if geometry.is_stack else data), 0, False
        return self._runner.start(
            predict_region_job,
            data,
            plane,
            region.rows,
            region.cols,
            segmenter,
            self._session.prediction_config(),
            is_stack=is_stack,
            uncertainty=bool(self._want_uncertainty.value),
            probabilities=bool(self._want_probabilities.value),
            cache=self._session.cache,
            description=f"HR-Dv2 segmentation of the view of {geometry.name}",
            on_returned=partial(self._show_region, geometry, region),
            source=image_layer,
        )

    def _show_region(self, geometry: SourceGeometry, region: ViewRegion, result: RegionResult) -> None:
        """Paste a view's prediction into the result layers (created when missing; other pixels kept)."""
        image = next((layer for _, layer in self._image_choices() if layer.name == geometry.name), None)
        full_resolution = None if image is None else image.data[0] if geometry.level_shapes else image.data
        lazy = full_resolution is not None and not isinstance(full_resolution, np.ndarray)
        classes = [int(c) for c in result.segmenter.classes_]
        done = ViewRegion(region.plane, (result.top, result.top + result.labels.shape[0]),
                          (result.left, result.left + result.labels.shape[1]))  # fmt: skip
        with keep_active_layer(self._viewer):
            outputs = [("segmentation", "labels", result.labels, False)]
            if result.uncertainty is not None:
                outputs.append(("uncertainty", "image", result.uncertainty, False))
            if result.probabilities is not None:
                outputs.append(("probabilities", "image", result.probabilities, True))
            for kind, layer_type, values, channel_axis in outputs:
                layer = find_result_layer(self._viewer, result_name(geometry.name, kind), layer_type)
                base = getattr(layer, "data", None)
                if geometry.level_shapes is not None:  # a pyramid like the image's
                    channels = len(classes) if channel_axis else None
                    base = list(base) if base is not None and getattr(layer, "multiscale", False) else None
                    data = paste_region_levels(base, geometry, done, values, channels=channels, lazy_source=lazy)
                else:
                    shape = geometry.planes_shape if not channel_axis else (len(classes), *geometry.planes_shape)
                    index = region_index(geometry, done, channel_axis=channel_axis)
                    data = paste_region(base, shape, index, values, lazy_source=lazy)
                if kind == "segmentation":
                    names = {c: self._session.class_names.get(c, f"class {c}") for c in classes}
                    layer_data = segmentation_layer_data(
                        geometry, data, classes=classes, class_names=names, opacity=float(self._opacity.value),
                        contour=int(self._contour.value),
                    )  # fmt: skip
                elif kind == "uncertainty":
                    layer_data = uncertainty_layer_data(geometry, data)
                else:
                    layer_data = probabilities_layer_data(geometry, data, classes=classes)
                if isinstance(data, list):
                    layer_data[1]["multiscale"] = True
                created = layer is None
                layer = upsert_layer(self._viewer, layer_data)
                if layer.data is data and not created:
                    layer.refresh()
                if created and kind == "segmentation":
                    self._reveal_grey_image(geometry)
        self._refresh_classes()
        rows, cols = done.shape
        where = f" plane {region.plane + 1}" if geometry.is_stack else ""
        self._set_status(
            f"Segmented the view of {geometry.name}{where}: rows {done.rows[0]}-{done.rows[1] - 1}, "
            f"columns {done.cols[0]}-{done.cols[1] - 1} ({rows}x{cols} px)."
        )

    def save_model(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Save the current model (weights, classes and feature settings) to one file.

        An existing file is only replaced with ``overwrite=True`` (the Save button asks first).
        """
        if self._session.segmenter is None:
            raise InputError("No model to save yet: train one first (paint scribbles, press Train).")
        if Path(path).exists() and not overwrite:
            raise InputError(f"'{path}' already exists; choose another name or confirm replacing it.")
        saved = self._session.segmenter.save(path, overwrite=overwrite)
        path = Path(saved) if isinstance(saved, (str, Path)) else Path(path)
        self._set_status(f"Model saved to {path}.")
        return path

    def load_model(self, path: str | Path) -> Any:
        """Load a model file; the feature settings switch to the ones it was trained with."""
        from ..core.segmentation.segmenter import LinearSegmenter

        segmenter = LinearSegmenter.load(path)
        trained_with = segmenter_config(segmenter)
        if trained_with is not None:
            self._session.config = merge_runtime(trained_with, self._session.config)
        self._session.segmenter = segmenter
        self._set_status(f"Model loaded from {Path(path).name}.")
        if trained_with is not None:  # ask now (not in the middle of a later Predict) whether its backbone may download
            self._may_download(trained_with.backbone, for_model=True)
        return segmenter

    def apply_to_folder(
        self, folder_in: str | Path, folder_out: str | Path, *, suffix: str = ".tif", overwrite: bool = False
    ) -> GeneratorWorker | None:
        """Segment every image in ``folder_in`` and write label images to ``folder_out`` (in a worker)."""
        try:
            if self._session.segmenter is None:
                raise InputError("No model yet: train one (or Load model) before applying it to a folder.")
            if not Path(folder_in).is_dir():
                raise InputError(f"Input folder '{folder_in}' does not exist: choose a folder of images.")
            if Path(folder_out).resolve() == Path(folder_in).resolve():
                raise InputError("Choose an output folder different from the input folder.")
        except HRDv2Error as err:
            self._report(err)
            return None
        if not self._model_backbone_allowed():
            return None
        return self._runner.start(
            folder_job,
            [folder_in],
            folder_out,
            self._session.segmenter,
            self._session.prediction_config(),
            suffix=suffix,
            overwrite=overwrite,
            description=f"HR-Dv2 segmentation of {Path(folder_in).name}",
            on_returned=self._show_batch_report,
        )

    def export_segmentation(
        self, path: str | Path, image_layer: Any = None, *, per_plane: bool = False, overwrite: bool = False
    ) -> list[Path]:
        """Write "<image> segmentation" to ``path``; returns the files written.

        ``.tif``: one multi-page file for a stack (or one file per plane with ``per_plane``); ``.png``:
        one file per plane (``<stem>_000.png``...). Existing files are only replaced with ``overwrite``
        (the Export button asks first); otherwise nothing is written and an InputError names them.
        """
        from ..core.files.atomic import write_json
        from ..core.files.images import write_labels

        image_layer = image_layer if image_layer is not None else self._image.value
        if image_layer is None:
            raise InputError("Choose the image whose segmentation to export.")
        layer = find_result_layer(self._viewer, result_name(image_layer.name, "segmentation"), "labels")
        if layer is None:
            raise InputError(f"'{image_layer.name}' has no segmentation yet: press Train or Predict first.")
        path = Path(path)
        if path.suffix.lower() not in (".tif", ".tiff", ".png"):
            raise InputError(f"Export as .tif or .png, not '{path.suffix or path.name}'.")
        labels = np.asarray(layer.data)
        targets = export_targets(path, labels.shape, per_plane=per_plane)
        sidecar = path.with_name(f"{path.name}.classes.json")
        existing = [target for target in [*targets, sidecar] if target.exists()]
        if existing and not overwrite:
            raise InputError(
                f"{len(existing)} file(s) already exist ({existing[0].name}...); choose another name or confirm "
                "replacing them."
            )
        planes = list(labels) if len(targets) > 1 else [labels]
        written = [write_labels(target, plane, overwrite=overwrite) for target, plane in zip(targets, planes)]
        write_json(sidecar, self._class_metadata(layer), overwrite=overwrite)
        self._set_status(f"Exported {len(written)} file(s) to {path.parent}.")
        return written

    def _class_metadata(self, layer: Any) -> dict[str, Any]:
        """What the exported label values mean: {"classes": [{"label", "name", "color"}...]} (0 = background)."""
        classes = [int(c) for c in (plugin_tag(layer) or {}).get("classes", [])] or sorted(
            int(v) for v in np.unique(np.asarray(layer.data)) if v > 0
        )
        classes_out = []
        for label in classes:
            rgba = [round(float(c), 4) for c in layer.get_color(label)] if hasattr(layer, "get_color") else None
            name = self._session.class_names.get(label, f"class {label}")
            classes_out.append({"label": label, "name": name, "color": rgba})
        return {"background": 0, "classes": classes_out, "source": (plugin_tag(layer) or {}).get("source")}

    def cancel(self, *_: Any) -> None:
        """Stop running jobs (training, prediction, batch) at their next step."""
        self._runner.cancel()
        self._live_runner.cancel()

    # ------------------------------------------------------------------ scribbles
    def _geometry(self, image_layer: Any) -> SourceGeometry:
        if image_layer is None:
            raise InputError("Choose an image layer first (open an image, or File > Open Sample > HR-Dv2).")
        return SourceGeometry.from_layer(image_layer)

    def _select(self, image_layer: Any, labels_layer: Any = None) -> None:
        """Show the layers a programmatic call used in the combo boxes (live mode and Export follow them)."""
        if image_layer is not None and image_layer in self._viewer.layers and self._image.value is not image_layer:
            self._choose_image(image_layer)
        if (
            labels_layer is not None
            and labels_layer in self._viewer.layers
            and labels_layer is not self._scribbles.value
        ):
            self._scribbles.reset_choices()
            self._scribbles.value = labels_layer

    def _copy_scribbles(self, geometry: SourceGeometry, labels_layer: Any, image_layer: Any) -> dict[int, np.ndarray]:
        """Copies of the scribbled planes: plane index -> (H, W) labels (planes without scribbles left out)."""
        if labels_layer is None:
            raise InputError("Choose a scribbles (Labels) layer, or press 'New scribbles layer' and paint.")
        data = labels_layer.data
        shape = tuple(data.shape)
        if shape == geometry.planes_shape:
            if geometry.is_stack:
                copies = {i: np.array(data[i]) for i in range(shape[0])}
            else:
                copies = {0: np.array(data)}
        elif geometry.is_stack and shape == geometry.plane_shape:
            copies = {current_plane(self._viewer, image_layer): np.array(data)}
        else:
            raise InputError(
                f"The scribbles layer '{labels_layer.name}' has shape {shape} but '{geometry.name}' needs "
                f"{geometry.planes_shape}. Press 'New scribbles layer' to create one of the right shape."
            )
        scribbled = {index: plane for index, plane in copies.items() if np.any(plane)}
        if not scribbled:
            raise InputError(
                f"'{labels_layer.name}' is empty: paint a few strokes of at least two classes "
                "(label 1, label 2...) on the image, then Train."
            )
        return scribbled

    def new_scribbles_layer(self, image_layer: Any = None) -> Any:
        """Add an empty uint8 Labels layer shaped like the image's planes, ready to paint."""
        image_layer = image_layer if image_layer is not None else self._image.value
        geometry = self._geometry(image_layer)
        layer = self._viewer.add_labels(
            np.zeros(geometry.planes_shape, dtype=np.uint8),
            name=f"{geometry.name} scribbles",
            **geometry.placement(),
        )
        layer.brush_size = max(3, min(geometry.plane_shape) // 60)
        layer.selected_label = 1
        layer.mode = "paint"
        self._select(image_layer, layer)
        return layer

    # ------------------------------------------------------------------ results
    def _on_job_item(self, geometry: SourceGeometry, generation: int | None, item: Any) -> None:
        """A job's non-progress report: the loaded backbone's card, or a first segmentation from a partial encoding."""
        if isinstance(item, BackboneInfo):
            self._session.backbone_info = (self._session.config.backbone, item)
        elif isinstance(item, PartialPrediction):
            if generation is not None and generation != self._live_generation:
                return
            self._show_labels(geometry, {item.index: item.labels}, item.classes)
            remaining = self._progress.remaining
            self._set_status(refining_message(geometry.name, item, remaining, self._session.backbone_info))

    def _show_labels(self, geometry: SourceGeometry, planes: dict[int, np.ndarray], classes: list[int]) -> None:
        """Put predicted planes into "<image> segmentation", over the grey image (the scribbles stay selected)."""
        layer = find_result_layer(self._viewer, result_name(geometry.name, "segmentation"), "labels")
        base = layer.data if layer is not None else None
        labels = assemble_planes(geometry, planes, dtype=label_dtype(max(classes)), base=base)
        names = {c: self._session.class_names.get(c, f"class {c}") for c in classes}
        with keep_active_layer(self._viewer):
            created = layer is None
            layer = upsert_layer(
                self._viewer,
                segmentation_layer_data(
                    geometry, labels, classes=classes, class_names=names, opacity=float(self._opacity.value),
                    contour=int(self._contour.value),
                ),
            )  # fmt: skip
            if created:
                self._reveal_grey_image(geometry)

    def _reveal_grey_image(self, geometry: SourceGeometry) -> None:
        """Hide the PCA view under a new segmentation, so the labels are read over the grey image."""
        pca = find_result_layer(self._viewer, result_name(geometry.name, "PCA"), "image")
        if pca is not None and pca.visible:
            pca.visible = False

    def _show_prediction(self, geometry: SourceGeometry, result: PredictionResult, *, generation: int | None) -> None:
        if generation is not None and generation != self._live_generation:
            return  # a newer live run superseded this one
        if self._session.segmenter is not result.segmenter:
            names = self._session.class_names
            result.segmenter.class_names = {c: names[c] for c in result.classes if c in names}
            self._session.segmenter = result.segmenter
        classes = result.classes
        if not result.labels:
            self._refresh_classes()
            self._set_status(f"Model trained on {geometry.name}; press Predict (or tick 'Segment after training').")
            return
        self._show_labels(geometry, result.labels, classes)
        with keep_active_layer(self._viewer):
            if result.uncertainty:
                layer = find_result_layer(self._viewer, result_name(geometry.name, "uncertainty"), "image")
                data = assemble_planes(
                    geometry, result.uncertainty, dtype=np.float32, base=getattr(layer, "data", None)
                )
                upsert_layer(self._viewer, uncertainty_layer_data(geometry, data))
            if result.probabilities:
                layer = find_result_layer(self._viewer, result_name(geometry.name, "probabilities"), "image")
                data = assemble_planes(
                    geometry, result.probabilities, dtype=np.float32, base=getattr(layer, "data", None),
                    channel_axis=True,
                )  # fmt: skip
                upsert_layer(self._viewer, probabilities_layer_data(geometry, data, classes=classes))
        self._refresh_classes()
        planes = ", ".join(str(i + 1) for i in sorted(result.labels))
        self._set_status(f"Segmented {geometry.name}" + (f" plane(s) {planes}." if geometry.is_stack else "."))

    def _show_batch_report(self, report: BatchReport) -> None:
        (show_warning if report.failed else show_info)(f"HR-Dv2: {report.summary()}")
        self._set_status(report.summary())

    def _show_config(self, config: FeatureConfig) -> None:
        self._settings_summary.value = describe_config(config)
        self._show_model(self._session.segmenter)

    def _show_model(self, segmenter: Any) -> None:
        if segmenter is None:
            self._model_status.value = "none (paint scribbles, then Train)"
        else:
            names = {**getattr(segmenter, "class_names", {}), **self._session.class_names}
            classes = ", ".join(names.get(int(c), str(int(c))) for c in getattr(segmenter, "classes_", []))
            trained_with = segmenter_config(segmenter)
            mismatch = feature_mismatch(trained_with, self._session.config)
            features = f"; {describe_config(trained_with)}" if trained_with is not None else ""
            self._model_status.value = f"trained, classes {classes}{features}" + (f". {mismatch}" if mismatch else "")

    # ------------------------------------------------------------------ live mode
    def _live_toggled(self, enabled: bool) -> None:
        if enabled:
            self._watch(self._scribbles.value)
            self._live_timer.start()
        else:
            self._watch(None)
            self._live_timer.stop()
            self._live_runner.cancel()

    def _scribbles_changed(self, layer: Any) -> None:
        if self._live.value:
            self._watch(layer)
        self._watch_classes(layer)
        self._refresh_classes()

    def _watch(self, layer: Any) -> None:
        previous = self._watched() if self._watched is not None else None
        if previous is not None:
            previous.events.paint.disconnect(self._on_scribbles_edited)
            previous.events.data.disconnect(self._on_scribbles_edited)
        self._watched = None
        if layer is not None:
            layer.events.paint.connect(self._on_scribbles_edited)
            layer.events.data.connect(self._on_scribbles_edited)
            self._watched = weakref.ref(layer)

    def _on_scribbles_edited(self, *_: Any) -> None:
        self._live_timer.start()  # restarting the single-shot timer debounces a burst of strokes

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

    def _save_clicked(self, *_: Any) -> None:
        if self._session.segmenter is None:
            self._report(InputError("No model to save yet: train one first (paint scribbles, press Train)."))
            return
        path, _ = ask_save_path("Save HR-Dv2 model", MODEL_FILTER, self.native)
        if not path:
            return
        if not Path(path).suffix:
            path = f"{path}.hrdv2"
        if Path(path).exists() and not self.confirm_overwrite([Path(path)], self.native):
            return
        self._guarded(partial(self.save_model, path, overwrite=True))

    def _load_clicked(self, *_: Any) -> None:
        path = show_file_dialog(mode="r", caption="Load HR-Dv2 model", filter=MODEL_FILTER)
        if path:
            self._guarded(partial(self.load_model, path))

    def _export_clicked(self, *_: Any) -> None:
        image = self._image.value
        if image is None or find_result_layer(self._viewer, result_name(image.name, "segmentation"), "labels") is None:
            self._report(InputError("Nothing to export yet: choose an image and press Train or Predict first."))
            return
        path, chosen = ask_save_path(
            "Export segmentation", "TIFF (*.tif *.tiff);;PNG, one file per plane (*.png)", self.native
        )
        if not path:
            return
        if not Path(path).suffix:
            path = f"{path}{'.png' if 'png' in chosen.lower() else '.tif'}"
        layer = find_result_layer(self._viewer, result_name(image.name, "segmentation"), "labels")
        per_plane = bool(self._export_per_plane.value)
        existing = [p for p in export_targets(path, tuple(layer.data.shape), per_plane=per_plane) if p.exists()]
        if existing and not self.confirm_overwrite(existing, self.native):
            return
        self._guarded(partial(self.export_segmentation, path, image, per_plane=per_plane, overwrite=bool(existing)))

    def _apply_folder_clicked(self, *_: Any) -> None:
        folder_in, folder_out = str(self._folder_in.value or ""), str(self._folder_out.value or "")
        if folder_in in ("", ".") or folder_out in ("", "."):
            self._report(InputError("Choose both an input folder of images and an output folder."))
            return
        self.apply_to_folder(
            folder_in, folder_out, suffix=f".{self._folder_format.value}", overwrite=bool(self._overwrite.value)
        )

    def _guarded(self, action: Any) -> Any:
        """Run a quick main-thread action; any error becomes a notification (never a traceback dialog)."""
        try:
            return action()
        except Exception as err:  # noqa: BLE001 - shown to the user with a hint, traceback logged
            self._report(err)
            return None

    # ------------------------------------------------------------------ status
    def _report(self, error: BaseException, *, quiet: bool = False) -> None:
        self._set_status(str(error))
        if not quiet:
            notify_error(error)

    def _set_busy(self, busy: bool) -> None:
        for button in (self._train, self._predict_plane, self._predict_all, self._predict_view, self._apply_folder):
            button.enabled = not busy
        self._progress.set_busy(busy or self._live_runner.busy)

    def _set_live_busy(self, busy: bool) -> None:
        self._progress.set_busy(busy or self._runner.busy)

    def _on_job_error(self, error: BaseException) -> None:
        if isinstance(error, WeightsNotFoundError):
            self._show_help(f"{error}")
