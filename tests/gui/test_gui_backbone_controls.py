"""Backbone controls of the docks: facet and block on the Features dock's Advanced page (pytest-qt + Xvfb)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import dock, paint_two_classes, two_texture_image, wait_idle

pytestmark = pytest.mark.gui


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
    paint_two_classes(segmentation.new_scribbles_layer(image))
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


# ---------------------------------------------------------------------------------------------- downloads
@pytest.fixture
def online(monkeypatch):
    """As if a network were there (the docks ask); a fake ``snapshot_download`` records the call and fails.

    HF_HUB_OFFLINE stays set for the loader, so nothing can reach the network either way.
    """
    import huggingface_hub

    from napari_hrdv2._widgets import _downloads

    downloads = []

    def fake_snapshot_download(repo_id, **_kwargs):
        downloads.append(repo_id)
        raise OSError("no network in the tests")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setattr(_downloads, "hub_offline", lambda: False)
    return downloads


def answer(widget, yes: bool) -> list[str]:
    asked = []
    widget._session.downloads.ask = lambda repo, _parent=None: asked.append(repo) or yes
    return asked


def test_no_download_without_asking_and_no_cancels_cleanly(viewer, qtbot, online, notifications):
    """Default state (the preset, not in the Hugging Face cache): Compute and Train ask; No starts nothing."""
    image = viewer.add_image(two_texture_image()[0], name="tex")
    features = dock(viewer, "HR-Dv2 Features")
    segmentation = dock(viewer, "HR-Dv2 Segmentation")
    asked = answer(features, yes=False)
    assert features.compute(image) is None and not features.is_busy
    assert asked == ["facebook/dinov2-small"] and online == [], "asked once, nothing downloaded"
    assert "`hf download facebook/dinov2-small`" in features.status and "Select weights..." in features.help_text
    assert any("hf download facebook/dinov2-small" in str(n.message) for n in notifications)
    scribbles = segmentation.new_scribbles_layer(image)
    paint_two_classes(scribbles)
    assert segmentation.train(image, scribbles) is None and not segmentation.is_busy
    assert asked == ["facebook/dinov2-small"] * 2 and online == []
    assert "hf download facebook/dinov2-small" in segmentation.status


def test_yes_downloads_and_is_remembered(viewer, qtbot, online):
    image = viewer.add_image(two_texture_image()[0], name="tex")
    features = dock(viewer, "HR-Dv2 Features")
    asked = answer(features, yes=True)
    assert features.compute(image) is not None
    wait_idle(qtbot, features)
    assert asked == ["facebook/dinov2-small"] and online == ["facebook/dinov2-small"], "the download was tried"
    assert "hf download facebook/dinov2-small" in features.help_text  # it failed (fake): what to do instead
    features.compute(image)
    wait_idle(qtbot, features)
    assert asked == ["facebook/dinov2-small"] and len(online) == 2, "asked once per session"


def test_loading_a_model_that_names_a_hub_repo_asks(viewer, qtbot, online, tmp_path):
    import napari_hrdv2 as hr
    from napari_hrdv2.core.segmentation.segmenter import LinearSegmenter

    rng = np.random.default_rng(0)
    features = rng.normal(size=(4, 20, 20)).astype(np.float32)
    labels = np.zeros((20, 20), np.uint8)
    labels[:, :5], labels[:, -5:] = 1, 2
    model = LinearSegmenter().fit(features, labels)
    model.feature_config = hr.FeatureConfig(backbone="someone/dinov2-finetuned", shifts="none")
    path = model.save(tmp_path / "hub.hrdv2")

    image = viewer.add_image(two_texture_image()[0], name="tex")
    segmentation = dock(viewer, "HR-Dv2 Segmentation")
    asked = answer(segmentation, yes=False)
    segmentation.load_model(path)
    assert segmentation._session.segmenter is not None and asked == ["someone/dinov2-finetuned"]
    assert "`hf download someone/dinov2-finetuned`" in segmentation.status and "retrain" in segmentation.status
    assert segmentation.predict(image) is None and segmentation.predict_view(image) is None
    assert asked == ["someone/dinov2-finetuned"] * 3 and online == [] and not segmentation.is_busy


@pytest.mark.parametrize("button", ["Yes", "No"])
def test_the_question_is_a_message_box_answered_no_by_default(qtbot, button):
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication, QMessageBox

    from napari_hrdv2._widgets._downloads import ask_download

    seen = []

    def press() -> None:
        box = QApplication.activeModalWidget()
        seen.append((box.text(), box.defaultButton() is box.button(QMessageBox.StandardButton.No)))
        box.button(getattr(QMessageBox.StandardButton, button)).click()

    QTimer.singleShot(100, press)
    assert ask_download("facebook/dinov2-small") is (button == "Yes")
    assert "'facebook/dinov2-small' are not on this computer" in seen[0][0] and seen[0][1]
    assert "(about 80 MB)" in seen[0][0]  # ViT-S/14: 12 blocks x 12 x 384^2 float32 parameters


def test_a_folder_named_like_a_preset_does_not_hide_the_download(tmp_path, monkeypatch):
    """load_backbone reads the preset 'small' even when ./small exists, so that name still needs a download."""
    from napari_hrdv2.core.backbone.identity import download_needed

    (tmp_path / "small").mkdir()
    monkeypatch.chdir(tmp_path)
    assert download_needed("small") == "facebook/dinov2-small"
    assert download_needed("./small") is None  # written as a path: the local folder


def test_the_runtime_choice_reaches_the_settings_and_the_precision_line(
    viewer, qtbot, tiny_config, tmp_path, monkeypatch
):
    import importlib.util

    from napari_hrdv2.core.backbone.onnx_forward import ONNX_CACHE_ENV

    monkeypatch.setenv(ONNX_CACHE_ENV, str(tmp_path / "onnx"))
    image = viewer.add_image(two_texture_image()[0], name="tex")
    features = dock(viewer, "HR-Dv2 Features")
    runtime = features.controls.runtime
    assert any(w is runtime for w in features._pages["Advanced"])
    # Default state: torch, and the precision line names no other runtime.
    assert runtime.value == "torch" and features.settings.runtime == "torch"
    assert "ONNX" not in features._precision.value

    features.set_settings(tiny_config)
    runtime.value = "openvino"
    assert features._session.config.runtime == "openvino"
    assert "OpenVINO, float32 (auto: float32 under OpenVINO)" in features._precision.value
    runtime.value = "onnxruntime"
    assert features._session.config.runtime == "onnxruntime"
    assert "ONNX Runtime, float32 (auto: float32 under ONNX Runtime)" in features._precision.value
    if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None:
        return
    features._want_attention.value = False
    features.compute(image)
    wait_idle(qtbot, features)
    assert viewer.layers["tex PCA"].metadata["napari_hrdv2"]["config"]["runtime"] == "onnxruntime"
