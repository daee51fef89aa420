"""Channels encoded separately in napari: the layers of a multichannel image (``channel_axis``) are read together."""

from __future__ import annotations

import numpy as np
import pytest

from channel_images import five_channel_image, strokes
from conftest import PLUGIN, wait_idle
from napari_hrdv2._layers import channel_layers, image_data

pytestmark = pytest.mark.gui


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


def test_channel_layers_are_trained_and_segmented_together(qtbot, viewer, tiny_config):
    image, truth = five_channel_image()
    layers = viewer.add_image(image, channel_axis=-1, name=[f"c{c}" for c in range(5)])
    viewer.add_image(np.zeros((50, 50)), name="other size")
    assert [layer.name for layer in channel_layers(viewer, layers[2])] == ["c0", "c1", "c2", "c3", "c4"]
    data, names = image_data(viewer, layers[0], "separate")
    np.testing.assert_array_equal(data, image)
    assert image_data(viewer, layers[0], "joint")[0] is layers[0].data
    _, features = viewer.window.add_plugin_dock_widget(PLUGIN, "HR-Dv2 Features")
    features.set_settings(tiny_config.replace(channel_mode="separate", dtype="float32"))
    _, segmentation = viewer.window.add_plugin_dock_widget(PLUGIN, "HR-Dv2 Segmentation")
    scribbles = segmentation.new_scribbles_layer(layers[4])
    scribbles.data = strokes(truth)
    segmentation.train(layers[4], scribbles)
    wait_idle(qtbot, segmentation)
    model = segmentation._session.segmenter
    assert model.feature_config.channel_mode == "separate" and model.coef_.shape[1] == 5 * 128
    predicted = viewer.layers["c4 segmentation"].data
    assert (predicted == truth).mean() > 0.95
    layers[1].visible = False  # a hidden layer is left out: 4 channels, which the model refuses
    assert len(image_data(viewer, layers[4], "separate")[1]) == 4
