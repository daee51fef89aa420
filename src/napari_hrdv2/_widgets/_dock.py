"""What both HR-Dv2 docks share: the frame (tabs, progress row, status, help), following the layer list,
and closing cleanly. Qt/magicgui only; no computation here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from magicgui.widgets import ComboBox, Container
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFrame, QLabel, QScrollArea, QSizePolicy, QTabWidget, QVBoxLayout, QWidget

from .._layers import plugin_tag, result_layers_of, show_results
from ._common import (
    CloseWatcher,
    ProgressRow,
    WheelGuard,
    connect_layer_list,
    disconnect_layer_list,
    preferred_image,
    source_image_of,
)
from ._downloads import declined_message
from ._runner import JobRunner, notify, notify_error

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


class MessageLine(QLabel):
    """The dock's one message line: a single line, elided to the dock's width; the full text in its tooltip (hover)
    and shown whole, wrapped, while expanded by a click (another click folds it again)."""

    def __init__(self) -> None:
        super().__init__("")
        self._full = ""
        self._expanded = False
        self.setSizePolicy(QSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred))
        self.setMinimumWidth(1)
        self.setTextFormat(Qt.TextFormat.PlainText)
        self.setCursor(Qt.CursorShape.PointingHandCursor)

    @property
    def full_text(self) -> str:
        return self._full

    @property
    def expanded(self) -> bool:
        return self._expanded

    def show_message(self, text: str, *, warning: bool = False) -> None:
        self._full = str(text)
        if not self._full:
            self._expanded = False
        self.setStyleSheet(HELP_STYLE if warning and self._full else "")
        self.setToolTip(self._full)
        self._layout_text()

    def set_expanded(self, expanded: bool) -> None:
        self._expanded = bool(expanded and self._full)
        self._layout_text()

    def _layout_text(self) -> None:
        self.setWordWrap(self._expanded)
        if self._expanded:
            self.setText(self._full)
        else:
            width = max(self.contentsRect().width(), 40)
            one_line = " ".join(self._full.split())
            self.setText(self.fontMetrics().elidedText(one_line, Qt.TextElideMode.ElideRight, width))
        self.updateGeometry()

    def resizeEvent(self, event: Any) -> None:  # noqa: N802 (Qt)
        super().resizeEvent(event)
        if not self._expanded:
            self._layout_text()

    def mousePressEvent(self, event: Any) -> None:  # noqa: N802 (Qt)
        self.set_expanded(not self._expanded)
        super().mousePressEvent(event)


class DockMessages:
    """What a dock tells the user, in ONE place: its message line (status and help, each shown once, elided, the
    full text on hover and on click), errors as notifications, and the question before a backbone download.

    A help message (e.g. missing weights) stays in the line while its cause lasts: a newer status shows over it
    and, once cleared, gives the line back to it; it goes when :meth:`show_help` (None) is called or the feature
    settings change to another backbone (or the backbone loads).

    Parameters
    ----------
    line : MessageLine
        The message line.
    downloads : DownloadGate
        The viewer session's record of the downloads the user agreed to.
    parent : QWidget
        The dock (parent of the download question).
    session : ViewerSession, optional
        Its setting and backbone changes clear a help message whose cause they fix.
    """

    def __init__(self, line: MessageLine, downloads: Any, parent: QWidget, session: Any = None):
        self._line = line
        self._downloads = downloads
        self._parent = parent
        self._status = ""
        self._help = ""
        self._help_backbone: str | None = None
        if session is not None:
            session.config_changed.connect(self._on_config_changed)
            session.backbone_changed.connect(self._on_backbone_loaded)

    def set_status(self, text: str) -> None:
        """Show ``text`` in the message line ('' gives the line back to a standing help message)."""
        self._status = str(text)
        self._show()

    @property
    def status(self) -> str:
        """The status (its full text)."""
        return self._status

    def show_help(self, text: str | None, *, backbone: str | None = None) -> None:
        """Show (or clear, with None) a help message that stays while its cause lasts; ``backbone`` is the backbone
        it is about (choosing another one, or loading it, clears it)."""
        self._help = str(text or "")
        self._help_backbone = backbone if text else None
        self._show()

    @property
    def help_text(self) -> str:
        """The standing help message ('' when none)."""
        return self._help

    def _show(self) -> None:
        status, help_text = self._status, self._help
        if help_text and (not status or help_text in status):
            self._line.show_message(help_text, warning=True)  # the help, once (not also the status that says it)
        else:
            self._line.show_message(status)

    def _on_config_changed(self, config: Any) -> None:
        if self._help and getattr(config, "backbone", None) != self._help_backbone:
            self.show_help(None)

    def _on_backbone_loaded(self, info: Any) -> None:
        if self._help and info is not None:
            self.show_help(None)

    def report(self, error: BaseException, *, quiet: bool = False) -> None:
        """Show ``error`` in the message line and, unless ``quiet``, as a notification."""
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
            self.show_help(message, backbone=backbone)
            if interactive:
                notify(message)
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
        if isinstance(layout, QVBoxLayout):
            layout.addStretch(1)
        native.setMaximumWidth(DOCK_MAX_WIDTH * 2)
        self._close_watcher = CloseWatcher(native, self._on_dock_closed)
        self._wheel_guard = WheelGuard(native)
        self._wheel_guard.guard(native)  # every combo/spin box and slider of the dock: the wheel needs focus

    def _init_messages(self) -> DockMessages:
        """The message line and :attr:`messages` that writes it (made once; placed by the frame). ``_help`` is the
        same line: status and help share one place."""
        if getattr(self, "messages", None) is None:
            self._status_label = self._help = MessageLine()
            native: QWidget = self.native  # type: ignore[attr-defined]
            self.messages = DockMessages(self._status_label, self._session.downloads, native, self._session)
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

    def _show_help(self, text: str | None, *, backbone: str | None = None) -> None:
        """Show (or clear, with None) the standing help message (see :meth:`DockMessages.show_help`)."""
        self.messages.show_help(text, backbone=backbone)

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
