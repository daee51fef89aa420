"""GUI tests of the HR-Dv2 dock widgets in a real napari window (pytest-qt + Xvfb, tiny random backbone)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import two_texture_image

pytestmark = pytest.mark.gui

PLUGIN = "napari-hrdv2"
TIMEOUT_MS = 120_000


@pytest.fixture
def gui_config(tiny_backbone):
    import napari_hrdv2 as hr

    return hr.FeatureConfig(
        backbone=tiny_backbone, device="cpu", tile_size=None, shifts="neumann", shift_distances=(3,)
    )


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


@pytest.fixture
def features_widget(viewer, gui_config):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "HR-Dv2 Features")
    widget.set_settings(gui_config)
    return widget


@pytest.fixture
def segmentation_widget(viewer, features_widget):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "HR-Dv2 Segmentation")
    return widget


@pytest.fixture
def notifications():
    """Notifications shown during the test (napari's notification manager)."""
    from napari.utils.notifications import notification_manager

    seen = []
    notification_manager.notification_ready.connect(seen.append)
    yield seen
    notification_manager.notification_ready.disconnect(seen.append)


def wait_idle(qtbot, widget, timeout: int = TIMEOUT_MS) -> None:
    qtbot.waitUntil(lambda: not widget.is_busy, timeout=timeout)


def tag(layer):
    return layer.metadata["napari_hrdv2"]


# ---------------------------------------------------------------------------------------------- features
def test_widgets_dock_and_share_settings(viewer, features_widget, segmentation_widget, gui_config):
    from napari_hrdv2._widgets import session_for

    assert session_for(viewer).config == gui_config
    assert features_widget.settings == gui_config
    features_widget.set_settings(gui_config.replace(shifts="moore"))
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

    attention = viewer.layers["superalloy attention"]
    assert attention.data.shape == (3, 512, 512) and attention.data.dtype == np.float32  # mean + 2 heads
    np.testing.assert_allclose(attention.data[0], attention.data[1:].mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(attention.scale, (1.0, 0.5, 0.5))

    features = viewer.layers["superalloy features"]
    assert features.data.shape == (128, 512, 512) and features.data.dtype == np.float32
    assert type(features.data).__module__.startswith("dask")
    channel = np.asarray(features.data[7])
    assert channel.shape == (512, 512) and np.isfinite(channel).all() and channel.std() > 0

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
    assert features.data.shape == (128, 3, 112, 112)
    assert np.asarray(features.data[4, 0]).max() == 0 and np.asarray(features.data[4, 1]).std() > 0

    features_widget.compute(image, all_planes=True)
    wait_idle(qtbot, features_widget)
    assert viewer.layers["stack PCA"] is pca
    assert all(pca.data[i].max() > 0 for i in range(3))
    assert viewer.layers["stack attention"].data.shape == (3, 3, 112, 112)
    assert np.asarray(viewer.layers["stack features"].data[4, 2]).std() > 0


def test_rgb_image(qtbot, viewer, features_widget):
    rgb = np.stack([two_texture_image()[0]] * 3, axis=-1)
    image = viewer.add_image(rgb, name="colour", rgb=True)
    features_widget.compute(image)
    wait_idle(qtbot, features_widget)
    assert viewer.layers["colour PCA"].data.shape == (112, 112, 3)
    assert viewer.layers["colour features"].data.shape == (128, 112, 112)


def test_similarity_click(qtbot, viewer, features_widget):
    image = viewer.add_image(two_texture_image()[0], name="tex")
    features_widget.similarity(image, 20, 30)
    wait_idle(qtbot, features_widget)
    similarity = viewer.layers["tex similarity"].data
    assert similarity.shape == (112, 112)
    assert similarity[20, 30] == pytest.approx(1.0, abs=1e-4)
    assert similarity.min() >= -1.0 - 1e-6


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
    assert features_widget._compute_plane.enabled and not features_widget._cancel.enabled


def test_errors_are_notified(qtbot, viewer, features_widget, gui_config, notifications, tmp_path):
    volume = viewer.add_image(np.zeros((2, 3, 32, 32), dtype=np.uint8), name="volume")
    assert features_widget.compute(volume) is None
    assert any("2D images" in str(n.message) for n in notifications)

    features_widget.set_settings(gui_config.replace(backbone=str(tmp_path / "no-such-model")))
    image = viewer.add_image(two_texture_image()[0], name="tex")
    worker = features_widget.compute(image)
    assert worker is not None
    wait_idle(qtbot, features_widget)
    errors = [n for n in notifications if "HR-Dv2" in str(n.message) and "no-such-model" in str(n.message)]
    assert errors, [str(n.message) for n in notifications]
    assert features_widget._compute_plane.enabled, "buttons re-enable when a worker ends with an error"
