"""GUI tests of the HR-Dv2 dock widgets in a real napari window (pytest-qt + Xvfb, tiny random backbone)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import PLUGIN, TIMEOUT_MS, two_texture_image, wait_idle

pytestmark = pytest.mark.gui


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


@pytest.fixture
def features_widget(viewer, tiny_config):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "HR-Dv2 Features")
    widget.set_settings(tiny_config)
    return widget


@pytest.fixture
def segmentation_widget(viewer, features_widget):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "HR-Dv2 Segmentation")
    return widget


def tag(layer):
    return layer.metadata["napari_hrdv2"]


# ---------------------------------------------------------------------------------------------- features
def test_widgets_dock_and_share_settings(viewer, features_widget, segmentation_widget, tiny_config):
    from napari_hrdv2._widgets import session_for

    assert session_for(viewer).config == tiny_config
    assert features_widget.settings == tiny_config
    features_widget.set_settings(tiny_config.replace(shifts="moore"))
    assert session_for(viewer).config.shifts == "moore"
    assert "moore" in segmentation_widget._settings_summary.value


def test_compute_on_bundled_sample(qtbot, viewer, features_widget):
    viewer.open_sample(PLUGIN, "superalloy")
    image = viewer.layers["superalloy"]
    image.scale = (0.5, 0.5)
    image.translate = (3.0, -2.0)
    worker = features_widget.compute(image)
    assert worker is not None
    wait_idle(qtbot, features_widget)

    pca = viewer.layers["superalloy PCA"]
    assert pca.rgb and pca.data.shape == (512, 512, 3) and pca.data.dtype == np.float32
    assert pca.data.min() >= 0.0 and pca.data.max() <= 1.0 and pca.data.std() > 0.01
    np.testing.assert_allclose(pca.scale, (0.5, 0.5))
    np.testing.assert_allclose(pca.translate, (3.0, -2.0))
    assert tag(pca)["kind"] == "PCA" and tag(pca)["source"] == "superalloy"
    assert features_widget.status == "Features of superalloy ready."

    # Attention: the mean over heads first; the dock's head box shows one head at a time (no dims slider).
    attention = viewer.layers["superalloy attention"]
    assert attention.data.shape == (512, 512) and attention.data.dtype == np.float32 and not attention.visible
    assert features_widget._head.max == 2 and tag(attention)["channels"] == ["mean", "head 1", "head 2"]
    mean = attention.data.copy()
    heads = []
    for head in (1, 2):
        features_widget._head.value = head
        heads.append(np.asarray(viewer.layers["superalloy attention"].data))
    np.testing.assert_allclose(mean, np.mean(heads, axis=0), atol=1e-5)
    assert viewer.layers["superalloy attention"] is attention and attention.visible
    np.testing.assert_allclose(attention.scale, (0.5, 0.5))

    # One feature channel at a time, chosen with the dock's channel box (no dims slider for channels).
    features = viewer.layers["superalloy features"]
    assert features.data.shape == (512, 512) and features.data.dtype == np.float32
    assert features_widget._channel.max == 127 and features_widget._channel.enabled
    features_widget._channel.value = 7
    assert viewer.layers["superalloy features"] is features and tag(features)["channel"] == 7
    channel = np.asarray(features.data)
    assert np.isfinite(channel).all() and channel.std() > 0
    assert features.visible, "choosing a channel shows the layer"

    # Recomputing updates the same layer objects in place.
    features_widget.compute(image)
    wait_idle(qtbot, features_widget)
    assert viewer.layers["superalloy PCA"] is pca and viewer.layers["superalloy features"] is features
    assert len([layer for layer in viewer.layers if layer.name.startswith("superalloy PCA")]) == 1


def test_compute_stack_per_plane(qtbot, viewer, features_widget):
    planes = [two_texture_image(seed=s)[0] for s in range(3)]
    image = viewer.add_image(np.stack(planes), name="stack")
    viewer.dims.set_current_step(0, 1)
    features_widget.compute(image)
    wait_idle(qtbot, features_widget)
    pca = viewer.layers["stack PCA"]
    assert pca.data.shape == (3, 112, 112, 3)
    assert pca.data[1].max() > 0 and pca.data[0].max() == 0 and pca.data[2].max() == 0
    features = viewer.layers["stack features"]
    assert features.data.shape == (3, 112, 112), "planes only: the stack keeps one slider"
    features_widget._channel.value = 4
    assert np.asarray(features.data[0]).max() == 0 and np.asarray(features.data[1]).std() > 0
    assert viewer.dims.ndim == 3

    features_widget.compute(image, all_planes=True)
    wait_idle(qtbot, features_widget)
    assert viewer.layers["stack PCA"] is pca
    assert all(pca.data[i].max() > 0 for i in range(3))
    assert viewer.layers["stack attention"].data.shape == (3, 112, 112)
    assert np.asarray(viewer.layers["stack features"].data[2]).std() > 0


def test_rgb_image(qtbot, viewer, features_widget):
    rgb = np.stack([two_texture_image()[0]] * 3, axis=-1)
    image = viewer.add_image(rgb, name="colour", rgb=True)
    features_widget.compute(image)
    wait_idle(qtbot, features_widget)
    assert viewer.layers["colour PCA"].data.shape == (112, 112, 3)
    assert viewer.layers["colour features"].data.shape == (112, 112)


def test_similarity_click(qtbot, viewer, features_widget):
    from types import SimpleNamespace

    image = viewer.add_image(two_texture_image()[0], name="tex")
    features_widget.similarity(image, 20, 30)
    wait_idle(qtbot, features_widget)
    similarity = viewer.layers["tex similarity"].data
    assert similarity.shape == (112, 112)
    assert similarity[20, 30] == pytest.approx(1.0, abs=1e-4)
    assert similarity.min() >= -1.0 - 1e-6

    # A click on a stack plane (through the viewer's mouse callback) maps that plane only.
    stack = viewer.add_image(np.stack([two_texture_image(seed=s)[0] for s in range(2)]), name="pair", scale=(1, 2, 2))
    features_widget._image.value = stack
    features_widget._similarity_mode.value = True
    assert features_widget._on_click in viewer.mouse_drag_callbacks
    click = SimpleNamespace(type="mouse_press", button=1, position=(1.0, 2 * 50.0, 2 * 90.0))
    viewer.mouse_drag_callbacks[-1](viewer, click)
    wait_idle(qtbot, features_widget)
    layer = viewer.layers["pair similarity"]
    assert layer.data.shape == (2, 112, 112) and tag(layer)["pixel"] == (1, 50, 90)
    assert layer.data[1, 50, 90] == pytest.approx(1.0, abs=1e-4) and not layer.data[0].any()
    np.testing.assert_allclose(layer.scale, (1, 2, 2))
    features_widget._similarity_mode.value = False
    assert features_widget._on_click not in viewer.mouse_drag_callbacks


def test_event_loop_runs_during_compute(qtbot, viewer, features_widget):
    from qtpy.QtCore import QTimer

    image = viewer.add_image(np.stack([two_texture_image(224, seed=s)[0] for s in range(4)]), name="big")
    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(features_widget.is_busy))
    timer.start(5)
    features_widget.compute(image, all_planes=True)
    wait_idle(qtbot, features_widget)
    timer.stop()
    assert sum(ticks) >= 3, "the GUI event loop must keep running while features are computed"


def test_cancel_stops_run(qtbot, viewer, features_widget):
    image = viewer.add_image(np.stack([two_texture_image(224, seed=s)[0] for s in range(6)]), name="long")
    worker = features_widget.compute(image, all_planes=True)
    aborted, returned = [], []
    worker.aborted.connect(lambda: aborted.append(True))
    worker.returned.connect(returned.append)
    features_widget.cancel()
    wait_idle(qtbot, features_widget)
    assert aborted and not returned
    assert "long PCA" not in viewer.layers
    assert features_widget._compute_plane.enabled and not features_widget._cancel.isEnabled()


def test_errors_are_notified(qtbot, viewer, features_widget, tiny_config, notifications, tmp_path):
    volume = viewer.add_image(np.zeros((2, 3, 32, 32), dtype=np.uint8), name="volume")
    assert features_widget.compute(volume) is None
    assert any("2D images" in str(n.message) for n in notifications)

    features_widget.set_settings(tiny_config.replace(backbone=str(tmp_path / "no-such-model")))
    image = viewer.add_image(two_texture_image()[0], name="tex")
    worker = features_widget.compute(image)
    assert worker is not None
    wait_idle(qtbot, features_widget)
    errors = [n for n in notifications if "HR-Dv2" in str(n.message) and "no-such-model" in str(n.message)]
    assert errors, [str(n.message) for n in notifications]
    assert features_widget._compute_plane.enabled, "buttons re-enable when a worker ends with an error"


# ---------------------------------------------------------------------------------------------- segmentation
def paint_strokes(data: np.ndarray, plane: int | None = None) -> None:
    """Two vertical brush strokes per class on a two-texture image (left = 1, right = 2), in place."""
    target = data if plane is None else data[plane]
    size = target.shape[-1]
    target[10:-10, 15:19] = 1
    target[40:70, size // 4 : size // 4 + 3] = 1
    target[10:-10, size - 20 : size - 16] = 2
    target[40:70, 3 * size // 4 : 3 * size // 4 + 3] = 2


def test_train_two_textures(qtbot, viewer, segmentation_widget):
    image, truth = two_texture_image()
    image_layer = viewer.add_image(image, name="tex", scale=(2.0, 2.0))
    scribbles = segmentation_widget.new_scribbles_layer(image_layer)
    assert scribbles.data.shape == (112, 112) and scribbles.data.dtype == np.uint8
    np.testing.assert_allclose(scribbles.scale, (2.0, 2.0))
    painted = scribbles.data.copy()
    paint_strokes(painted)
    scribbles.data = painted
    before = scribbles.data.copy()

    worker = segmentation_widget.train(image_layer, scribbles)
    assert worker is not None
    scribbles.data[:] = 0  # the user keeps painting (here: erases) while the model trains
    scribbles.data = scribbles.data
    wait_idle(qtbot, segmentation_widget)

    segmentation = viewer.layers["tex segmentation"]
    assert segmentation.data.shape == (112, 112) and segmentation.data.dtype == np.uint8
    np.testing.assert_allclose(segmentation.scale, (2.0, 2.0))
    assert tag(segmentation)["kind"] == "segmentation" and tag(segmentation)["classes"] == [1, 2]
    accuracy = float(np.mean(segmentation.data == truth))
    assert accuracy >= 0.9, accuracy
    assert segmentation_widget.status == "Segmented tex.", "the result's status is not overwritten by progress"
    assert segmentation_widget._session.segmenter is not None
    assert not scribbles.data.any(), "the widget never writes to the scribbles layer"

    # Train with the strokes back: the scribbles are identical after training.
    scribbles.data = before.copy()
    segmentation_widget._want_uncertainty.value = True
    segmentation_widget._want_probabilities.value = True
    segmentation_widget.train(image_layer, scribbles)
    wait_idle(qtbot, segmentation_widget)
    np.testing.assert_array_equal(scribbles.data, before)
    assert viewer.layers["tex segmentation"] is segmentation, "updated in place"
    uncertainty = viewer.layers["tex uncertainty"].data
    assert uncertainty.shape == (112, 112) and uncertainty.dtype == np.float32
    assert uncertainty.min() >= 0.0 and uncertainty.max() <= 1.0
    probabilities = np.stack([viewer.layers[f"tex probabilities class {c}"].data for c in (1, 2)])
    assert probabilities.shape == (2, 112, 112)
    np.testing.assert_allclose(probabilities.sum(axis=0), 1.0, atol=1e-4)


def test_head_choice_trains_an_mlp_and_live_retrains_it_warm(qtbot, viewer, segmentation_widget, tmp_path):
    """Default state: the linear head. Choosing MLP trains, saves, loads and warm-retrains an MLPSegmenter."""
    from napari_hrdv2.core.segmentation.mlp import MLPSegmenter
    from napari_hrdv2.core.segmentation.segmenter import LinearSegmenter

    assert segmentation_widget._head.value == "linear"
    assert type(segmentation_widget.make_segmenter()) is LinearSegmenter
    image, truth = two_texture_image()
    image_layer = viewer.add_image(image, name="tex")
    scribbles = segmentation_widget.new_scribbles_layer(image_layer)
    painted = scribbles.data.copy()
    paint_strokes(painted)
    scribbles.data = painted
    segmentation_widget._head.value = "mlp"
    segmentation_widget.train(image_layer, scribbles)
    wait_idle(qtbot, segmentation_widget)
    model = segmentation_widget._session.segmenter
    assert type(model) is MLPSegmenter
    assert np.mean(viewer.layers["tex segmentation"].data == truth) >= 0.9
    assert segmentation_widget._model_status.value.startswith("MLP (32 hidden units), trained")
    warm = segmentation_widget._segmenter_factory(True)()
    assert type(warm) is MLPSegmenter and warm.warm_start and warm is not model
    segmentation_widget._head.value = "linear"
    assert type(segmentation_widget._segmenter_factory(True)()) is LinearSegmenter  # another head: a cold start
    path = segmentation_widget.save_model(tmp_path / "mlp.hrdv2")
    assert type(segmentation_widget.load_model(path)) is MLPSegmenter


def test_predict_all_planes_of_stack(qtbot, viewer, features_widget, segmentation_widget):
    images, truths = zip(*(two_texture_image(seed=s) for s in range(3)))
    stack = viewer.add_image(np.stack(images), name="stack")
    scribbles = segmentation_widget.new_scribbles_layer(stack)
    assert scribbles.data.shape == (3, 112, 112)
    painted = scribbles.data.copy()
    paint_strokes(painted, plane=0)
    scribbles.data = painted

    segmentation_widget.train(stack, scribbles)
    wait_idle(qtbot, segmentation_widget)
    segmentation = viewer.layers["stack segmentation"]
    assert segmentation.data.shape == (3, 112, 112) and segmentation.data.dtype == np.uint8
    assert segmentation.data[0].any() and not segmentation.data[1:].any(), "Train predicts the labelled planes"

    worker = segmentation_widget.predict(stack, all_planes=True)
    assert worker is not None
    wait_idle(qtbot, segmentation_widget)
    assert viewer.layers["stack segmentation"] is segmentation
    for plane, truth in enumerate(truths):
        assert np.mean(segmentation.data[plane] == truth) >= 0.9, plane

    # The encodings computed for training/prediction are shared with the Features widget's cache.
    cached = len(segmentation_widget._session.cache)
    features_widget.compute(stack, all_planes=True)
    wait_idle(qtbot, features_widget)
    assert len(segmentation_widget._session.cache) == cached == 3


def test_live_mode_updates_after_painting(qtbot, viewer, segmentation_widget):
    image, truth = two_texture_image()
    image_layer = viewer.add_image(image, name="tex")
    scribbles = segmentation_widget.new_scribbles_layer(image_layer)
    segmentation_widget._live.value = True

    painted = scribbles.data.copy()
    paint_strokes(painted)
    scribbles.data = painted  # fires events.data like a paint stroke's end
    qtbot.waitUntil(lambda: "tex segmentation" in viewer.layers, timeout=TIMEOUT_MS)
    wait_idle(qtbot, segmentation_widget)
    segmentation = viewer.layers["tex segmentation"]
    assert np.mean(segmentation.data == truth) >= 0.9
    first = segmentation.data.copy()

    # Paint class 3 over a band of the left half with napari's brush, dab by dab: the burst of paint
    # events is debounced into one retrain + prediction.
    live_runs = []
    start = segmentation_widget._live_runner.start
    segmentation_widget._live_runner.start = lambda *a, **k: live_runs.append(start(*a, **k)) or live_runs[-1]
    scribbles.selected_label = 3
    scribbles.brush_size = 5
    for col in range(5, 50, 2):
        scribbles.paint((100, col), 3)
    qtbot.waitUntil(lambda: (viewer.layers["tex segmentation"].data == 3).any(), timeout=TIMEOUT_MS)
    wait_idle(qtbot, segmentation_widget)
    assert not np.array_equal(viewer.layers["tex segmentation"].data, first)
    assert len(live_runs) == 1, "a burst of strokes starts one live update"

    # A new live update cancels the one still running; only the newest result is shown.
    segmentation_widget._live_update()
    stale = live_runs[-1]
    segmentation_widget._live_update()
    assert stale.abort_requested and live_runs[-1] is not stale
    wait_idle(qtbot, segmentation_widget)

    segmentation_widget._live.value = False
    assert not segmentation_widget._live_timer.isActive()


def test_segmentation_errors_are_notified(qtbot, viewer, segmentation_widget, notifications):
    image_layer = viewer.add_image(two_texture_image()[0], name="tex")
    assert segmentation_widget.predict(image_layer) is None
    assert any("No model yet" in str(n.message) for n in notifications)

    scribbles = segmentation_widget.new_scribbles_layer(image_layer)
    assert segmentation_widget.train(image_layer, scribbles) is None
    assert any("empty" in str(n.message) for n in notifications)

    wrong = viewer.add_labels(np.zeros((50, 50), dtype=np.uint8), name="wrong shape")
    assert segmentation_widget.train(image_layer, wrong) is None
    assert any("New scribbles layer" in str(n.message) for n in notifications)

    one_class = scribbles.data.copy()
    one_class[10:20, 10:20] = 1
    scribbles.data = one_class
    assert segmentation_widget.train(image_layer, scribbles) is not None  # fails in the worker
    wait_idle(qtbot, segmentation_widget)
    assert any("two classes" in str(n.message) for n in notifications), [str(n.message) for n in notifications]
    assert segmentation_widget._train.enabled and not segmentation_widget._cancel.isEnabled()


def test_save_load_export(qtbot, viewer, segmentation_widget, tmp_path, notifications):
    import tifffile

    from napari_hrdv2._widgets import session_for

    images = np.stack([two_texture_image(seed=s)[0] for s in range(2)])
    stack = viewer.add_image(images, name="pair")
    scribbles = segmentation_widget.new_scribbles_layer(stack)
    painted = scribbles.data.copy()
    paint_strokes(painted, plane=1)
    scribbles.data = painted
    segmentation_widget.train(stack, scribbles)
    wait_idle(qtbot, segmentation_widget)
    model = segmentation_widget._session.segmenter

    path = segmentation_widget.save_model(tmp_path / "model.hrdv2")
    assert path.is_file()
    with pytest.raises(Exception, match="already exists"):
        segmentation_widget.save_model(path)

    # A fresh viewer's widget loads the model (and its feature settings) and predicts the same labels.
    session_for(viewer).segmenter = None
    loaded = segmentation_widget.load_model(path)
    assert loaded is not model and list(loaded.classes_) == [1, 2]
    assert session_for(viewer).segmenter is loaded
    segmentation_widget.predict(stack, all_planes=True)
    wait_idle(qtbot, segmentation_widget)
    expected = np.stack([model.predict(e) for e in _encodings(segmentation_widget, images)])
    np.testing.assert_array_equal(viewer.layers["pair segmentation"].data, expected)

    segmentation_widget._image.value = stack
    written = segmentation_widget.export_segmentation(tmp_path / "pair.tif")
    assert written == [tmp_path / "pair.tif"]
    np.testing.assert_array_equal(tifffile.imread(written[0]), expected)
    pngs = segmentation_widget.export_segmentation(tmp_path / "pair.png")
    assert [p.name for p in pngs] == ["pair_000.png", "pair_001.png"]
    with pytest.raises(Exception, match="already exist"):
        segmentation_widget.export_segmentation(tmp_path / "pair.png")

    # The buttons' handlers: a bad model file is notified, not raised.
    (tmp_path / "bad.hrdv2").write_bytes(b"not a model")
    segmentation_widget._guarded(lambda: segmentation_widget.load_model(tmp_path / "bad.hrdv2"))
    assert any("bad.hrdv2" in str(n.message) for n in notifications)
    assert session_for(viewer).segmenter is loaded


def _encodings(widget, images):
    import napari_hrdv2 as hr

    return [hr.Featurizer(widget._session.prediction_config()).encode(image) for image in images]


def test_apply_to_folder(qtbot, viewer, segmentation_widget, tmp_path):
    from skimage.io import imsave

    image, truth = two_texture_image()
    layer = viewer.add_image(image, name="tex")
    scribbles = segmentation_widget.new_scribbles_layer(layer)
    painted = scribbles.data.copy()
    paint_strokes(painted)
    scribbles.data = painted
    segmentation_widget.train(layer, scribbles)
    wait_idle(qtbot, segmentation_widget)

    folder_in, folder_out = tmp_path / "in", tmp_path / "out"
    folder_in.mkdir()
    for seed in range(2):
        imsave(folder_in / f"img{seed}.png", two_texture_image(seed=seed)[0], check_contrast=False)
    worker = segmentation_widget.apply_to_folder(folder_in, folder_out)
    assert worker is not None
    wait_idle(qtbot, segmentation_widget)
    outputs = sorted(folder_out.iterdir())
    assert len(outputs) == 2
    from napari_hrdv2.core.files.images import read_image

    assert np.mean(read_image(outputs[0]) == truth) >= 0.9


def test_main_opens_viewer_with_widgets(viewer, tmp_path):
    import tifffile

    from napari_hrdv2.__main__ import setup_viewer

    path = tmp_path / "cells.tif"
    tifffile.imwrite(path, np.stack([two_texture_image(seed=s)[0] for s in range(2)]))
    features, segmentation = setup_viewer(viewer, [path], preset="fast", device="cpu")
    assert type(features).__name__ == "FeaturesWidget" and type(segmentation).__name__ == "SegmentationWidget"
    assert viewer.layers["cells"].data.shape == (2, 112, 112)
    assert features.settings.shifts == "neumann" and features.settings.device == "cpu"
    docked = set(viewer.window.dock_widgets)
    assert any("HR-Dv2 Features" in name for name in docked) and any("HR-Dv2 Segmentation" in name for name in docked)


def test_main_loads_sample_without_images(viewer):
    from napari_hrdv2.__main__ import setup_viewer

    setup_viewer(viewer)
    assert viewer.layers["superalloy"].data.shape == (512, 512)


def test_buttons_ask_before_replacing_files(qtbot, viewer, segmentation_widget, tmp_path, monkeypatch):
    import napari_hrdv2._widgets._segmentation_files as module

    image, _ = two_texture_image()
    layer = viewer.add_image(image, name="tex")
    scribbles = segmentation_widget.new_scribbles_layer(layer)
    painted = scribbles.data.copy()
    paint_strokes(painted)
    scribbles.data = painted
    segmentation_widget._train.changed.emit(True)  # the Train button
    wait_idle(qtbot, segmentation_widget)
    assert "tex segmentation" in viewer.layers

    asked, answers = [], []
    segmentation_widget.confirm_overwrite = lambda paths, parent=None: asked.append(paths) or answers.pop(0)
    model_path = tmp_path / "model"
    monkeypatch.setattr(module, "ask_save_path", lambda *a, **k: (str(model_path), ""))
    segmentation_widget._save.changed.emit(True)
    saved = tmp_path / "model.hrdv2"
    assert saved.is_file() and not asked
    saved.write_bytes(b"keep me")
    answers.append(False)
    segmentation_widget._save.changed.emit(True)
    assert asked == [[saved]] and saved.read_bytes() == b"keep me", "declined: the file is untouched"
    answers.append(True)
    segmentation_widget._save.changed.emit(True)
    assert saved.read_bytes() != b"keep me"

    asked.clear()
    monkeypatch.setattr(module, "ask_save_path", lambda *a, **k: (str(tmp_path / "seg"), "PNG (*.png)"))
    segmentation_widget._export.changed.emit(True)
    assert (tmp_path / "seg.png").is_file() and not asked
    answers.append(False)
    segmentation_widget._export.changed.emit(True)
    assert asked == [[tmp_path / "seg.png"]]


def test_tcell_sample_stack_with_scribbles(qtbot, viewer, segmentation_widget):
    viewer.open_sample(PLUGIN, "tcell")
    images, scribbles = viewer.layers["T-cells"], viewer.layers["T-cells scribbles"]
    before = scribbles.data.copy()
    segmentation_widget.train(images, scribbles)
    wait_idle(qtbot, segmentation_widget)
    segmentation = viewer.layers["T-cells segmentation"]
    assert segmentation.data.shape == (6, 518, 518) and segmentation.data.dtype == np.uint8
    assert tag(segmentation)["classes"] == [1, 2, 3]
    assert set(np.unique(segmentation.data)) <= {1, 2, 3}
    labelled = before > 0
    assert np.mean(segmentation.data[labelled] == before[labelled]) > 0.6  # training pixels, random tiny backbone
    np.testing.assert_array_equal(scribbles.data, before)


def test_removing_layers_frees_encodings(qtbot, viewer, features_widget):
    from napari_hrdv2._widgets import session_for

    session = session_for(viewer)
    image = viewer.add_image(two_texture_image()[0], name="tex")
    features_widget.compute(image)
    wait_idle(qtbot, features_widget)
    assert any(key[0] == "tex" for key in session.encodings)
    viewer.layers.remove("tex features")
    assert not any(key[0] == "tex" for key in session.encodings)
    viewer.layers.remove("tex")
    assert not any(key[0] == "tex" for key in session.pca_bases)
