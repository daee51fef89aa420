"""The Segmentation dock's "Volume (3D features)" option: a 3D layer trained from scribbles on any plane."""

from __future__ import annotations

import numpy as np
import pytest

import napari_hrdv2 as hr
from conftest import PLUGIN, wait_idle

pytestmark = pytest.mark.gui


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


def test_volume_option_trains_and_predicts_the_volume(qtbot, viewer, tiny_config):
    _, features = viewer.window.add_plugin_dock_widget(PLUGIN, "HR-Dv2 Features")
    features.set_settings(tiny_config)
    _, dock = viewer.window.add_plugin_dock_widget(PLUGIN, "HR-Dv2 Segmentation")
    volume_box = dock.train_tab.volume
    flat = viewer.add_image(np.zeros((28, 28), dtype=np.uint8), name="flat")
    assert dock._image.value is flat and not volume_box.enabled, "off for 2D images"

    rng = np.random.default_rng(0)
    volume = (rng.random((16, 20, 18)) * 100).astype(np.uint8)
    volume[:, :, 9:] += 120
    layer = viewer.add_image(volume, name="vol", scale=(2.0, 1.0, 1.0))
    dock._choose_image(layer)
    assert volume_box.enabled, "on for 3D images"
    volume_box.value = True
    scribbles = dock.new_scribbles_layer(layer)
    painted = scribbles.data.copy()
    painted[3, 4:16, 2:4] = 1
    painted[:, 10, 14] = 2  # painted across the planes (an XZ view)
    scribbles.data = painted

    assert dock.train(layer, scribbles) is not None
    wait_idle(qtbot, dock)
    model = dock._session.segmenter
    assert model.feature_config.volume is True
    segmentation = viewer.layers["vol segmentation"]
    assert segmentation.data.shape == (16, 20, 18)
    np.testing.assert_allclose(segmentation.scale, (2.0, 1.0, 1.0))
    expected = hr.predict_stack(model, volume, config=tiny_config.replace(volume=True), spacing=(2.0, 1.0, 1.0))
    np.testing.assert_array_equal(segmentation.data, expected)
    assert "volume" in dock.train_tab.model_status.value and "other features" not in dock.train_tab.model_status.value

    segmentation.data = np.zeros_like(segmentation.data)
    assert dock.predict(layer) is not None  # 'Predict plane' with a volume model segments the whole volume
    wait_idle(qtbot, dock)
    np.testing.assert_array_equal(viewer.layers["vol segmentation"].data, expected)
    assert dock.predict_view(layer) is None and "volume model" in dock.status
