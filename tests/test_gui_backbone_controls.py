"""Backbone controls of the docks: facet and block on the Features dock's Advanced page (pytest-qt + Xvfb)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import PLUGIN, two_texture_image, wait_idle

pytestmark = pytest.mark.gui


@pytest.fixture
def viewer(make_napari_viewer_proxy):
    return make_napari_viewer_proxy()


def dock(viewer, name):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return widget


def paint(layer) -> None:
    data = layer.data.copy()
    size = data.shape[-1]
    data[..., 10:-10, 15:19] = 1
    data[..., 10:-10, size - 20 : size - 16] = 2
    layer.data = data


def test_facet_and_block_flow_into_compute_and_training(viewer, qtbot, tiny_config):
    from napari_hrdv2.core.errors import InputError

    image = viewer.add_image(two_texture_image()[0], name="tex")
    features = dock(viewer, "HR-Dv2 Features")
    advanced = features._pages["Advanced"]
    assert any(w is features._facet for w in advanced) and any(w is features._layer for w in advanced)
    # Default state: the documented defaults (last block's tokens), with tooltips saying what the choices mean.
    assert features._facet.value == "token" and features._layer.value == -1
    assert features.settings.facet == "token" and features.settings.layer is None
    assert "key" in features._facet.tooltip and "last" in features._layer.tooltip

    features.set_settings(tiny_config)
    features._facet.value = "key"
    features._layer.value = 0
    assert (features.settings.facet, features.settings.layer) == ("key", 0)
    assert (features._session.config.facet, features._session.config.layer) == ("key", 0)
    features._want_attention.value = False
    features.compute(image)
    wait_idle(qtbot, features)
    used = viewer.layers["tex PCA"].metadata["napari_hrdv2"]["config"]
    assert (used["facet"], used["layer"]) == ("key", 0)

    segmentation = dock(viewer, "HR-Dv2 Segmentation")
    assert "key facet, block 0" in segmentation._settings_summary.value
    paint(segmentation.new_scribbles_layer(image))
    segmentation._train.changed.emit(True)
    wait_idle(qtbot, segmentation)
    model = segmentation._session.segmenter
    assert (model.feature_config.facet, model.feature_config.layer) == ("key", 0)

    features._facet.value = "token"  # the model refuses token features; the dock says so and predicts with 'key'
    with pytest.raises(InputError, match="facet: model 'key' vs image 'token'"):
        model.check_compatible_config(features.settings)
    note = segmentation._model_status.value
    assert "facet: model 'key' vs Features dock 'token'" in note and "Predict uses the model's settings" in note
    segmentation._predict_plane.changed.emit(True)
    wait_idle(qtbot, segmentation)
    assert segmentation.status.startswith("Segmented tex")
    assert set(np.unique(viewer.layers["tex segmentation"].data)) <= {1, 2}
    features._facet.value = "key"
    assert "Features dock" not in segmentation._model_status.value
