"""The Features dock's dataset tools ("Views" tab): one PCA basis for all planes, region/CLS similarity, matching.

:class:`AnalysisControls` is a magicgui container embedded in the Features widget; it uses that
widget's settings, image choice and job runner, and the Qt-free jobs of :mod:`.._analysis_jobs`.

Pinned API (tests and scripts): :meth:`AnalysisControls.fit_basis`, :meth:`apply_basis`,
:meth:`save_basis`, :meth:`load_basis`, :meth:`search`, :meth:`match`; :attr:`basis`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, Label, LineEdit, PushButton, SpinBox

from .._analysis_jobs import match_job, pca_apply_job, pca_fit_job, similarity_search_job
from .._layers import (
    SourceGeometry,
    assemble_planes,
    current_plane,
    pca_layer_data,
    plane_of,
    record_result,
    result_metadata,
    similarity_layer_data,
    upsert_layer,
)
from ..core.config import FeatureConfig
from ..core.errors import HRDv2Error, InputError
from ._common import image_layer_choices, wrap_label
from ._runner import JobRunner, notify_error

if TYPE_CHECKING:  # pragma: no cover
    from napari.qt.threading import GeneratorWorker

    from ..core.analysis.pca import PCABasis

REFERENCES = ("region", "CLS token")
BASIS_FILTER = "PCA basis (*.safetensors)"


def parse_components(text: str) -> tuple[int, ...]:
    """'0, 1, 2' -> (0, 1, 2); '3' -> (3,) (a grey map). Three or one non-negative integers."""
    try:
        values = tuple(int(part) for part in str(text).replace(";", ",").split(",") if part.strip())
    except ValueError:
        raise InputError(f"Components are numbers separated by commas, e.g. '0, 1, 2' or '3'; got '{text}'.") from None
    if len(values) not in (1, 3) or min(values, default=0) < 0:
        raise InputError(f"Give three components (R, G, B) or one (grey), e.g. '3, 4, 5' or '0'; got '{text}'.")
    return values


def region_mask(layer: Any, plane: int, shape: tuple[int, int], value: int) -> np.ndarray:
    """(H, W) bool region of a Labels layer (pixels equal to ``value``, 0 = any label) or a Shapes layer."""
    kind = type(layer).__name__
    if kind == "Labels":
        data = np.asarray(layer.data[plane] if np.ndim(layer.data) == 3 else layer.data)
        if data.shape != shape:
            raise InputError(f"'{layer.name}' has planes of {data.shape}, the image {shape}.")
        mask = data > 0 if value == 0 else data == value
    elif kind == "Shapes":
        if not len(layer.data):
            raise InputError(f"'{layer.name}' has no shapes: draw the region first.")
        masks = layer.to_masks(mask_shape=shape)
        mask = np.asarray(masks).reshape(-1, *shape).any(axis=0)
    else:
        raise InputError(f"'{layer.name}' is a {kind} layer; pick a Labels or Shapes layer for the region.")
    if not mask.any():
        raise InputError(f"The region in '{layer.name}' is empty on this plane.")
    return mask


class AnalysisControls(Container):
    """PCA basis (fit on all planes, apply, save, load, components), region/CLS similarity and matching.

    Parameters
    ----------
    viewer, session
        The viewer and its shared HR-Dv2 session (cache, PCA bases).
    runner : JobRunner
        The Features dock's job runner.
    messages : DockMessages
        The Features dock's download question.
    image : callable
        Returns the image chosen in the Features dock.
    settings : callable
        Returns the Features dock's FeatureConfig (InputError if a field is invalid).
    """

    def __init__(
        self,
        viewer: Any,
        session: Any,
        *,
        runner: JobRunner,
        messages: Any,
        image: Callable[[], Any],
        settings: Callable[[], FeatureConfig],
    ):
        super().__init__(labels=True)
        self._viewer = viewer
        self._session = session
        self._runner = runner
        self._messages = messages
        self._image = image
        self._settings = settings
        self.basis: PCABasis | None = None
        # ---- PCA basis
        self._components = LineEdit(
            label="Components", value="0, 1, 2", tooltip="Three components as R, G, B (e.g. 3, 4, 5) or one as grey"
        )
        self._foreground = CheckBox(
            text="Foreground only",
            tooltip="Two-step PCA: Otsu threshold on PC1, foreground = the side touching the image border less",
        )
        self._fit = PushButton(text="Fit on all planes")
        self._fit.native.setToolTip("Fit one PCA basis on random pixels of every plane (colours fixed for all)")
        self._apply = PushButton(text="Apply")
        self._apply.native.setToolTip("Colour every plane with the basis (fixed colour range: no flicker)")
        self._save = PushButton(text="Save...")
        self._save.native.setToolTip("Save basis... (.safetensors with its metadata)")
        self._load = PushButton(text="Load...")
        self._load.native.setToolTip("Load basis... (from this dock or 'napari-hrdv2 pca fit')")
        fit_row = Container(widgets=[self._fit, self._apply], layout="horizontal", labels=False)
        file_row = Container(widgets=[self._save, self._load], layout="horizontal", labels=False)
        file_row.label = "Basis file"
        for row in (fit_row, file_row):
            row.native.layout().setContentsMargins(0, 0, 0, 0)
        self._basis_info = Label(label="Basis", value="none")
        wrap_label(self._basis_info.native, selectable=True)  # a long description never widens the dock
        # ---- similarity
        self._reference = ComboBox(label="Similar to", choices=list(REFERENCES))
        self._region_layer = ComboBox(
            label="Region", choices=self._region_choices, nullable=True, tooltip="A Labels or Shapes layer"
        )
        self._region_value = SpinBox(label="Label", min=0, max=65535, tooltip="Label value of the region; 0: any")
        self._search = PushButton(text="Search planes")
        self._search.native.setToolTip("One reference vector (the region's mean feature, or the CLS token)")
        # ---- matching
        self._match_with = ComboBox(label="Match with", choices=self._image_choices, nullable=True)
        self._top_k = SpinBox(label="Best", min=0, max=100000, value=100, tooltip="Best matches kept; 0: all")
        self._refine = CheckBox(text="Refine to pixels", tooltip="Move each match to the most similar pixel nearby")
        self._match = PushButton(text="Match patches")
        self.extend(
            [
                self._components,
                self._foreground,
                fit_row,
                file_row,
                self._basis_info,
                self._reference,
                self._region_layer,
                self._region_value,
                self._search,
                self._match_with,
                self._top_k,
                self._refine,
                self._match,
            ]
        )
        self._fit.changed.connect(lambda *_: self.fit_basis())
        self._apply.changed.connect(lambda *_: self.apply_basis())
        self._save.changed.connect(self._save_clicked)
        self._load.changed.connect(self._load_clicked)
        self._search.changed.connect(lambda *_: self.search())
        self._match.changed.connect(lambda *_: self.match())
        events = self._viewer.layers.events
        for event in (events.inserted, events.removed):
            event.connect(self._refresh_choices)

    # ------------------------------------------------------------------ helpers
    def _image_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        return image_layer_choices(self._viewer)

    def _region_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        return [(layer.name, layer) for layer in self._viewer.layers if type(layer).__name__ in ("Labels", "Shapes")]

    def _refresh_choices(self, *_: Any) -> None:
        self._region_layer.reset_choices()
        self._match_with.reset_choices()

    def _source(self) -> tuple[Any, SourceGeometry, FeatureConfig]:
        layer = self._image()
        if layer is None:
            raise InputError("Choose an image layer first.")
        return layer, SourceGeometry.from_layer(layer), self._settings()

    def _start(self, job: Any, *args: Any, **kwargs: Any) -> GeneratorWorker | None:
        config = next((arg for arg in args if isinstance(arg, FeatureConfig)), None)
        if config is not None and not self._messages.may_download(config.backbone):
            return None
        return self._runner.start(job, *args, **kwargs)

    def _fail(self, err: HRDv2Error) -> None:
        notify_error(err)
        self._basis_info.tooltip = str(err)

    def _basis_config(self, settings: FeatureConfig) -> FeatureConfig:
        """The loaded/fitted basis' own feature settings, computed as the dock's runtime settings say."""
        saved = (self.basis.metadata.get("config") if self.basis is not None else None) or None
        return settings if saved is None else FeatureConfig.from_dict(saved).with_runtime_of(settings)

    # ------------------------------------------------------------------ PCA basis
    def fit_basis(self) -> GeneratorWorker | None:
        """Fit one PCA basis on every plane of the chosen image (then apply it)."""
        try:
            layer, geometry, config = self._source()
            n_components = max(parse_components(self._components.value)) + 1
        except HRDv2Error as err:
            self._fail(err)
            return None
        return self._start(
            pca_fit_job,
            layer.data,
            geometry.plane_indices,
            config,
            self._session.cache,
            is_stack=geometry.is_stack,
            n_components=max(3, n_components),
            foreground=bool(self._foreground.value),
            description=f"PCA basis over {geometry.name}",
            on_returned=lambda basis: self._fitted(basis, geometry, config),
        )

    def _fitted(self, basis: PCABasis, geometry: SourceGeometry, config: FeatureConfig) -> None:
        self.set_basis(basis)
        self._session.pca_bases[(geometry.name, config)] = basis
        self.apply_basis()

    def set_basis(self, basis: PCABasis | None) -> None:
        self.basis = basis
        self._basis_info.value = "none" if basis is None else describe_basis(basis)
        self._basis_info.tooltip = "" if basis is None else basis.describe()

    def apply_basis(self) -> GeneratorWorker | None:
        """Colour every plane of the chosen image with the basis (layer "<image> PCA")."""
        try:
            if self.basis is None:
                raise InputError("No PCA basis yet: Fit on all planes, or Load basis...")
            layer, geometry, settings = self._source()
            components = parse_components(self._components.value)
            picked = components[0] if len(components) == 1 else components
            self.basis.check_components(components)
            config = self._basis_config(settings)
        except HRDv2Error as err:
            self._fail(err)
            return None
        return self._start(
            pca_apply_job,
            layer.data,
            geometry.plane_indices,
            self.basis,
            config,
            self._session.cache,
            is_stack=geometry.is_stack,
            components=picked,
            description=f"PCA view of {geometry.name}",
            on_returned=lambda views: upsert_layer(
                self._viewer,
                pca_layer_data(geometry, assemble_planes(geometry, views, dtype=np.float32), config=config.to_dict()),
            ),
        )

    def save_basis(self, path: str | Path, *, overwrite: bool = True) -> Path | None:
        """Write the basis (safetensors + metadata); the file dialog already asked about replacing."""
        try:
            if self.basis is None:
                raise InputError("No PCA basis to save: Fit on all planes first.")
            return self.basis.save(path, overwrite=overwrite)
        except HRDv2Error as err:
            self._fail(err)
            return None

    def load_basis(self, path: str | Path) -> PCABasis | None:
        """Read a basis file (from the dock or ``napari-hrdv2 pca fit``) and show it."""
        from ..core.analysis.pca import PCABasis

        try:
            basis = PCABasis.load(path)
        except HRDv2Error as err:
            self._fail(err)
            return None
        self.set_basis(basis)
        return basis

    def _save_clicked(self, *_: Any) -> None:
        from qtpy.QtWidgets import QFileDialog

        path, _filter = QFileDialog.getSaveFileName(self.native, "Save PCA basis", "basis.safetensors", BASIS_FILTER)
        if path:
            self.save_basis(path if path.endswith(".safetensors") else f"{path}.safetensors")

    def _load_clicked(self, *_: Any) -> None:
        from qtpy.QtWidgets import QFileDialog

        path, _filter = QFileDialog.getOpenFileName(self.native, "Load PCA basis", "", BASIS_FILTER)
        if path:
            self.load_basis(path)

    # ------------------------------------------------------------------ similarity
    def search(self) -> GeneratorWorker | None:
        """Similarity of every plane to the region's mean feature (current plane) or to the CLS token."""
        try:
            layer, geometry, config = self._source()
            plane = current_plane(self._viewer, layer)
            use_cls = self._reference.value == REFERENCES[1]
            mask = None
            if not use_cls:
                region = self._region_layer.value
                if region is None:
                    raise InputError("Choose a Labels or Shapes layer holding the region (or use the CLS token).")
                mask = region_mask(region, plane, geometry.plane_shape, int(self._region_value.value))
        except HRDv2Error as err:
            self._fail(err)
            return None
        return self._start(
            similarity_search_job,
            layer.data,
            geometry.plane_indices,
            config,
            self._session.cache,
            is_stack=geometry.is_stack,
            reference_plane=plane,
            mask=mask,
            use_cls=use_cls,
            description=f"Similarity search in {geometry.name}",
            on_returned=lambda maps: upsert_layer(
                self._viewer,
                similarity_layer_data(
                    geometry, assemble_planes(geometry, maps, dtype=np.float32), pixel=(plane, -1, -1)
                ),
            ),
        )

    # ------------------------------------------------------------------ matching
    def match(self) -> GeneratorWorker | None:
        """Match the current planes of the chosen image (A) and "Match with" (B); adds A | B, lines and points."""
        try:
            layer_a, geometry, config = self._source()
            layer_b = self._match_with.value
            if layer_b is None:
                raise InputError("Choose the second image in 'Match with'.")
            image_a = plane_of(layer_a, current_plane(self._viewer, layer_a))
            image_b = plane_of(layer_b, current_plane(self._viewer, layer_b))
        except HRDv2Error as err:
            self._fail(err)
            return None
        top_k = int(self._top_k.value) or None
        return self._start(
            match_job,
            image_a,
            image_b,
            config,
            self._session.cache,
            top_k=top_k,
            refine=bool(self._refine.value),
            description=f"Matching {layer_a.name} and {layer_b.name}",
            on_returned=lambda matches: add_match_layers(
                self._viewer, layer_a.name, layer_b.name, image_a, image_b, matches
            ),
        )


def add_match_layers(
    viewer: Any, name_a: str, name_b: str, image_a: np.ndarray, image_b: np.ndarray, matches: Any
) -> None:
    """Layers: "<A> | <B>" (side by side), "<A> | <B> matches" (Shapes lines) and "... ends" (Points)."""
    from ..core.analysis.match import side_by_side

    canvas, offset = side_by_side(image_a, image_b)
    matches = np.asarray(matches).reshape(-1, 5)
    base = f"{name_a} | {name_b}"
    start = matches[:, 0:2]
    end = matches[:, 2:4] + np.array([0.0, offset])
    scores = matches[:, 4]
    tag = result_metadata("matches", name_a, other=name_b)
    layers = viewer.layers
    for name in (base, f"{base} matches", f"{base} ends"):
        if name in layers:
            layers.remove(name)
    record_result(viewer.add_image(canvas, name=base, rgb=True, metadata=tag))
    if len(matches):
        lines = [np.stack([a, b]) for a, b in zip(start, end)]
        shapes = viewer.add_shapes(
            lines,
            shape_type="line",
            edge_color="score",
            edge_colormap="viridis",
            edge_width=1.5,
            features={"score": scores},
            name=f"{base} matches",
            metadata=tag,
        )
        points = viewer.add_points(
            np.concatenate([start, end]),
            size=5,
            face_color="yellow",
            features={"score": np.concatenate([scores, scores])},
            name=f"{base} ends",
            metadata=tag,
        )
        record_result(shapes)
        record_result(points)


def describe_basis(basis: PCABasis) -> str:
    """The Basis line, e.g. '3 components, 6 plane(s), foreground'."""
    meta = basis.metadata
    fg = ", foreground" if basis.foreground_cue else ""
    return f"{basis.n_components} components, {meta.get('n_images', '?')} plane(s){fg}"
