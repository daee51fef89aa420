"""The class table of the Segmentation dock: colour (from the scribbles layer), label value and an editable name."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from psygnal import Signal
from qtpy.QtCore import Qt
from qtpy.QtGui import QColor
from qtpy.QtWidgets import QAbstractItemView, QHeaderView, QTableWidget, QTableWidgetItem

#: Rows shown before the table scrolls.
VISIBLE_ROWS = 4
#: Rows always shown (the table never shrinks below this).
MIN_ROWS = 3


def default_name(label: int) -> str:
    return f"class {int(label)}"


class ClassTable:
    """A small table: one row per class (colour swatch, label, name). Clicking a row picks that class to paint.

    ``names_changed`` is emitted with ``{label: name}`` when the user renames a class.
    """

    names_changed = Signal(object)

    def __init__(self, on_pick: Callable[[int], None]):
        self._on_pick = on_pick
        self._filling = False
        table = QTableWidget(0, 3)
        table.setHorizontalHeaderLabels(["", "Label", "Name"])
        table.verticalHeader().setVisible(False)
        header = table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        table.setToolTip("Classes: click a row to paint that class (Alt+1..9); double-click a name to rename it")
        row_height = table.verticalHeader().defaultSectionSize()
        table.setMaximumHeight(row_height * VISIBLE_ROWS + header.sizeHint().height() + 4)
        table.setMinimumHeight(row_height * MIN_ROWS + header.sizeHint().height() + 4)
        table.itemChanged.connect(self._item_changed)
        table.cellClicked.connect(self._cell_clicked)
        self.table = table
        self._labels: list[int] = []

    @property
    def widget(self) -> Any:
        """The table as a magicgui widget (for magicgui containers)."""
        from magicgui.widgets import Container

        if not hasattr(self, "_wrapper"):
            self._wrapper = Container(labels=False)
            self._wrapper.native.layout().setContentsMargins(0, 0, 0, 0)
            self._wrapper.native.layout().addWidget(self.table)
            self._wrapper.label = "Classes"
        return self._wrapper

    @property
    def labels(self) -> list[int]:
        return list(self._labels)

    def names(self) -> dict[int, str]:
        """{label: name} of the classes the user named (default 'class N' names left out)."""
        out = {}
        for row, label in enumerate(self._labels):
            item = self.table.item(row, 2)
            text = item.text().strip() if item is not None else ""
            if text and text != default_name(label):
                out[label] = text
        return out

    def set_classes(
        self, labels: Sequence[int], colors: Mapping[int, Sequence[float]], names: Mapping[int, str]
    ) -> None:
        """Show ``labels`` with their colours (RGBA in [0, 1]) and names (default 'class N')."""
        self._filling = True
        try:
            self._labels = sorted({int(label) for label in labels if int(label) > 0})
            self.table.setRowCount(len(self._labels))
            for row, label in enumerate(self._labels):
                swatch = QTableWidgetItem("")
                rgba = colors.get(label)
                if rgba is not None:
                    swatch.setBackground(QColor.fromRgbF(*[float(c) for c in list(rgba)[:3]]))
                swatch.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable)
                value = QTableWidgetItem(str(label))
                value.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable)
                name = QTableWidgetItem(names.get(label, default_name(label)))
                self.table.setItem(row, 0, swatch)
                self.table.setItem(row, 1, value)
                self.table.setItem(row, 2, name)
        finally:
            self._filling = False

    def select(self, label: int) -> None:
        if label in self._labels:
            self.table.selectRow(self._labels.index(label))

    def _item_changed(self, item: QTableWidgetItem) -> None:
        if not self._filling and item.column() == 2:
            self.names_changed.emit(self.names())

    def _cell_clicked(self, row: int, _column: int) -> None:
        if 0 <= row < len(self._labels):
            self._on_pick(self._labels[row])
