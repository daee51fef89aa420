"""The Segmentation dock's Scribbles box and its New button: which Labels layer is painted for the chosen image."""

from __future__ import annotations

from typing import Any

from magicgui.widgets import ComboBox, Container, PushButton

from ._common import labels_layer_choices, scribbles_for


class ScribblesBox:
    """The Scribbles combo box (the viewer's user Labels layers) with a New button, as one labelled row.

    Parameters
    ----------
    viewer : napari.Viewer
        Whose Labels layers are offered.
    """

    def __init__(self, viewer: Any):
        self._viewer = viewer
        self.combo = ComboBox(label="Scribbles", choices=self._choices, nullable=True)
        self.new_button = PushButton(text="New")
        self.new_button.native.setToolTip("Add an empty scribbles (Labels) layer for the image, ready to paint")
        self.row = Container(widgets=[self.combo, self.new_button], layout="horizontal", labels=False)
        self.row.label = "Scribbles"
        self.row.native.layout().setContentsMargins(0, 0, 0, 0)

    def _choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        return labels_layer_choices(self._viewer)

    @property
    def value(self) -> Any:
        """The chosen scribbles layer, or None."""
        return self.combo.value

    def choose_for(self, image: Any) -> None:
        """Choose the layer made for ``image`` (else the chosen or active one that fits, else the last that fits)."""
        self.combo.reset_choices()
        chosen = scribbles_for(self._viewer, image, self.combo.value)
        if chosen is not self.combo.value:
            self.combo.value = chosen

    def follow_active(self, image: Any, layer: Any) -> None:
        """Choose ``layer`` (just made active in the layer list) when it is a scribbles layer that fits ``image``."""
        known = layer is not None and any(layer is choice for choice in self.combo.choices)
        if known and layer is not self.combo.value and scribbles_for(self._viewer, image, layer) is layer:
            self.combo.value = layer

    def show(self, layer: Any) -> None:
        """Choose ``layer`` (one a programmatic call used) if it is in the viewer."""
        if layer is not None and layer in self._viewer.layers and layer is not self.combo.value:
            self.combo.reset_choices()
            self.combo.value = layer
