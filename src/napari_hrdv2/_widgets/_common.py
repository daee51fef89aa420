"""Small helpers shared by the widgets: layer choices and their automatic selection, wrapped labels,
the progress row (bar, remaining time, Cancel), and closing hooks."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QEvent, QObject, Qt
from qtpy.QtWidgets import (
    QAbstractScrollArea,
    QAbstractSlider,
    QAbstractSpinBox,
    QApplication,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QScrollBar,
    QSizePolicy,
    QWidget,
)

from .._layers import plugin_tag
from ._runner import format_duration

logger = logging.getLogger(__name__)

if TYPE_CHECKING:  # pragma: no cover
    import napari


def image_layer_choices(viewer: napari.Viewer, *, include_results: bool = False) -> list[tuple[str, Any]]:
    """(name, layer) of the viewer's Image layers, the plugin's own result layers last or left out."""
    from napari.layers import Image

    images = [layer for layer in viewer.layers if isinstance(layer, Image)]
    sources = [layer for layer in images if plugin_tag(layer) is None]
    results = [layer for layer in images if plugin_tag(layer) is not None] if include_results else []
    return [(layer.name, layer) for layer in [*sources, *results]]


def labels_layer_choices(viewer: napari.Viewer) -> list[tuple[str, Any]]:
    """(name, layer) of the viewer's Labels layers that the user made (not the plugin's segmentations)."""
    from napari.layers import Labels

    return [(layer.name, layer) for layer in viewer.layers if isinstance(layer, Labels) and plugin_tag(layer) is None]


def source_image_of(viewer: napari.Viewer, layer: Any) -> Any | None:
    """The source image a layer belongs to: itself (a user image), a result's source, or a scribbles' image."""
    if layer is None:
        return None
    sources = {name: image for name, image in image_layer_choices(viewer)}
    if layer.name in sources and sources[layer.name] is layer:
        return layer
    tag = plugin_tag(layer)
    if tag is not None:
        return sources.get(str(tag.get("source")))
    if layer.name.endswith(" scribbles"):
        return sources.get(layer.name.removesuffix(" scribbles"))
    return None


def preferred_image(viewer: napari.Viewer, current: Any = None) -> Any | None:
    """The image a dock should work on: ``current`` if still there, else the active layer's image, else the top one."""
    images = [layer for _, layer in image_layer_choices(viewer)]
    if current is not None and any(current is layer for layer in images):
        return current
    active = source_image_of(viewer, viewer.layers.selection.active)
    if active is not None:
        return active
    return images[-1] if images else None


def scribbles_for(viewer: napari.Viewer, image: Any, current: Any = None) -> Any | None:
    """The Labels layer to paint for ``image``: '<image> scribbles', else ``current`` or the active/only one that fits.

    A layer fits when its shape is the image's plane(s) shape.
    """
    candidates = [layer for _, layer in labels_layer_choices(viewer)]
    if image is None:
        return current if any(current is layer for layer in candidates) else None
    named = [layer for layer in candidates if layer.name == f"{image.name} scribbles"]
    if named:
        return named[-1]
    shape = _planes_shape(image)
    fitting = [layer for layer in candidates if shape is None or tuple(layer.data.shape) == shape]
    for preferred in (current, viewer.layers.selection.active):
        if any(preferred is layer for layer in fitting):
            return preferred
    return fitting[-1] if fitting else None


def _planes_shape(image: Any) -> tuple[int, ...] | None:
    shape = tuple(getattr(image, "data", None).shape) if hasattr(image, "data") else None
    if shape is None:
        return None
    return shape[:-1] if getattr(image, "rgb", False) else shape


def connect_layer_list(viewer: napari.Viewer, callback: Any) -> None:
    """Call ``callback`` when layers are added, removed or moved (napari keeps a weak reference to methods)."""
    events = viewer.layers.events
    for name in ("inserted", "removed", "moved", "reordered"):
        emitter = getattr(events, name, None)
        if emitter is not None:
            emitter.connect(callback)


def disconnect_layer_list(viewer: napari.Viewer, callback: Any) -> None:
    events = viewer.layers.events
    for name in ("inserted", "removed", "moved", "reordered"):
        emitter = getattr(events, name, None)
        if emitter is not None:
            emitter.disconnect(callback)


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


# ---------------------------------------------------------------------------------------------- Qt pieces
def wrap_label(label: QLabel, *, selectable: bool = False) -> QLabel:
    """Make a QLabel wrap its text and never ask for more width than the dock has."""
    label.setWordWrap(True)
    policy = QSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
    policy.setHeightForWidth(True)
    label.setSizePolicy(policy)
    label.setMinimumWidth(1)
    if selectable:
        label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return label


def literal_format(text: str) -> str:
    """``text`` as a QProgressBar format that shows it as it is.

    Qt replaces ``%p``, ``%v`` and ``%m`` in a format and has no escape for a literal ``%`` (``%%`` stays two
    signs), so a word joiner (U+2060, invisible) goes between a ``%`` and such a letter.
    """
    for placeholder in ("%p", "%v", "%m"):
        text = text.replace(placeholder, f"%\u2060{placeholder[1]}")
    return text


class ProgressRow(QWidget):
    """A progress bar with percent and remaining time, and a Cancel button (hidden while idle)."""

    def __init__(self, on_cancel: Callable[[], None], parent: QWidget | None = None):
        super().__init__(parent)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.bar = QProgressBar()
        self.bar.setRange(0, 1000)
        self.bar.setTextVisible(True)
        self.remaining: float | None = None
        self.bar.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the running job at its next step (Esc in the dock)")
        self.cancel_button.clicked.connect(lambda *_: on_cancel())
        layout.addWidget(self.bar, 1)
        layout.addWidget(self.cancel_button)
        self.set_idle()

    def set_busy(self, busy: bool) -> None:
        self.cancel_button.setEnabled(busy)
        if busy:
            self.show_progress(0.0, None)
        else:
            self.set_idle()

    def set_idle(self) -> None:
        self.remaining = None
        self.bar.setValue(0)
        self.bar.setToolTip("")
        self.bar.setFormat("idle")
        self.cancel_button.setEnabled(False)

    def show_progress(self, fraction: float, remaining: float | None, message: str = "") -> None:
        """'Encoding image: 45%, about 1 min left' in the bar."""
        self.remaining = remaining
        value = int(round(min(max(fraction, 0.0), 1.0) * 1000))
        self.bar.setValue(value)
        text = f"{message.rstrip('.')}: " if message else ""
        text += f"{value / 10:.0f}%"
        if remaining is not None:
            text += f", about {format_duration(remaining)} left"
        self.bar.setFormat(literal_format(text))
        self.bar.setToolTip(text)

    @property
    def text(self) -> str:
        """The bar's text as shown."""
        return self.bar.toolTip() if self.bar.value() else self.bar.format()


class CloseWatcher(QObject):
    """Calls ``on_close`` once when the window holding ``widget`` closes or ``widget`` is destroyed.

    The window is found when the widget is shown inside it (docks are created before being docked).
    """

    def __init__(self, widget: QWidget, on_close: Callable[[], None]):
        super().__init__(widget)
        called = [False]

        def fire(*_: Any) -> None:  # a plain function: it still runs while Qt deletes the widget and this filter
            if called[0]:
                return
            called[0] = True
            try:
                on_close()
            except RuntimeError:  # Qt objects already deleted (interpreter shutdown): nothing left to stop
                logger.debug("HR-Dv2 dock closed after its Qt objects were deleted", exc_info=True)

        self._fire = fire
        self._window: QWidget | None = None
        widget.installEventFilter(self)
        widget.destroyed.connect(fire)
        self.watch_window(widget)

    def watch_window(self, widget: QWidget) -> None:
        window = widget.window()
        if window is widget or window is self._window:
            return
        if self._window is not None:
            self._window.removeEventFilter(self)
        self._window = window
        window.installEventFilter(self)

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt API
        if not hasattr(self, "_fire"):  # a bare wrapper while Qt tears the window down (shown windows): ignore
            return False
        kind = event.type()
        if (
            kind in (QEvent.Type.Show, QEvent.Type.ParentChange)
            and isinstance(obj, QWidget)
            and obj is not self._window
        ):
            self.watch_window(obj)
        elif obj is self._window and kind == QEvent.Type.Hide and not event.spontaneous():
            self._fire()  # the window was closed (a minimised window gets a spontaneous hide event)
        return False


class WheelGuard(QObject):
    """Keeps the mouse wheel from changing settings: combo boxes, spin boxes and sliders take it only when focused.

    Installed once per dock (:meth:`guard`): every such control inside gets ``Qt.FocusPolicy.StrongFocus`` (a
    click or Tab focuses it, the wheel does not) and this event filter, which passes the wheel of an unfocused
    control on to the scroll area around it, so scrolling over the dock scrolls the page instead.
    """

    def guard(self, root: QWidget) -> int:
        """Guard every combo box, spin box and slider under ``root``; returns how many were guarded."""
        guarded = 0
        for control in root.findChildren(QWidget):
            if isinstance(control, (QComboBox, QAbstractSpinBox, QAbstractSlider)) and not isinstance(
                control, QScrollBar
            ):
                control.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
                control.removeEventFilter(self)  # guarding twice installs the filter once
                control.installEventFilter(self)
                guarded += 1
        return guarded

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt API
        if event.type() != QEvent.Type.Wheel or not isinstance(obj, QWidget) or obj.hasFocus():
            return False
        area = obj.parentWidget()
        while area is not None and not isinstance(area, QAbstractScrollArea):
            area = area.parentWidget()
        if area is not None:
            QApplication.sendEvent(area.verticalScrollBar(), event)  # scroll the page under the pointer
        event.ignore()
        return True
