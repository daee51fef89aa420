"""A new user's napari experience: results come into view with a final status, no orphan or misused result layers,
messages in one place, the Views tab usable at the default width."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import PLUGIN, TIMEOUT_MS, two_texture_image
from references import smooth_noise

pytestmark = pytest.mark.gui


@pytest.fixture
def docks(make_napari_viewer, tiny_config):
    viewer = make_napari_viewer()
    _, features = viewer.window.add_plugin_dock_widget(PLUGIN, "HR-Dv2 Features")
    _, segmentation = viewer.window.add_plugin_dock_widget(PLUGIN, "HR-Dv2 Segmentation")
    features.set_settings(tiny_config)
    return viewer, features, segmentation


def finish(qtbot, widget, worker) -> None:
    assert worker is not None
    qtbot.waitUntil(lambda: not widget.is_busy, timeout=TIMEOUT_MS)
    qtbot.wait(50)


def on_top(viewer, name: str) -> bool:
    """The layer is visible and no image or result layer lies above it."""
    layers = list(viewer.layers)
    layer = viewer.layers[name]
    above = layers[layers.index(layer) + 1 :]
    return layer.visible and not any(type(other).__name__ == "Image" or "napari_hrdv2" in other.metadata
                                     for other in above)  # fmt: skip


def test_analysis_results_come_into_view_with_a_final_status(qtbot, docks):
    viewer, features, _ = docks
    tools = features._analysis
    stack = np.stack([two_texture_image(56, seed=1)[0], two_texture_image(56, seed=2)[0].T])
    viewer.add_image(stack, name="cells")
    finish(qtbot, features, tools.fit_basis())
    assert on_top(viewer, "cells PCA")
    labels = np.zeros(stack.shape, dtype=np.uint8)
    labels[0, 10:40, 40:50] = 1
    viewer.add_labels(labels, name="region")
    tools._region_layer.reset_choices()
    tools._region_layer.value = viewer.layers["region"]
    finish(qtbot, features, tools.search())
    assert on_top(viewer, "cells similarity"), "the similarity map is not left under the PCA view"
    assert features.status == "Similarity search in cells: done."
    viewer.layers["cells PCA"].visible = False
    finish(qtbot, features, tools.apply_basis())
    assert on_top(viewer, "cells PCA"), "Apply recolours a PCA layer the user can see"
    assert features.status == "PCA view of cells: done."
    assert list(viewer.layers).index(viewer.layers["region"]) == len(viewer.layers) - 1, "scribbles stay above"


def test_feature_channel_and_head_come_into_view(qtbot, docks):
    viewer, features, _ = docks
    image = viewer.add_image(two_texture_image(56, seed=1)[0], name="cells")
    features.compute(image)
    qtbot.waitUntil(lambda: not features.is_busy, timeout=TIMEOUT_MS)
    viewer.add_labels(np.zeros((56, 56), dtype=np.uint8) + 1, name="cells segmentation",
                      metadata={"napari_hrdv2": {"kind": "segmentation", "source": "cells"}})  # fmt: skip
    features.views.channel.value = 1
    assert on_top(viewer, "cells features")
    features.views.head.value = 1
    assert on_top(viewer, "cells attention")


def test_removing_an_image_removes_its_results_and_docks_skip_match_views(qtbot, docks):
    viewer, features, segmentation = docks
    tools = features._analysis
    image = smooth_noise((84, 98))
    first = viewer.add_image(image, name="a")
    second = viewer.add_image(image[14:70, 28:84].copy(), name="b")
    features._image.value = first
    features.compute(first)
    qtbot.waitUntil(lambda: not features.is_busy, timeout=TIMEOUT_MS)
    assert "a PCA" in viewer.layers
    features._image.value = first
    tools._match_with.reset_choices()
    tools._match_with.value = second
    tools._top_k.value = 4
    finish(qtbot, features, tools.match())
    qtbot.waitUntil(lambda: "a | b ends" in viewer.layers, timeout=5000)
    assert features.status == "Matching a and b: done."
    assert on_top(viewer, "a | b ends")
    for dock in (features, segmentation):  # the match view is the plugin's output, never an Image choice
        assert all(choice is not viewer.layers["a | b"] for choice in dock._image.choices)
    viewer.layers.remove(first)
    qtbot.wait(50)
    assert [layer.name for layer in viewer.layers] == ["b"], "a removed image takes its result layers with it"
    assert features._image.value is second and segmentation._image.value is second


def test_main_opens_a_zarr_folder(make_napari_viewer, monkeypatch, tmp_path, capsys):
    import napari
    import zarr

    from napari_hrdv2.__main__ import main

    viewer = make_napari_viewer()
    monkeypatch.setattr(napari, "Viewer", lambda **_: viewer)
    monkeypatch.setattr(napari, "run", lambda: None)
    path = tmp_path / "image.zarr"
    array = zarr.open(str(path), mode="w", shape=(40, 50), dtype="uint8")
    array[:] = 7
    assert main([str(path)]) == 0, capsys.readouterr().err
    assert viewer.layers[-1].data.shape == (40, 50)
    assert main([str(tmp_path / "missing.zarr")]) == 2


def enclosing_scroll(widget):
    from qtpy.QtWidgets import QScrollArea

    while widget is not None and not isinstance(widget, QScrollArea):
        widget = widget.parentWidget()
    return widget


def test_views_tab_fits_the_default_dock_and_main_buttons_never_scroll(qtbot, make_napari_viewer):
    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.resize(1366, 768)
    _, features = viewer.window.add_plugin_dock_widget(PLUGIN, "HR-Dv2 Features")  # as a new user finds them
    _, segmentation = viewer.window.add_plugin_dock_widget(PLUGIN, "HR-Dv2 Segmentation")
    features._tabs.setCurrentIndex(1)  # Views
    qtbot.wait(200)
    screen = window.screen().availableGeometry()
    assert (screen.width(), screen.height()) >= (1366, 768), "the virtual screen is smaller than a small laptop's"
    assert window.width() <= 1366 and window.height() <= 768
    page = features._pages["Views"].native
    scroll = enclosing_scroll(page)
    viewport = scroll.viewport().width()
    assert page.minimumSizeHint().width() <= viewport and page.width() <= viewport, "the Views tab is clipped"
    for name in ("_apply", "_load", "_fit"):
        button = getattr(features._analysis, name).native
        right = button.mapTo(page, button.rect().topRight()).x()
        assert right <= viewport, f"{button.text()} is cut off"

    for button in (features._compute_plane, features._compute_all, segmentation.train_tab.train):
        assert enclosing_scroll(button.native) is None, f"{button.text} sits in a scroll area"


def test_a_failed_download_is_said_in_words(monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    from napari_hrdv2._widgets._runner import user_message
    from napari_hrdv2.core.backbone.loading import clear_backbone_cache, load_backbone
    from napari_hrdv2.core.errors import WeightsNotFoundError

    def offline(*_, **__):
        raise LocalEntryNotFoundError("Cannot find the requested files in the disk cache and outgoing traffic ...")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    clear_backbone_cache()
    with pytest.raises(WeightsNotFoundError) as caught:
        load_backbone("someone/dinov2-nowhere")
    message = user_message(caught.value)
    assert "LocalEntryNotFoundError" not in message and "could not be reached" in message


def test_probabilities_of_a_stack_add_no_slider(qtbot, docks):
    """One hidden layer per class, laid out like the stack: the viewer keeps the image's one plane slider."""
    from napari_hrdv2._layers import ViewRegion

    viewer, _, segmentation = docks
    stack = viewer.add_image(np.stack([two_texture_image(56, seed=s)[0] for s in (1, 2)]), name="cells")
    ndim = viewer.dims.ndim
    scribbles = segmentation.new_scribbles_layer(stack)
    painted = scribbles.data.copy()
    painted[0, 5:50, 5:9], painted[0, 5:50, 45:49] = 1, 2
    scribbles.data = painted
    segmentation._want_probabilities.value = True
    finish(qtbot, segmentation, segmentation.train(stack, scribbles))
    finish(qtbot, segmentation, segmentation.predict(stack, all_planes=True))
    assert viewer.dims.ndim == ndim == 3
    layers = [viewer.layers[f"cells probabilities class {c}"] for c in (1, 2)]
    assert all(layer.data.shape == (2, 56, 56) and not layer.visible for layer in layers)
    np.testing.assert_allclose(layers[0].data + layers[1].data, 1.0, atol=1e-4)
    segmentation._session.class_names[2] = "membrane"
    finish(qtbot, segmentation, segmentation.predict_view(stack, ViewRegion(1, (0, 20), (0, 30))))
    assert viewer.dims.ndim == ndim
    assert viewer.layers["cells probabilities membrane"] is layers[1], "renamed after its class, updated in place"
