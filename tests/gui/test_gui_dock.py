"""The docks as a new user meets them: default state, automatic layer choice, missing weights, jobs that
follow their layers, progressive first views, bounded width, selection kept, class names (pytest-qt + Xvfb)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from qtpy.QtCore import Qt

from conftest import TIMEOUT_MS, dock, paint_two_classes, two_texture_image, wait_idle

pytestmark = pytest.mark.gui


def same(a, b) -> bool:
    """Layers are the same (the proxy viewer hands out proxies of them, so compare by name)."""
    return a is not None and b is not None and a.name == b.name


# ---------------------------------------------------------------------------------------------- default state
def test_default_state_uses_the_preset_and_the_open_image(viewer, notifications, qtbot):
    """No set_settings: the empty weights field means the preset; the open image is chosen; missing weights help."""
    image = viewer.add_image(two_texture_image()[0], name="cells")
    features = dock(viewer, "HR-Dv2 Features")
    segmentation = dock(viewer, "HR-Dv2 Segmentation")
    assert same(features._image.value, image) and same(segmentation._image.value, image)
    assert features._weights.value == "" and features.settings.backbone == "dinov2_vits14"
    assert features._backbone.enabled
    assert features._source.value.startswith("preset dinov2_vits14 = Hugging Face facebook/dinov2-small")
    assert "not loaded yet" in features._card.value

    # conftest sets HF_HUB_OFFLINE=1 and nothing is cached: the window says what to download and where to point.
    worker = features.compute(features._image.value)
    assert worker is not None
    wait_idle(qtbot, features)
    messages = [str(n.message) for n in notifications]
    assert any("hf download facebook/dinov2-small" in m for m in messages), messages
    assert "hf download facebook/dinov2-small" in features.help_text and not features._help.isHidden()
    assert "Select weights..." in features.help_text and "--backbone" in features.help_text
    assert "huggingface-cli" not in features.help_text
    assert features._tabs.currentIndex() == 0
    from napari_hrdv2.core.backbone.loading import _missing_weights_message as cli_text
    from napari_hrdv2.core.backbone.loading import find_spec

    reference = cli_text("facebook/dinov2-small", find_spec("dinov2_vits14"), "REASON").split("(REASON). ")[1]
    assert reference in features.help_text, "the dock shows the CLI's text (one source)"


def test_select_weights_loads_that_model_and_shows_its_card(viewer, qtbot, tiny_backbone):
    viewer.add_image(two_texture_image()[0], name="cells")
    features = dock(viewer, "HR-Dv2 Features")
    features.select_weights(Path(tiny_backbone) / "config.json")  # what the file dialog returns for a folder
    assert features._weights.value == tiny_backbone and features.settings.backbone == tiny_backbone
    assert features._source.value == f"local folder {tiny_backbone}" and not features._backbone.enabled
    features.set_settings(features.settings.replace(device="cpu", shifts="neumann", shift_distances=(3,)))
    features.compute(features._image.value)
    wait_idle(qtbot, features)
    assert "cells PCA" in viewer.layers
    assert "patch 14, 128 dims, 2 heads, 2 blocks" in features._card.value
    features._weights.value = ""  # clearing the field goes back to the preset
    assert features.settings.backbone == "dinov2_vits14" and features._backbone.enabled
    assert "not loaded yet" in features._card.value


def test_docks_follow_the_layer_list(viewer):
    first = viewer.add_image(two_texture_image()[0], name="first")
    features = dock(viewer, "HR-Dv2 Features")
    segmentation = dock(viewer, "HR-Dv2 Segmentation")
    assert segmentation._scribbles.value is None
    second = viewer.add_image(two_texture_image(seed=1)[0], name="second")
    assert same(features._image.value, second) and same(segmentation._image.value, second), "a new image is chosen"
    scribbles = viewer.add_labels(np.zeros((112, 112), dtype=np.uint8), name="first scribbles")
    viewer.layers.selection.active = first
    assert same(features._image.value, first) and same(segmentation._image.value, first), "the active image"
    assert same(segmentation._scribbles.value, scribbles), "the scribbles made for that image"
    other = segmentation.new_scribbles_layer(second)
    assert same(segmentation._image.value, second) and same(segmentation._scribbles.value, other)
    viewer.layers.remove(second)
    assert same(features._image.value, first) and same(segmentation._image.value, first)
    assert same(segmentation._scribbles.value, scribbles)


# ---------------------------------------------------------------------------------------------- jobs and layers
@pytest.fixture
def tiny_config(tiny_backbone):
    import napari_hrdv2 as hr

    return hr.FeatureConfig(backbone=tiny_backbone, device="cpu", tile_size=None, shifts="moore", shift_distances=(3,))


def test_removing_the_image_cancels_its_job_and_adds_nothing(viewer, qtbot, tiny_config):
    image = viewer.add_image(np.stack([two_texture_image(224, seed=s)[0] for s in range(4)]), name="doomed")
    features = dock(viewer, "HR-Dv2 Features")
    features.set_settings(tiny_config)
    worker = features.compute(image, all_planes=True)
    ended = []
    worker.finished.connect(lambda: ended.append(True))
    qtbot.waitUntil(lambda: "Encoding" in features._progress.text, timeout=TIMEOUT_MS)
    viewer.layers.remove(image)
    wait_idle(qtbot, features)
    qtbot.waitUntil(lambda: bool(ended), timeout=TIMEOUT_MS)
    qtbot.wait(50)
    assert [layer.name for layer in viewer.layers] == [], "no layer appears for a removed image"
    assert worker.abort_requested


def test_progressive_first_view_arrives_before_the_job_ends(viewer, qtbot, tiny_config):
    image = viewer.add_image(two_texture_image(224)[0], name="cells")
    features = dock(viewer, "HR-Dv2 Features")
    features.set_settings(tiny_config)  # 9 transforms, identity first
    seen = []
    show_partial = features._show_partial
    features._show_partial = lambda *a: (seen.append(("partial", a[-1].n_transforms)), show_partial(*a))
    worker = features.compute(image)
    worker.returned.connect(lambda _: seen.append(("final", 9)))
    qtbot.waitUntil(lambda: any(kind == "partial" for kind, _ in seen), timeout=TIMEOUT_MS)
    pca = viewer.layers["cells PCA"]
    assert pca.metadata["napari_hrdv2"]["partial"] and pca.visible
    assert "First view of cells (1 of 9 passes)" in features.status
    assert "%" in features._progress.text and features._cancel.isEnabled()
    wait_idle(qtbot, features)
    assert seen[0] == ("partial", 1) and seen[-1] == ("final", 9)
    assert same(viewer.layers["cells PCA"], pca) and not pca.metadata["napari_hrdv2"]["partial"]
    names = [layer.name for layer in viewer.layers]
    assert names.index("cells attention") < names.index("cells PCA") and not viewer.layers["cells attention"].visible


def test_dock_width_stays_bounded_after_a_long_error(viewer, qtbot, notifications, tmp_path):
    from napari_hrdv2._widgets._dock import DOCK_MAX_WIDTH

    image = viewer.add_image(two_texture_image()[0], name="cells")
    features = dock(viewer, "HR-Dv2 Features")
    segmentation = dock(viewer, "HR-Dv2 Segmentation")
    before = features.native.sizeHint().width(), segmentation.native.sizeHint().width()
    assert max(before) <= DOCK_MAX_WIDTH
    features._weights.value = str(tmp_path / ("very-long-folder-name/" * 22))  # ~500 characters
    features.compute(image)
    wait_idle(qtbot, features)
    assert len(features.status) > 500 and "does not exist" in features.status
    segmentation._set_status("x" * 500)
    after = features.native.sizeHint().width(), segmentation.native.sizeHint().width()
    assert after[0] <= before[0] + 2 and after[1] <= before[1] + 2, (before, after)


def test_scribbles_stay_selected_after_train_and_classes_are_named(viewer, qtbot, tiny_config, tmp_path):
    image = viewer.add_image(two_texture_image()[0], name="tex")
    features = dock(viewer, "HR-Dv2 Features")
    features.set_settings(tiny_config)
    segmentation = dock(viewer, "HR-Dv2 Segmentation")
    scribbles = segmentation.new_scribbles_layer(image)
    paint_two_classes(scribbles)
    assert same(viewer.layers.selection.active, scribbles) and segmentation._auto_segment.value
    assert segmentation._classes.labels == [1, 2]
    segmentation._classes.table.item(1, 2).setText("matrix")  # rename class 2 in the table
    segmentation._train.changed.emit(True)
    wait_idle(qtbot, segmentation)
    seg = viewer.layers["tex segmentation"]
    assert same(viewer.layers.selection.active, scribbles), "the next stroke still paints the scribbles"
    names = [layer.name for layer in viewer.layers]
    assert names.index("tex segmentation") < names.index("tex scribbles")
    assert seg.metadata["napari_hrdv2"]["class_names"] == {"1": "class 1", "2": "matrix"}
    segmentation._contour.value = 2
    segmentation._opacity.value = 0.8
    assert seg.contour == 2 and seg.opacity == pytest.approx(0.8)

    saved = segmentation.save_model(tmp_path / "model.hrdv2")
    from napari_hrdv2.core.segmentation.segmenter import LinearSegmenter

    assert LinearSegmenter.load(saved).class_names == {2: "matrix"}
    segmentation.export_segmentation(tmp_path / "tex.tif", image)
    meta = json.loads((tmp_path / "tex.tif.classes.json").read_text())
    assert [(c["label"], c["name"]) for c in meta["classes"]] == [(1, "class 1"), (2, "matrix")]


def test_shortcuts_are_bound_and_listed(viewer):
    viewer.add_image(two_texture_image()[0], name="tex")
    segmentation = dock(viewer, "HR-Dv2 Segmentation")
    assert "Shift+T train" in segmentation._shortcuts.value and "Alt+1..9" in segmentation._shortcuts.value
    scribbles = segmentation.new_scribbles_layer()
    segmentation._pick_class(3)
    assert scribbles.selected_label == 3 and 3 in segmentation._classes.labels
    assert not segmentation._live.value
    segmentation._bound_callbacks = None
    keymap = viewer.keymap
    assert any("Shift-T" in str(key) or "Shift+T" in str(key) for key in keymap), list(keymap)[:10]


def test_shortcuts_act_when_the_dock_has_focus(make_napari_viewer_proxy, qtbot):
    """The keys also work while the focus is inside the Segmentation dock (not only on the canvas)."""
    from qtpy.QtCore import Qt

    viewer = make_napari_viewer_proxy(show=True)
    viewer.add_image(two_texture_image()[0], name="tex")
    segmentation = dock(viewer, "HR-Dv2 Segmentation")
    scribbles = segmentation.new_scribbles_layer()
    trained = []
    segmentation._train_clicked = lambda *_: trained.append(True)  # the real Train is tested elsewhere
    window = segmentation.native.window()
    window.activateWindow()
    qtbot.waitUntil(window.isActiveWindow, timeout=5000)
    target = segmentation._live.native  # a check box inside the dock
    target.setFocus()
    qtbot.waitUntil(target.hasFocus, timeout=5000)
    qtbot.keyClick(target, Qt.Key.Key_T, Qt.KeyboardModifier.ShiftModifier)
    assert trained == [True]
    qtbot.keyClick(target, Qt.Key.Key_3, Qt.KeyboardModifier.AltModifier)
    assert scribbles.selected_label == 3
    target.setFocus()
    qtbot.keyClick(target, Qt.Key.Key_L, Qt.KeyboardModifier.ShiftModifier)
    assert segmentation._live.value
    segmentation._live.value = False


# ---------------------------------------------------------------------------------------------- mouse wheel
def test_the_wheel_over_an_unfocused_control_changes_no_setting(viewer, qtbot):
    """Scrolling the dock over the Quality box (not focused) leaves it as it was; the box takes focus on click only."""
    from qtpy.QtCore import QPoint, QPointF, Qt
    from qtpy.QtGui import QWheelEvent
    from qtpy.QtWidgets import QApplication

    features = dock(viewer, "HR-Dv2 Features")
    quality = features._preset.native
    before = features._preset.value
    assert not quality.hasFocus() and quality.focusPolicy() == Qt.FocusPolicy.StrongFocus
    for delta in (-120, 120, -120):
        centre = QPointF(quality.rect().center())
        wheel = QWheelEvent(
            centre, QPointF(quality.mapToGlobal(centre.toPoint())), QPoint(0, 0), QPoint(0, delta),
            Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier, Qt.ScrollPhase.NoScrollPhase, False,
        )  # fmt: skip
        QApplication.sendEvent(quality, wheel)
    assert features._preset.value == before == "balanced"
    assert features.settings == features._session.config
    segmentation = dock(viewer, "HR-Dv2 Segmentation")
    assert segmentation._contour.native.focusPolicy() == Qt.FocusPolicy.StrongFocus


def test_progress_text_shows_one_percent_sign(qtbot):
    """'Encoding image: 53%, about 11 s left' (Qt has no '%%' escape); a '%p' in a name is shown as typed."""
    from napari_hrdv2._widgets._common import ProgressRow

    row = ProgressRow(lambda: None)
    qtbot.addWidget(row)
    row.show_progress(0.53, 11.0, "Encoding image")
    assert row.bar.text() == "Encoding image: 53%, about 11 s left" and row.text == row.bar.text()
    row.show_progress(0.5, None, "Encoding 100%pure")
    assert row.bar.text().replace("\u2060", "") == "Encoding 100%pure: 50%"


# ---------------------------------------------------------------------------------------------- similarity picks
def test_a_similarity_pick_paints_nothing_into_the_scribbles(viewer, qtbot, tiny_config):
    """While 'Similarity: click a pixel' is on, the scribbles take no paint (pan/zoom); their mode comes back after."""
    from types import SimpleNamespace

    image = viewer.add_image(two_texture_image()[0], name="tex")
    features = dock(viewer, "HR-Dv2 Features")
    features.set_settings(tiny_config)
    segmentation = dock(viewer, "HR-Dv2 Segmentation")
    scribbles = segmentation.new_scribbles_layer(image)
    paint_two_classes(scribbles)
    before = np.array(scribbles.data)
    assert scribbles.mode == "paint"
    features._similarity_mode.value = True
    assert scribbles.mode == "pan_zoom", "a click on the canvas must not paint while it picks a pixel"
    click = SimpleNamespace(type="mouse_press", button=1, position=(40.0, 50.0))
    viewer.mouse_drag_callbacks[-1](viewer, click)
    wait_idle(qtbot, features)
    assert "tex similarity" in viewer.layers
    np.testing.assert_array_equal(scribbles.data, before)
    features._similarity_mode.value = False
    assert scribbles.mode == "paint" and features._on_click not in viewer.mouse_drag_callbacks


def test_missing_weights_message_shows_once_and_goes_when_weights_are_chosen(viewer, qtbot, tiny_backbone):
    """Default state, offline: the missing-weights text shows in one line (elided; whole on hover and on click),
    never twice, and leaves once valid weights are chosen; the Compute button stays in view."""
    from qtpy.QtWidgets import QLabel

    viewer.add_image(two_texture_image()[0], name="cells")
    features = dock(viewer, "HR-Dv2 Features")
    assert features.compute(features._image.value) is not None
    wait_idle(qtbot, features)
    qtbot.wait(50)
    message = features.help_text
    assert "hf download facebook/dinov2-small" in message

    def showing() -> list:
        return [label for label in features.native.findChildren(QLabel)
                if not label.isHidden() and ("Could not load" in label.text() or "Could not load" in label.toolTip())]  # fmt: skip

    assert len(showing()) == 1, "shown once"
    line = showing()[0]
    assert line.toolTip() == message and line.text() != message and line.text().endswith("…"), "elided, whole on hover"
    assert not line.wordWrap(), "one line: it does not push the Compute button out of view"
    qtbot.mouseClick(line, Qt.MouseButton.LeftButton)
    assert line.text() == message, "a click shows the whole text"
    features.select_weights(Path(tiny_backbone) / "config.json")
    assert features.help_text == "" and showing() == [], "cleared once valid weights are chosen"
