"""What both HR-Dv2 docks share: the frame (tabs, progress row, status, help), following the layer list,
and closing cleanly. Qt/magicgui only; no computation here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from magicgui.widgets import ComboBox, Container
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFrame, QLabel, QScrollArea, QTabWidget, QVBoxLayout, QWidget

from .._layers import plugin_tag, result_layers_of, show_results
from ._common import (
    CloseWatcher,
    ProgressRow,
    WheelGuard,
    connect_layer_list,
    disconnect_layer_list,
    preferred_image,
    set_wrapped_text,
    source_image_of,
    wrap_label,
)
from ._downloads import declined_message
from ._runner import JobRunner, notify_error

#: Widest the docks ask to be (pixels); messages wrap instead of widening them.
DOCK_MAX_WIDTH = 420
#: Height (pixels) a tab page may shrink to before it scrolls.
MIN_PAGE_HEIGHT = 120
HELP_STYLE = "QLabel { background: rgba(255, 170, 0, 40); border: 1px solid rgba(255, 170, 0, 160); padding: 4px; }"


def tab_page(*widgets: Any) -> Container:
    """A labelled magicgui column for one tab."""
    page = Container(widgets=list(widgets), labels=True)
    page.native.layout().setContentsMargins(4, 4, 4, 4)
    return page


class DockMessages:
    """What a dock tells the user: its status line, the help box, errors as notifications, and the question
    before a backbone download.

    Parameters
    ----------
    status_label, help_label : QLabel
        The wrapping status line and the (hidden while empty) help box.
    downloads : DownloadGate
        The viewer session's record of the downloads the user agreed to.
    parent : QWidget
        The dock (parent of the download question).
    """

    def __init__(self, status_label: QLabel, help_label: QLabel, downloads: Any, parent: QWidget):
        self._status_label = status_label
        self._help = help_label
        self._downloads = downloads
        self._parent = parent

    def set_status(self, text: str) -> None:
        """Show ``text`` in the status line (cut when very long; the whole text in its tooltip)."""
        set_wrapped_text(self._status_label, text)

    @property
    def status(self) -> str:
        """The status line (its full text)."""
        return self._status_label.toolTip() or self._status_label.text()

    def show_help(self, text: str | None) -> None:
        """Show (or hide, with None) the help box under the status line."""
        if text:
            set_wrapped_text(self._help, text)
        self._help.setVisible(bool(text))

    @property
    def help_text(self) -> str:
        """The help box's text ('' while hidden)."""
        return "" if self._help.isHidden() else (self._help.toolTip() or self._help.text())

    def report(self, error: BaseException, *, quiet: bool = False) -> None:
        """Show ``error`` in the status line and, unless ``quiet``, as a notification."""
        self.set_status(str(error))
        if not quiet:
            notify_error(error)

    def may_download(self, backbone: str, *, interactive: bool = True, for_model: bool = False) -> bool:
        """Whether a job loading ``backbone`` may start: True unless it would download a Hugging Face repository
        the user has not agreed to (asked here when ``interactive``). A refusal is explained in the dock."""
        ok, repo = self._downloads.allowed(backbone, self._parent, interactive=interactive)
        if not ok and repo is not None:
            message = declined_message(repo, for_model=for_model)
            self.set_status(message)
            self.show_help(message)
            if interactive:
                from napari.utils.notifications import show_info

                show_info(f"HR-Dv2: {message}")
        return ok


class DockFrame:
    """Mixin for a magicgui ``Container`` dock: tabs, a progress row with Cancel, a wrapping status line,
    a help box, an Image box that follows the viewer's layers, and jobs cancelled when the dock closes."""

    _viewer: Any
    _session: Any
    _image: ComboBox
    _runner: JobRunner
    _runners: list[JobRunner]

    def _build_frame(
        self,
        tabs: list[tuple[str, Container] | tuple[str, Container, Container | None]],
        *,
        on_cancel: Callable[[], None],
    ) -> None:
        """Tabs of (title, page[, footer]): the page scrolls; its footer (the tab's main buttons) never does."""
        native: QWidget = self.native  # type: ignore[attr-defined]
        layout = native.layout()
        self._tabs = QTabWidget()
        self._tabs.setDocumentMode(True)
        self._pages = {}
        self._footers = {}
        for title, page, *rest in tabs:
            footer = rest[0] if rest else None
            # Each page scrolls on its own, so two docks stacked in the window fit a 1366x768 screen.
            scroll = QScrollArea()
            scroll.setWidgetResizable(True)
            scroll.setFrameShape(QFrame.Shape.NoFrame)
            scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
            scroll.setWidget(page.native)
            scroll.setMinimumHeight(MIN_PAGE_HEIGHT)
            # As wide as the page needs (plus its scroll bar): the page scrolls vertically, never clips sideways.
            bar = scroll.verticalScrollBar().sizeHint().width()
            scroll.setMinimumWidth(page.native.minimumSizeHint().width() + bar)
            holder = QWidget()
            column = QVBoxLayout(holder)
            column.setContentsMargins(0, 0, 0, 0)
            column.setSpacing(2)
            column.addWidget(scroll, 1)
            if footer is not None:  # the main buttons stay in sight whatever the page's height
                footer.native.layout().setContentsMargins(4, 0, 4, 2)
                column.addWidget(footer.native)
                self._footers[title] = footer
            self._tabs.addTab(holder, title)
            self._pages[title] = page
        layout.addWidget(self._tabs)
        self._progress = ProgressRow(on_cancel)
        layout.addWidget(self._progress)
        self._init_messages()
        layout.addWidget(self._status_label)
        layout.addWidget(self._help)
        if isinstance(layout, QVBoxLayout):
            layout.addStretch(1)
        native.setMaximumWidth(DOCK_MAX_WIDTH * 2)
        self._close_watcher = CloseWatcher(native, self._on_dock_closed)
        self._wheel_guard = WheelGuard(native)
        self._wheel_guard.guard(native)  # every combo/spin box and slider of the dock: the wheel needs focus

    def _init_messages(self) -> DockMessages:
        """The status line, the help box and :attr:`messages` that writes them (made once; placed by the frame)."""
        if getattr(self, "messages", None) is None:
            self._status_label = wrap_label(QLabel(""), selectable=True)
            self._help = wrap_label(QLabel(""), selectable=True)
            self._help.setStyleSheet(HELP_STYLE)
            self._help.setVisible(False)
            native: QWidget = self.native  # type: ignore[attr-defined]
            self.messages = DockMessages(self._status_label, self._help, self._session.downloads, native)
        return self.messages

    def _make_runner(self, **kwargs: Any) -> JobRunner:
        runner = JobRunner(
            on_busy=kwargs.pop("on_busy", self._set_busy),
            on_status=kwargs.pop("on_status", self._set_status),
            on_progress=kwargs.pop("on_progress", self._show_progress),
            on_error=kwargs.pop("on_error", self._on_job_error),
            is_alive=lambda layer: layer in self._viewer.layers,
            on_results=kwargs.pop("on_results", lambda made: show_results(self._viewer, made)),
            status_now=lambda: self.messages.status,
            **kwargs,
        )
        self._runners.append(runner)
        return runner

    # ------------------------------------------------------------------ status
    def _set_status(self, text: str) -> None:
        self.messages.set_status(text)

    @property
    def status(self) -> str:
        """The dock's status line (its full text)."""
        return self.messages.status

    def _show_help(self, text: str | None) -> None:
        """Show (or hide, with None) the help box under the status line."""
        self.messages.show_help(text)

    @property
    def help_text(self) -> str:
        return self.messages.help_text

    def _may_download(self, backbone: str, *, interactive: bool = True, for_model: bool = False) -> bool:
        """Whether a job loading ``backbone`` may start (see :meth:`DockMessages.may_download`)."""
        return self.messages.may_download(backbone, interactive=interactive, for_model=for_model)

    def _show_progress(self, fraction: float, message: str, remaining: float | None) -> None:
        self._progress.show_progress(fraction, remaining, message)

    def _on_job_error(self, error: BaseException) -> None:  # overridden by the docks
        pass

    def _set_busy(self, busy: bool) -> None:  # overridden by the docks
        self._progress.set_busy(busy)

    # ------------------------------------------------------------------ layers
    def _follow_layers(self) -> None:
        connect_layer_list(self._viewer, self._on_layers_changed)
        self._viewer.layers.events.inserted.connect(self._on_layer_inserted)
        self._viewer.layers.events.removed.connect(self._on_source_removed)
        self._viewer.layers.selection.events.active.connect(self._on_active_layer)
        self._auto_select()

    def _unfollow_layers(self) -> None:
        try:
            disconnect_layer_list(self._viewer, self._on_layers_changed)
            self._viewer.layers.events.inserted.disconnect(self._on_layer_inserted)
            self._viewer.layers.events.removed.disconnect(self._on_source_removed)
            self._viewer.layers.selection.events.active.disconnect(self._on_active_layer)
        except (RuntimeError, TypeError, ValueError):  # the viewer is already torn down
            pass

    def _on_layers_changed(self, *_: Any) -> None:
        self._auto_select()

    def _on_layer_inserted(self, event: Any) -> None:
        """A newly opened image becomes the one the dock works on."""
        layer = event.value
        if source_image_of(self._viewer, layer) is layer:
            self._choose_image(layer)

    def _on_active_layer(self, event: Any) -> None:
        """Selecting an image (or one of its results / scribbles) in the layer list selects it here too."""
        image = source_image_of(self._viewer, getattr(event, "value", None))
        if image is not None and image is not self._image.value:
            self._choose_image(image)

    def _on_source_removed(self, event: Any) -> None:
        """A removed layer takes its jobs with it (their results are dropped), an image also its result layers."""
        layer = event.value
        for runner in self._runners:
            runner.cancel_for(layer)
        if plugin_tag(layer) is None and not any(other.name == layer.name for other in self._viewer.layers):
            for result in result_layers_of(self._viewer, str(layer.name)):
                if result in self._viewer.layers:  # the other dock may have removed it already
                    self._viewer.layers.remove(result)

    def _auto_select(self) -> None:
        self._image.reset_choices()
        self._choose_image(preferred_image(self._viewer, self._image.value))

    def _choose_image(self, layer: Any) -> None:
        self._image.reset_choices()
        if layer is not None and not any(layer is choice for choice in self._image.choices):
            return
        if self._image.value is not layer:
            self._image.value = layer

    # ------------------------------------------------------------------ closing
    def _on_dock_closed(self) -> None:
        """The dock or its window closed: stop following layers, cancel jobs and wait briefly for them."""
        for runner in self._runners:  # first: stop the jobs whatever else is already gone
            runner.shutdown()
        self._unfollow_layers()
