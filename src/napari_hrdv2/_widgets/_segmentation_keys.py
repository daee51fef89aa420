"""Keyboard shortcuts of the Segmentation dock: bound in the viewer's keymap and as Qt shortcuts of the dock."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QWidget

#: Keyboard shortcuts of the dock (napari key names), shown in its Shortcuts line.
SHORTCUTS = {
    "train": "Shift-T",
    "predict": "Shift-P",
    "live": "Shift-L",
}
#: Alt-1 ... Alt-9 pick the class painted in the scribbles layer.
CLASS_KEYS = tuple(f"Alt-{digit}" for digit in range(1, 10))
SHORTCUTS_TEXT = "Keys: Shift+T train, Shift+P predict, Shift+L live, Alt+1..9 class"


class DockShortcuts:
    """Binds key -> action twice: in the viewer's keymap (the canvas has focus) and as Qt shortcuts of ``dock``
    that act while the focus is anywhere inside it (a text field keeps the keys it types).

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer whose keymap gets the keys.
    dock : QWidget
        The dock widget the Qt shortcuts belong to.
    """

    def __init__(self, viewer: Any, dock: QWidget):
        self._viewer = viewer
        self._dock = dock
        self.bound_keys: list[str] = []
        self.dock_shortcuts: list[Any] = []

    def bind(self, actions: dict[str, Callable[[], Any]]) -> None:
        """Bind every napari key name of ``actions`` to its action (a key napari refuses stays unbound)."""
        from qtpy.QtGui import QKeySequence, QShortcut

        for key, action in actions.items():
            try:
                self._viewer.bind_key(key, lambda _viewer, action=action: action(), overwrite=True)
                self.bound_keys.append(key)
            except Exception:  # noqa: BLE001 - a key napari refuses stays unbound; the buttons still work
                pass
            shortcut = QShortcut(QKeySequence(key.replace("-", "+")), self._dock)
            shortcut.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
            shortcut.activated.connect(action)
            self.dock_shortcuts.append(shortcut)

    def unbind(self) -> None:
        """Take the keys out of the viewer's keymap again (the viewer may already be gone)."""
        for key in self.bound_keys:
            try:
                self._viewer.bind_key(key, None, overwrite=True)
            except Exception:  # noqa: BLE001 - the viewer may be gone already
                continue
        self.bound_keys = []
