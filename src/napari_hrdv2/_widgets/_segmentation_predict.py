"""The "Predict & export" tab of the Segmentation dock: predict the plane / all planes / the view, extra
outputs, how the segmentation is drawn, model files, export, and the feature settings in use."""

from __future__ import annotations

from typing import Any

from magicgui.widgets import CheckBox, Container, FloatSlider, Label, PushButton, SpinBox

from ._common import wrap_label
from ._dock import tab_page
from ._segmentation_keys import SHORTCUTS


def button_row(*widgets: Any, label: str | None = None) -> Container:
    """A row of widgets without margins (``label`` shown left of it in a labelled page)."""
    row = Container(widgets=list(widgets), layout="horizontal", labels=False)
    row.native.layout().setContentsMargins(0, 0, 0, 0)
    if label is not None:
        row.label = label
    return row


class PredictTab:
    """The "Predict & export" tab's controls (the dock connects them); :attr:`page` is the tab."""

    def __init__(self) -> None:
        self.predict_plane = PushButton(text="Predict plane")
        self.predict_plane.native.setToolTip(f"Segment the plane shown ({SHORTCUTS['predict']})")
        self.predict_all = PushButton(text="All planes")
        self.predict_view = PushButton(text="View")
        self.predict_view.native.setToolTip(
            "Segment only the part of the image shown in the canvas (pan/zoom first): quick on huge images"
        )
        self.want_uncertainty = CheckBox(text="Uncertainty", value=False)
        self.want_probabilities = CheckBox(text="Probabilities", value=False)
        self.opacity = FloatSlider(label="Opacity", min=0.0, max=1.0, step=0.05, value=0.5)
        self.contour = SpinBox(label="Contour", min=0, max=20, value=0, tooltip="0: filled; n: outlines n px wide")
        self.save = PushButton(text="Save model...")
        self.load = PushButton(text="Load model...")
        self.export = PushButton(text="Export segmentation...")
        self.export_per_plane = CheckBox(
            text="one file per plane",
            tooltip="Stacks: one file per plane instead of a multi-page TIFF (PNG is always one file per plane)",
        )
        self.settings_summary = Label(label="Features")
        wrap_label(self.settings_summary.native, selectable=True)
        self.open_features = PushButton(text="Feature settings...")
        self.page = tab_page(
            button_row(self.predict_plane, self.predict_all, self.predict_view),
            button_row(self.want_uncertainty, self.want_probabilities, label="Also"),
            self.opacity,
            self.contour,
            button_row(self.save, self.load),
            button_row(self.export, self.export_per_plane),
            self.settings_summary,
            self.open_features,
        )

    @property
    def buttons(self) -> tuple[PushButton, ...]:
        """The buttons that start jobs (disabled while one runs)."""
        return (self.predict_plane, self.predict_all, self.predict_view)

    def outputs(self) -> dict[str, bool]:
        """Which extra result layers a prediction makes: ``uncertainty`` and ``probabilities`` keywords."""
        return {
            "uncertainty": bool(self.want_uncertainty.value),
            "probabilities": bool(self.want_probabilities.value),
        }

    def display(self) -> dict[str, Any]:
        """How the segmentation layer is drawn: ``opacity`` and ``contour`` keywords."""
        return {"opacity": float(self.opacity.value), "contour": int(self.contour.value)}
