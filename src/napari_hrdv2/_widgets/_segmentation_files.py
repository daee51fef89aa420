"""Files of the Segmentation dock: save dialogs, asking before replacing files, and the segmentation export."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from .._layers import plugin_tag
from ..core.errors import InputError

MODEL_FILTER = "HR-Dv2 model (*.hrdv2 *.npz *.safetensors);;All files (*)"
EXPORT_FILTER = "TIFF (*.tif *.tiff);;PNG, one file per plane (*.png)"
NO_MODEL_TO_SAVE = "No model to save yet: train one first (paint scribbles, press Train)."


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


def class_metadata(layer: Any, class_names: dict[int, str]) -> dict[str, Any]:
    """What the exported label values mean: {"classes": [{"label", "name", "color"}...]} (0 = background)."""
    classes = [int(c) for c in (plugin_tag(layer) or {}).get("classes", [])] or sorted(
        int(v) for v in np.unique(np.asarray(layer.data)) if v > 0
    )
    classes_out = []
    for label in classes:
        rgba = [round(float(c), 4) for c in layer.get_color(label)] if hasattr(layer, "get_color") else None
        classes_out.append({"label": label, "name": class_names.get(label, f"class {label}"), "color": rgba})
    return {"background": 0, "classes": classes_out, "source": (plugin_tag(layer) or {}).get("source")}


def write_segmentation(
    layer: Any, path: str | Path, class_names: dict[int, str], *, per_plane: bool = False, overwrite: bool = False
) -> list[Path]:
    """Write a segmentation layer's labels to ``path`` (plus ``<name>.classes.json``); returns the label files.

    ``.tif``: one multi-page file for a stack (or one file per plane with ``per_plane``); ``.png``: one file per
    plane. Existing files are only replaced with ``overwrite``; otherwise nothing is written (InputError).
    """
    from ..core.files.atomic import write_json
    from ..core.files.images import write_labels

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
    write_json(sidecar, class_metadata(layer, class_names), overwrite=overwrite)
    return written


class ModelFiles:
    """Save / Load model and Export segmentation: the buttons' dialogs, asking before replacing, and the writing.

    Parameters
    ----------
    viewer : napari.Viewer
        Holds the segmentation layers.
    session : ViewerSession
        Holds the model, the feature settings and the class names.
    messages : DockMessages
        The dock's status line, notifications and download question.
    parent : QWidget
        The dock (parent of the dialogs).
    confirm : callable
        Returns the dock's current ``confirm_overwrite(paths, parent) -> bool`` (tests swap it).
    image : callable
        Returns the image chosen in the dock (or None).
    per_plane : callable
        Whether Export writes one file per plane.
    """

    def __init__(
        self,
        viewer: Any,
        session: Any,
        messages: Any,
        parent: Any,
        *,
        confirm: Callable[[], Callable[..., bool]],
        image: Callable[[], Any],
        per_plane: Callable[[], bool],
    ):
        self._viewer = viewer
        self._session = session
        self._messages = messages
        self._parent = parent
        self._confirm = confirm
        self._image = image
        self._per_plane = per_plane

    def save_model(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Save the current model (see ``SegmentationWidget.save_model``)."""
        if self._session.segmenter is None:
            raise InputError(NO_MODEL_TO_SAVE)
        if Path(path).exists() and not overwrite:
            raise InputError(f"'{path}' already exists; choose another name or confirm replacing it.")
        saved = self._session.segmenter.save(path, overwrite=overwrite)
        path = Path(saved) if isinstance(saved, (str, Path)) else Path(path)
        self._messages.set_status(f"Model saved to {path}.")
        return path

    def load_model(self, path: str | Path) -> Any:
        """Load a model file; the feature settings switch to the ones it was trained with."""
        from .._workers import merge_runtime
        from ..core.segmentation.heads import load_segmenter

        segmenter = load_segmenter(path)
        trained_with = segmenter.feature_config
        if trained_with is not None:
            self._session.config = merge_runtime(trained_with, self._session.config)
        self._session.segmenter = segmenter
        self._messages.set_status(f"Model loaded from {Path(path).name}.")
        if trained_with is not None:  # ask now (not in the middle of a later Predict) whether its backbone may download
            self._messages.may_download(trained_with.backbone, for_model=True)
        return segmenter

    def export_segmentation(
        self, path: str | Path, image_layer: Any = None, *, per_plane: bool = False, overwrite: bool = False
    ) -> list[Path]:
        """Write "<image> segmentation" (see ``SegmentationWidget.export_segmentation``)."""
        image_layer = image_layer if image_layer is not None else self._image()
        if image_layer is None:
            raise InputError("Choose the image whose segmentation to export.")
        layer = self._segmentation_of(image_layer)
        if layer is None:
            raise InputError(f"'{image_layer.name}' has no segmentation yet: press Train or Predict first.")
        written = write_segmentation(layer, path, self._session.class_names, per_plane=per_plane, overwrite=overwrite)
        self._messages.set_status(f"Exported {len(written)} file(s) to {Path(path).parent}.")
        return written

    def _segmentation_of(self, image: Any) -> Any:
        """The "<image> segmentation" layer, or None."""
        from .._layers import find_result_layer, result_name

        return find_result_layer(self._viewer, result_name(image.name, "segmentation"), "labels")

    # ------------------------------------------------------------------ buttons
    def save_clicked(self, *_: Any) -> None:
        """Save model...: ask where (and before replacing a file), then save."""
        if self._session.segmenter is None:
            self._messages.report(InputError(NO_MODEL_TO_SAVE))
            return
        path, _ = ask_save_path("Save HR-Dv2 model", MODEL_FILTER, self._parent)
        if not path:
            return
        if not Path(path).suffix:
            path = f"{path}.hrdv2"
        if Path(path).exists() and not self._confirm()([Path(path)], self._parent):
            return
        self._guarded(partial(self.save_model, path, overwrite=True))

    def load_clicked(self, *_: Any) -> None:
        """Load model...: pick a file, then load it."""
        from magicgui.widgets import show_file_dialog

        path = show_file_dialog(mode="r", caption="Load HR-Dv2 model", filter=MODEL_FILTER)
        if path:
            self._guarded(partial(self.load_model, path))

    def export_clicked(self, *_: Any) -> None:
        """Export segmentation...: ask where (and before replacing files), then write."""
        image = self._image()
        layer = self._segmentation_of(image) if image is not None else None
        if layer is None:
            self._messages.report(
                InputError("Nothing to export yet: choose an image and press Train or Predict first.")
            )
            return
        path, chosen = ask_save_path("Export segmentation", EXPORT_FILTER, self._parent)
        if not path:
            return
        if not Path(path).suffix:
            path = f"{path}{'.png' if 'png' in chosen.lower() else '.tif'}"
        per_plane = self._per_plane()
        existing = [p for p in export_targets(path, tuple(layer.data.shape), per_plane=per_plane) if p.exists()]
        if existing and not self._confirm()(existing, self._parent):
            return
        self._guarded(partial(self.export_segmentation, path, image, per_plane=per_plane, overwrite=bool(existing)))

    def _guarded(self, action: Callable[[], Any]) -> Any:
        """Run a quick main-thread action; any error becomes a notification (never a traceback dialog)."""
        try:
            return action()
        except Exception as err:  # noqa: BLE001 - shown to the user with a hint, traceback logged
            self._messages.report(err)
            return None
