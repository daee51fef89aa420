"""The Train tab of the Segmentation dock: class table, Train / Live / Segment after training, classical
filters, the classifier head, and what the current model is."""

from __future__ import annotations

from typing import Any

from magicgui.widgets import CheckBox, ComboBox, Container, Label, PushButton

from ._classes import ClassTable
from ._common import wrap_label
from ._dock import tab_page
from ._model_text import NO_MODEL
from ._segmentation_keys import SHORTCUTS, SHORTCUTS_TEXT

#: The Head choices (shown, value): the values are ``core.segmentation.heads.HEADS``.
HEAD_CHOICES = [("linear", "linear"), ("MLP", "mlp")]
#: The *Refine edges* choices: (text, ``LinearSegmenter(refine=...)``).
REFINE_CHOICES = [("none", "none"), ("CRF", "crf"), ("guided filter", "guided")]


def default_refine() -> str:
    """The refinement of a new LinearSegmenter (its documented default)."""
    import inspect

    from ..core.segmentation.segmenter import LinearSegmenter

    return str(inspect.signature(LinearSegmenter).parameters["refine"].default)


class TrainTab:
    """The Train tab's controls (the dock connects them); :attr:`page` is the tab.

    Parameters
    ----------
    on_pick_class : callable
        Called with a label value when the user clicks a row of the class table.
    """

    def __init__(self, on_pick_class: Any):
        self.classes = ClassTable(on_pick=on_pick_class)
        self.train = PushButton(text="Train")
        self.train.native.setToolTip(f"Train on the scribbles ({SHORTCUTS['train']})")
        self.live = CheckBox(
            text="Live", tooltip=f"Retrain and segment the current plane after each stroke ({SHORTCUTS['live']})"
        )
        self.auto_segment = CheckBox(
            text="Segment after training", value=True, tooltip="Train also segments the scribbled plane(s)"
        )
        train_row = Container(widgets=[self.train, self.live, self.auto_segment], layout="horizontal", labels=False)
        self.footer = train_row  # outside the scrolling page: Train is always in sight
        self.hybrid = CheckBox(
            text="+ classical filters",
            tooltip="Also train on classical multiscale filters of the image (intensity, edges, texture): "
            "helps where the classes differ mostly in brightness",
        )
        self.head = ComboBox(
            label="Head",
            choices=HEAD_CHOICES,
            value="linear",
            tooltip="The classifier on the features: linear (fastest), or a small MLP (one hidden layer) that can "
            "separate classes a linear boundary cannot; both are exact at full resolution",
        )
        self.refine = ComboBox(
            label="Refine edges",
            choices=REFINE_CHOICES,
            value=default_refine(),
            tooltip="Refine the class probabilities along the image's edges: a local dense CRF, a guided filter, "
            "or none. Saved with the model; Predict, View, Live and folders all use it",
        )
        self.volume = CheckBox(
            text="Volume (3D features)",
            enabled=False,
            tooltip="For 3D images (Z, Y, X): each voxel's features are the mean of those of the XY, XZ and YZ planes "
            "through it (about 3x the work); scribbles on any plane train, Predict segments the whole volume. The "
            "layer's scale gives the voxel sizes.",
        )
        self.model_status = Label(label="Model", value=NO_MODEL)
        self.shortcuts = Label(value=SHORTCUTS_TEXT)
        for label in (self.model_status, self.shortcuts):
            wrap_label(label.native, selectable=True)
        self.page = tab_page(
            self.classes.widget, self.hybrid, self.head, self.refine, self.volume, self.model_status, self.shortcuts
        )


def copy_scribbles(viewer: Any, geometry: Any, labels_layer: Any, image_layer: Any) -> dict[int, Any]:
    """Copies of the scribbled planes: plane index -> (H, W) labels (planes without scribbles left out).

    A stack's scribbles may be one plane only (they then belong to the plane shown). InputError when there is no
    layer, its shape does not fit the image, or nothing is painted.
    """
    import numpy as np

    from .._layers import current_plane
    from ..core.errors import InputError

    if labels_layer is None:
        raise InputError("Choose a scribbles (Labels) layer, or press 'New scribbles layer' and paint.")
    data = labels_layer.data
    shape = tuple(data.shape)
    if shape == geometry.planes_shape:
        copies = {i: np.array(data[i]) for i in range(shape[0])} if geometry.is_stack else {0: np.array(data)}
    elif geometry.is_stack and shape == geometry.plane_shape:
        copies = {current_plane(viewer, image_layer): np.array(data)}
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
