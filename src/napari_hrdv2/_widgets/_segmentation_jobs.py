"""The Segmentation dock's jobs: train, predict (plane, all planes, the view) and apply to a folder, and what
their results do (the model kept, result layers, status). Qt-free jobs run in workers; this runs on the main thread."""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._layers import SourceGeometry, ViewRegion, current_plane, image_data, visible_region
from .._workers import (
    BackboneInfo,
    BatchReport,
    PartialPrediction,
    PredictionResult,
    RegionResult,
    folder_job,
    predict_job,
    predict_region_job,
    train_job,
    train_lazy_job,
    volume_job,
)
from ..core.errors import HRDv2Error, InputError
from ._common import ProgressRow, image_layer_choices, refining_message
from ._dock import DockMessages
from ._live import LiveRetrain
from ._runner import JobRunner, notify
from ._segmentation_predict import PredictTab
from ._segmentation_results import SegmentationResults
from ._segmentation_train import TrainTab, copy_scribbles

if TYPE_CHECKING:  # pragma: no cover
    from napari.qt.threading import GeneratorWorker

#: Lazily read (dask/Zarr) images with more pixels per plane than this train on their scribbled tiles only, and
#: "Segment after training" segments the view (as ``core.streaming.STREAM_PIXELS``: about 5800 x 5800).
LAZY_TRAIN_PIXELS = 1 << 25
NO_IMAGE = "Choose an image layer first (open an image, or File > Open Sample > HR-Dv2)."


def new_segmenter(*, hybrid: bool = False, head: str = "linear", refine: str | None = None) -> Any:
    """A segmenter of ``head`` ("linear" or "mlp") with its documented default hyper-parameters (plus classical
    filters if ``hybrid``, and the refinement ``refine`` if given)."""
    from ..core.segmentation import heads

    options = {} if refine is None else {"refine": refine}
    return heads.new_segmenter(head, hybrid=hybrid, **options)


def warm_factory(
    previous: Any, make_segmenter: Callable[[], Any], hybrid: bool, *, default: bool, head: str = "linear"
) -> Any:
    """For live updates: a factory of copies of ``previous`` that start from its solution (fewer iterations).

    A copy, so the model other jobs may be predicting with is never changed under them. ``make_segmenter`` itself
    when it is not the ``default`` factory, there is no model yet, it differs in ``hybrid`` or ``head``, or cannot
    warm start.
    """
    if not default or previous is None or getattr(previous, "hybrid", None) != hybrid:
        return make_segmenter
    if getattr(previous, "HEAD", "linear") != head:
        return make_segmenter
    if not hasattr(previous, "warm_start"):
        return make_segmenter

    def warm() -> Any:
        model = copy.deepcopy(previous)
        model.warm_start = True
        return model

    return warm


def geometry_of(image_layer: Any) -> SourceGeometry:
    """The image's geometry; InputError saying what to do when no image is chosen."""
    if image_layer is None:
        raise InputError(NO_IMAGE)
    return SourceGeometry.from_layer(image_layer)


def is_volume_layer(image_layer: Any) -> bool:
    """Whether ``image_layer`` is a 3D image (Z, Y, X[, 3|4]) that volume features can describe."""
    if image_layer is None or getattr(image_layer, "multiscale", False):
        return False
    try:
        return SourceGeometry.from_layer(image_layer).is_stack
    except HRDv2Error:
        return False


def layer_spacing(geometry: SourceGeometry) -> tuple[float, float, float]:
    """The (dz, dy, dx) voxel sizes of a 3D image layer: its scale."""
    dz, dy, dx = geometry.scale[-3:]
    return abs(dz), abs(dy), abs(dx)


def trains_lazily(image_layer: Any, geometry: SourceGeometry) -> bool:
    """Whether Train encodes only the scribbled tiles: a lazily read (dask/Zarr) image of huge planes."""
    height, width = geometry.plane_shape
    return not isinstance(image_layer.data, np.ndarray) and height * width > LAZY_TRAIN_PIXELS


class SegmentationJobs:
    """Starts the dock's jobs with its options and shows their results.

    Parameters
    ----------
    viewer, session
        The viewer and its shared HR-Dv2 session (settings, cache, model, class names).
    runner, live_runner : JobRunner
        Run the user's jobs and the live retrains (which cancel each other only within their runner).
    live_mode : LiveRetrain
        Numbers the live runs (a superseded run's results are dropped).
    train_tab, predict_tab
        The options (segment after training, classical filters, extra outputs).
    results : SegmentationResults
        Puts results into layers.
    messages : DockMessages
        The dock's status line, help box and download question.
    select : callable
        ``select(image_layer, labels_layer=None)`` shows the layers a call used in the dock's boxes.
    refresh_classes : callable
        Updates the class table (after a model was trained).
    segmenter_factory : callable
        ``segmenter_factory(live)``: what makes the untrained model of a (live) training.
    progress : ProgressRow
        The dock's progress row (its remaining time goes into the "refining" status).
    """

    def __init__(
        self,
        viewer: Any,
        session: Any,
        *,
        runner: JobRunner,
        live_runner: JobRunner,
        live_mode: LiveRetrain,
        train_tab: TrainTab,
        predict_tab: PredictTab,
        results: SegmentationResults,
        messages: DockMessages,
        select: Callable[..., None],
        refresh_classes: Callable[[], None],
        segmenter_factory: Callable[[bool], Any],
        progress: ProgressRow,
    ):
        self._viewer = viewer
        self._session = session
        self._runner = runner
        self._live_runner = live_runner
        self._live_mode = live_mode
        self._train_tab = train_tab
        self._predict_tab = predict_tab
        self._results = results
        self._messages = messages
        self._select = select
        self._refresh_classes = refresh_classes
        self._segmenter_factory = segmenter_factory
        self._progress = progress

    # ------------------------------------------------------------------ train
    def train(
        self, image_layer: Any, labels_layer: Any, *, predict_planes: list[int] | None = None, live: bool = False
    ) -> GeneratorWorker | None:
        """Train on a copy of the scribbles, then predict (see ``SegmentationWidget.train``)."""
        try:
            geometry = geometry_of(image_layer)
            scribbles = copy_scribbles(self._viewer, geometry, labels_layer, image_layer)
        except HRDv2Error as err:
            self._messages.report(err, quiet=live)
            return None
        if not live:
            self._select(image_layer, labels_layer)
        self._messages.show_help(None)
        if not self._messages.may_download(self._session.config.backbone, interactive=not live):
            return None
        if predict_planes is not None:
            indices = list(predict_planes)
        else:
            indices = sorted(scribbles) if self._train_tab.auto_segment.value else []
        runner = self._live_runner if live else self._runner
        generation = self._live_mode.next_generation() if live else None
        if self._train_tab.volume.value and self._train_tab.volume.enabled:
            return self._train_volume(image_layer, geometry, scribbles, runner, generation, live=live)
        common = {
            "is_stack": geometry.is_stack,
            "make_segmenter": self._segmenter_factory(live),
            "source": image_layer,
            "quiet_errors": live,
        }
        data, _ = image_data(self._viewer, image_layer, self._session.config.channel_mode)
        if trains_lazily(image_layer, geometry):
            if self._train_tab.hybrid.value:
                message = "Untick '+ classical filters' to train on a huge image: they need it whole in memory."
                self._messages.report(InputError(message), quiet=live)
                return None
            return runner.start(
                train_lazy_job,
                data,
                scribbles,
                self._session.config,
                cache=self._session.cache,
                description=f"HR-Dv2 training on the scribbled tiles of {geometry.name}",
                on_returned=partial(self._lazy_trained, image_layer, geometry, generation),
                **common,
            )
        return runner.start(
            train_job,
            data,
            scribbles,
            self._session.config,
            self._session.cache,
            predict_indices=indices,
            progressive=live,
            **self._predict_tab.outputs(),
            description=f"HR-Dv2 training on {geometry.name}",
            on_returned=partial(self.show_prediction, geometry, generation=generation),
            on_yielded=partial(self.on_job_item, geometry, generation),
            **common,
        )

    def _train_volume(
        self, image_layer: Any, geometry: SourceGeometry, scribbles: dict[int, Any], runner: JobRunner,
        generation: int | None, *, live: bool,
    ) -> GeneratorWorker | None:  # fmt: skip
        """Train with volume features on the scribbles of every plane, then segment the whole volume."""
        if self._train_tab.hybrid.value:
            self._messages.report(InputError("Untick '+ classical filters' to train with volume features."), quiet=live)
            return None
        labels = np.zeros(geometry.planes_shape, dtype=next(iter(scribbles.values())).dtype)
        for index, plane in scribbles.items():
            labels[index] = plane
        return runner.start(
            volume_job,
            image_layer.data,
            labels,
            self._session.config,
            self._session.cache,
            spacing=layer_spacing(geometry),
            make_segmenter=self._segmenter_factory(live),
            predict=bool(self._train_tab.auto_segment.value or live),
            **self._predict_tab.outputs(),
            description=f"HR-Dv2 training on the volume {geometry.name}",
            on_returned=partial(self.show_prediction, geometry, generation=generation),
            on_yielded=partial(self.on_job_item, geometry, generation),
            source=image_layer,
            quiet_errors=live,
        )

    def _lazy_trained(
        self, image_layer: Any, geometry: SourceGeometry, generation: int | None, result: PredictionResult
    ) -> None:
        """A model trained on a huge image's scribbled tiles: keep it and segment the view (not the whole image)."""
        if self._live_mode.is_stale(generation):
            return
        self.keep_model(result)
        self._refresh_classes()
        self._messages.set_status(
            f"Model trained on the scribbled tiles of {geometry.name}; press View to segment the part shown."
        )
        if self._train_tab.auto_segment.value or generation is not None:
            self.predict_view(image_layer)

    # ------------------------------------------------------------------ predict
    def model_or_raise(self) -> Any:
        """The trained or loaded model; InputError saying how to get one if there is none."""
        if self._session.segmenter is None:
            raise InputError("No model yet: paint scribbles of at least two classes and press Train, or Load model.")
        return self._session.segmenter

    def model_backbone_allowed(self) -> bool:
        """False when the model's backbone would be downloaded and the user declined."""
        return self._messages.may_download(self._session.prediction_config().backbone, for_model=True)

    def predict(self, image_layer: Any, *, all_planes: bool = False) -> GeneratorWorker | None:
        """Segment the current plane (or all planes) of ``image_layer`` with the trained or loaded model."""
        try:
            geometry = geometry_of(image_layer)
            self.model_or_raise()
        except HRDv2Error as err:
            self._messages.report(err)
            return None
        self._select(image_layer)
        if not self.model_backbone_allowed():
            return None
        config = self._session.prediction_config()
        if config.volume:  # one plane costs as much as all of them: the whole volume is segmented
            return self._runner.start(
                volume_job,
                image_layer.data,
                None,
                config,
                self._session.cache,
                spacing=layer_spacing(geometry) if geometry.is_stack else None,
                segmenter=self._session.segmenter,
                **self._predict_tab.outputs(),
                description=f"HR-Dv2 segmentation of the volume {geometry.name}",
                on_returned=partial(self.show_prediction, geometry, generation=None),
                on_yielded=partial(self.on_job_item, geometry, None),
                source=image_layer,
            )
        indices = geometry.plane_indices if all_planes else [current_plane(self._viewer, image_layer)]
        data, _ = image_data(self._viewer, image_layer, self._session.prediction_config().channel_mode)
        return self._runner.start(
            predict_job,
            data,
            indices,
            self._session.segmenter,
            self._session.prediction_config(),
            self._session.cache,
            is_stack=geometry.is_stack,
            **self._predict_tab.outputs(),
            description=f"HR-Dv2 segmentation of {geometry.name}",
            on_returned=partial(self.show_prediction, geometry, generation=None),
            on_yielded=partial(self.on_job_item, geometry, None),
            source=image_layer,
        )

    def predict_view(self, image_layer: Any, region: ViewRegion | None = None) -> GeneratorWorker | None:
        """Segment the part of the current plane shown in the canvas (see ``SegmentationWidget.predict_view``)."""
        try:
            if image_layer is None:
                raise InputError(NO_IMAGE)
            geometry = SourceGeometry.from_layer(image_layer, multiscale_ok=True)
            segmenter = self.model_or_raise()
            if segmenter.feature_config is not None and segmenter.feature_config.volume:
                raise InputError("This is a volume model: press 'Predict plane' or 'All planes' to segment the volume.")
            if getattr(segmenter, "hybrid", False):
                raise InputError(
                    "'View' segments tile by tile, which models trained with '+ classical filters' cannot do yet: "
                    "press 'Predict plane', or retrain without classical filters."
                )
            region = region if region is not None else visible_region(self._viewer, image_layer)
        except HRDv2Error as err:
            self._messages.report(err)
            return None
        self._select(image_layer)
        if not self.model_backbone_allowed():
            return None
        if geometry.level_shapes is not None:
            data = image_layer.data[0]
        else:
            data, _ = image_data(self._viewer, image_layer, self._session.prediction_config().channel_mode)
        plane, is_stack = region.plane, geometry.is_stack
        if isinstance(data, np.ndarray):  # in memory: the worker gets a copy of the plane, not the layer's array
            data, plane, is_stack = np.array(data[region.plane] if geometry.is_stack else data), 0, False
        return self._runner.start(
            predict_region_job,
            data,
            plane,
            region.rows,
            region.cols,
            segmenter,
            self._session.prediction_config(),
            is_stack=is_stack,
            **self._predict_tab.outputs(),
            cache=self._session.cache,
            description=f"HR-Dv2 segmentation of the view of {geometry.name}",
            on_returned=partial(self.show_region, geometry, region),
            source=image_layer,
        )

    def apply_to_folder(
        self, folder_in: str | Path, folder_out: str | Path, *, suffix: str = ".tif", overwrite: bool = False
    ) -> GeneratorWorker | None:
        """Segment every image in ``folder_in`` and write label images to ``folder_out`` (in a worker)."""
        try:
            if self._session.segmenter is None:
                raise InputError("No model yet: train one (or Load model) before applying it to a folder.")
            if not Path(folder_in).is_dir():
                raise InputError(f"Input folder '{folder_in}' does not exist: choose a folder of images.")
            if Path(folder_out).resolve() == Path(folder_in).resolve():
                raise InputError("Choose an output folder different from the input folder.")
        except HRDv2Error as err:
            self._messages.report(err)
            return None
        if not self.model_backbone_allowed():
            return None
        return self._runner.start(
            folder_job,
            [folder_in],
            folder_out,
            self._session.segmenter,
            self._session.prediction_config(),
            suffix=suffix,
            overwrite=overwrite,
            description=f"HR-Dv2 segmentation of {Path(folder_in).name}",
            on_returned=self.show_batch_report,
        )

    # ------------------------------------------------------------------ results
    def on_job_item(self, geometry: SourceGeometry, generation: int | None, item: Any) -> None:
        """A job's non-progress report: the loaded backbone's card, or a first segmentation from a partial encoding."""
        if isinstance(item, BackboneInfo):
            self._session.backbone_info = (self._session.config.backbone, item)
        elif isinstance(item, PartialPrediction):
            if self._live_mode.is_stale(generation):
                return
            self._results.show_labels(geometry, {item.index: item.labels}, item.classes)
            remaining = self._progress.remaining
            self._messages.set_status(refining_message(geometry.name, item, remaining, self._session.backbone_info))

    def keep_model(self, result: PredictionResult) -> None:
        """Make a job's newly trained model the session's model (with the class names given so far)."""
        if self._session.segmenter is not result.segmenter:
            names = self._session.class_names
            result.segmenter.class_names = {c: names[c] for c in result.classes if c in names}
            self._session.segmenter = result.segmenter

    def show_prediction(self, geometry: SourceGeometry, result: PredictionResult, *, generation: int | None) -> None:
        """A training's or prediction's result: keep the model, show the predicted planes."""
        if self._live_mode.is_stale(generation):
            return  # a newer live run superseded this one
        self.keep_model(result)
        if not result.labels:
            self._refresh_classes()
            self._messages.set_status(
                f"Model trained on {geometry.name}; press Predict (or tick 'Segment after training')."
            )
            return
        self._results.show_prediction(geometry, result)
        self._refresh_classes()
        planes = ", ".join(str(i) for i in sorted(result.labels))
        self._messages.set_status(f"Segmented {geometry.name}" + (f" plane(s) {planes}." if geometry.is_stack else "."))

    def show_region(self, geometry: SourceGeometry, region: ViewRegion, result: RegionResult) -> None:
        """A view's prediction: pasted into the result layers."""
        image = next((layer for _, layer in image_layer_choices(self._viewer) if layer.name == geometry.name), None)
        status = self._results.show_region(geometry, region, result, image)
        self._refresh_classes()
        self._messages.set_status(status)

    def show_batch_report(self, report: BatchReport) -> None:
        """A folder's summary, as a notification and in the status line."""
        headline = f"Folder: {len(report.written)} written, {len(report.failed)} failed"
        notify(report.summary(), severity="warning" if report.failed else "info", headline=headline)
        self._messages.set_status(report.summary())
