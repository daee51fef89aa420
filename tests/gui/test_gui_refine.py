"""The Segmentation dock's *Refine edges* control (pytest-qt + Xvfb)."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from conftest import dock, paint_two_classes, two_texture_image, wait_idle

pytestmark = pytest.mark.gui


def test_refine_edges_sets_the_models_refinement(viewer, qtbot, tiny_config, tmp_path):
    from napari_hrdv2.core.segmentation.segmenter import LinearSegmenter

    image = viewer.add_image(two_texture_image()[0], name="tex")
    dock(viewer, "HR-Dv2 Features").set_settings(tiny_config)
    segmentation = dock(viewer, "HR-Dv2 Segmentation")
    default = inspect.signature(LinearSegmenter).parameters["refine"].default
    assert segmentation._refine.value == default, "the default state offers the library's default"
    assert segmentation._refine.label == "Refine edges"
    segmentation._refine.value = "guided"
    scribbles = segmentation.new_scribbles_layer(image)
    paint_two_classes(scribbles)
    segmentation._train.changed.emit(True)
    wait_idle(qtbot, segmentation)
    model = segmentation._session.segmenter
    assert model.refine == "guided" and "edges refined (guided)" in segmentation._model_status.value
    encoding = model.featurizer(tile_size=tiny_config.tile_size).encode(image.data, with_attention=False)
    np.testing.assert_array_equal(viewer.layers["tex segmentation"].data, model.predict(encoding))

    segmentation._refine.value = "crf"  # changes the current model: the next Predict / View / Live refine so
    assert model.refine == "crf" and "edges refined (crf)" in segmentation._model_status.value
    saved = segmentation.save_model(tmp_path / "model.hrdv2")
    assert LinearSegmenter.load(saved).refine == "crf"
    segmentation._refine.value = "none"
    assert model.refine == "none" and "edges refined" not in segmentation._model_status.value
