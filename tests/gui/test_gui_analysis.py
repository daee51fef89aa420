"""The Features dock's dataset tools in a real napari window: PCA basis over planes, region similarity, matching."""

from __future__ import annotations

import numpy as np
import pytest

import napari_hrdv2 as hr
from conftest import PLUGIN, TIMEOUT_MS, two_texture_image
from references import smooth_noise

pytestmark = pytest.mark.gui


@pytest.fixture
def dock(make_napari_viewer, tiny_config):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "HR-Dv2 Features")
    widget.set_settings(tiny_config)
    return viewer, widget, widget._analysis


def finish(qtbot, worker) -> None:
    assert worker is not None
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT_MS):
        pass
    qtbot.wait(50)  # let the returned callback add the layers


@pytest.fixture
def stack():
    return np.stack([two_texture_image(56, seed=1)[0], two_texture_image(56, seed=2)[0].T])


def test_fit_on_all_planes_save_and_load_basis(qtbot, dock, stack, tiny_config, tmp_path):
    viewer, widget, tools = dock
    layer = viewer.add_image(stack, name="cells")
    widget._image.value = layer
    tools._components.value = "2, 0, 1"
    finish(qtbot, tools.fit_basis())
    basis = tools.basis
    assert basis is not None and basis.metadata["n_images"] == 2
    qtbot.waitUntil(lambda: "cells PCA" in viewer.layers, timeout=TIMEOUT_MS)
    qtbot.waitUntil(lambda: not widget.is_busy, timeout=TIMEOUT_MS)
    shown = viewer.layers["cells PCA"].data
    featurizer = hr.Featurizer(tiny_config)
    for plane in (0, 1):  # one basis, fixed colours, chosen components
        np.testing.assert_allclose(shown[plane], basis.to_rgb(featurizer.encode(stack[plane]), (2, 0, 1)), atol=1e-5)
    path = tools.save_basis(tmp_path / "cells.safetensors")
    tools.set_basis(None)
    loaded = tools.load_basis(path)
    np.testing.assert_array_equal(loaded.components, basis.components)
    assert "2 plane(s)" in tools._basis_info.value
    from napari_hrdv2._widgets._dock import DOCK_MAX_WIDTH

    assert widget.native.sizeHint().width() <= DOCK_MAX_WIDTH  # the dataset tools keep the dock narrow


def test_region_similarity_over_all_planes(qtbot, dock, stack, tiny_config):
    viewer, widget, tools = dock
    layer = viewer.add_image(stack, name="cells")
    labels = np.zeros(stack.shape, dtype=np.uint8)
    labels[0, 10:40, 40:50] = 3
    viewer.add_labels(labels, name="region")
    widget._image.value = layer
    tools._region_layer.reset_choices()
    tools._region_layer.value = viewer.layers["region"]
    tools._region_value.value = 3
    finish(qtbot, tools.search())
    maps = viewer.layers["cells similarity"].data
    featurizer = hr.Featurizer(tiny_config)
    reference = hr.region_vector(featurizer.encode(stack[0]), labels[0] == 3)
    for plane in (0, 1):
        np.testing.assert_allclose(maps[plane], hr.similarity_to(featurizer.encode(stack[plane]), reference), atol=1e-5)


def test_matching_adds_side_by_side_lines_and_points(qtbot, dock):
    viewer, widget, tools = dock
    image = smooth_noise((84, 98))
    first = viewer.add_image(image, name="a")
    second = viewer.add_image(image[14:70, 28:84].copy(), name="b")
    widget._image.value = first  # (the dock selects a newly added image by itself)
    tools._match_with.reset_choices()
    tools._match_with.value = second
    tools._top_k.value = 6
    finish(qtbot, tools.match())
    qtbot.waitUntil(lambda: "a | b ends" in viewer.layers, timeout=TIMEOUT_MS)
    assert viewer.layers["a | b"].data.shape == (84, 98 + 8 + 56, 3)
    lines = viewer.layers["a | b matches"].data
    assert len(lines) == 6 and len(viewer.layers["a | b ends"].data) == 12
    for line in lines:  # B's end is drawn at its own position + the side-by-side offset
        np.testing.assert_array_equal(line[0] - (line[1] - [0, 98 + 8]), [14, 28])


def test_fit_on_all_planes_reuses_the_encodings_of_compute(qtbot, dock, stack, monkeypatch):
    """Compute / All planes then Fit on all planes: each plane is encoded once; planes are numbered as napari does."""
    viewer, widget, tools = dock
    layer = viewer.add_image(stack, name="cells")
    widget._image.value = layer
    finish(qtbot, widget.compute(layer, all_planes=True))
    qtbot.waitUntil(lambda: not widget.is_busy, timeout=TIMEOUT_MS)
    assert widget.status == "Features of cells plane(s) 0, 1 ready.", "planes count from 0, like napari's slider"
    encoded, messages = [], []
    iter_encode = hr.Featurizer.iter_encode

    def counting(self, image, **kwargs):
        encoded.append(image.shape)
        return (yield from iter_encode(self, image, **kwargs))

    monkeypatch.setattr(hr.Featurizer, "iter_encode", counting)
    worker = tools.fit_basis()
    worker.yielded.connect(lambda item: messages.append(getattr(item, "message", "")))
    finish(qtbot, worker)
    assert tools.basis is not None and tools.basis.metadata["n_images"] == 2
    assert encoded == [], "Fit encoded again what Compute had just encoded"
    assert not any("plane 2" in m for m in messages), messages
