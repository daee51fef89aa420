"""'Predict current view' in the Segmentation dock: the visible rectangle from the camera, only it is segmented
and pasted, equal to the whole-plane prediction cropped (pytest-qt + Xvfb; a tiny random-init backbone)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import PLUGIN, paint_two_classes, two_texture_image, wait_idle

pytestmark = pytest.mark.gui


def test_visible_region_follows_camera_scale_and_translate():
    """No Qt: a (3, 40, 60) stack at scale 2, translate (10, 20); the camera shows world rows 30-70, cols 50-110."""
    from napari.components import ViewerModel

    from napari_hrdv2._layers import visible_region
    from napari_hrdv2.core.errors import InputError

    viewer = ViewerModel()
    layer = viewer.add_image(np.zeros((3, 40, 60), dtype=np.uint8), scale=(1, 2, 2), translate=(0, 10, 20))
    viewer.dims.set_point(0, 2)
    viewer.canvas.size = (800, 1200)  # height, width in screen pixels
    viewer.scene.camera.center = (0, 50, 80)
    viewer.scene.camera.zoom = 20  # screen pixels per world unit: 40 x 60 world units visible
    region = visible_region(viewer, layer)
    # data rows (30 - 10) / 2 = 10 .. (70 - 10) / 2 = 30, cols (50 - 20) / 2 = 15 .. 45; pixel i spans i +- 0.5
    assert (region.plane, region.rows, region.cols) == (2, (10, 31), (15, 46))
    levels = [np.zeros((3, 40, 60), dtype=np.uint8), np.zeros((3, 20, 30), dtype=np.uint8)]
    pyramid = viewer.add_image(levels, multiscale=True, scale=(1, 2, 2), translate=(0, 10, 20))
    assert visible_region(viewer, pyramid) == region, "full-resolution pixels of a pyramid"
    viewer.scene.camera.zoom = 1  # everything visible: clipped to the image
    assert visible_region(viewer, layer).rows == (0, 40) and visible_region(viewer, layer).cols == (0, 60)
    viewer.scene.camera.center = (0, 5000, 5000)
    viewer.scene.camera.zoom = 20
    with pytest.raises(InputError, match="not in view"):
        visible_region(viewer, layer)
    viewer.dims.ndisplay = 3
    with pytest.raises(InputError, match="2D"):
        visible_region(viewer, layer)


def trained_on_texture(make_viewer, qtbot, config):
    """A viewer with the "tex" image, both docks, and a model trained on two scribbled classes (no segmentation yet)."""
    viewer = make_viewer()
    image = viewer.add_image(two_texture_image()[0], name="tex")
    _, features = viewer.window.add_plugin_dock_widget(PLUGIN, "HR-Dv2 Features")
    features.set_settings(config)
    _, segmentation = viewer.window.add_plugin_dock_widget(PLUGIN, "HR-Dv2 Segmentation")
    paint_two_classes(segmentation.new_scribbles_layer(image))
    segmentation._auto_segment.value = False
    segmentation._train.changed.emit(True)
    wait_idle(qtbot, segmentation)
    return viewer, image, segmentation


def show_rows_cols(
    viewer, center: tuple[float, float], visible_rows: float, size: int = 112
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Point the camera at ``center`` showing ``visible_rows`` world rows; the expected (rows, cols) of a square image."""
    height, width = viewer.canvas.size
    zoom = height / visible_rows
    viewer.scene.camera.center = (0, *center)
    viewer.scene.camera.zoom = zoom
    half_rows, half_cols = height / 2 / zoom, width / 2 / zoom
    rows = (max(0, int(np.floor(center[0] - half_rows + 0.5))), min(size, int(np.ceil(center[0] + half_rows + 0.5))))
    cols = (max(0, int(np.floor(center[1] - half_cols + 0.5))), min(size, int(np.ceil(center[1] + half_cols + 0.5))))
    return rows, cols


def test_predict_view_segments_only_the_visible_rectangle(make_napari_viewer_proxy, qtbot, tiny_config, monkeypatch):
    import napari_hrdv2 as hr

    viewer, image, segmentation = trained_on_texture(make_napari_viewer_proxy, qtbot, tiny_config)
    assert segmentation._predict_view.text == "View"
    assert "tex segmentation" not in viewer.layers
    encodes = []  # the plane was encoded whole for training: a view projects that encoding
    featurizer_encode = hr.Featurizer.iter_encode
    monkeypatch.setattr(
        hr.Featurizer, "iter_encode", lambda self, *a, **k: (encodes.append(1), featurizer_encode(self, *a, **k))[1]
    )

    rows, cols = show_rows_cols(viewer, (40, 75), visible_rows=30)
    assert 0 < rows[0] < rows[1] < 112 and cols[0] > 0 and cols[1] - cols[0] < 112, (rows, cols)
    segmentation._predict_view.changed.emit(True)  # creates the layer: zeros outside the view
    wait_idle(qtbot, segmentation)
    view = np.array(viewer.layers["tex segmentation"].data)
    inside = np.zeros(view.shape, dtype=bool)
    inside[rows[0] : rows[1], cols[0] : cols[1]] = True
    assert np.all(view[inside] > 0) and np.all(view[~inside] == 0)
    assert f"rows {rows[0]}-{rows[1] - 1}" in segmentation.status
    assert not encodes, "View encoded a plane that the dock had encoded whole"

    segmentation._predict_plane.changed.emit(True)  # the whole plane, for reference
    wait_idle(qtbot, segmentation)
    layer = viewer.layers["tex segmentation"]
    full = np.array(layer.data)
    np.testing.assert_array_equal(view[inside], full[inside])
    assert set(np.unique(full)) == {1, 2}

    layer.data = np.full_like(full, 7)  # an existing layer: only the new view changes
    rows, cols = show_rows_cols(viewer, (80, 30), visible_rows=40)
    segmentation._predict_view.changed.emit(True)
    wait_idle(qtbot, segmentation)
    assert viewer.layers["tex segmentation"] is layer or viewer.layers["tex segmentation"].name == layer.name
    after = np.array(viewer.layers["tex segmentation"].data)
    inside = np.zeros(after.shape, dtype=bool)
    inside[rows[0] : rows[1], cols[0] : cols[1]] = True
    np.testing.assert_array_equal(after[inside], full[inside])
    assert np.all(after[~inside] == 7)
    assert len([name for name in viewer.layers if "segmentation" in str(name)]) == 1


def test_view_of_a_huge_lazy_image_allocates_only_the_chunks_written():
    """A 16384 x 8192 dask image: the new segmentation is an in-memory Zarr array holding the pasted chunks only."""
    import dask.array as da
    import zarr
    from napari.components import ViewerModel
    from napari.layers import Layer

    from napari_hrdv2._layers import SourceGeometry, ViewRegion, paste_region, region_index, segmentation_layer_data

    viewer = ViewerModel()
    image = viewer.add_image(da.zeros((16384, 8192), dtype=np.uint8, chunks=1024), name="huge")
    geometry = SourceGeometry.from_layer(image)
    region = ViewRegion(0, (1000, 1300), (2000, 2100))
    values = np.full(region.shape, 2, dtype=np.uint8)
    labels = paste_region(None, geometry.planes_shape, region_index(geometry, region), values, lazy_source=True)
    assert isinstance(labels, zarr.Array) and labels.shape == (16384, 8192)
    # rows 1000-1300 x cols 2000-2100 touch 2 x 2 chunks of 1024 x 1024 (of 128)
    assert labels.nchunks_initialized == 4
    layer = viewer.add_layer(Layer.create(*segmentation_layer_data(geometry, labels, classes=[1, 2])))
    assert layer.data is labels
    again = paste_region(labels, geometry.planes_shape, region_index(geometry, region), values + 1, lazy_source=True)
    assert again is labels and int(labels[1100, 2050]) == 3 and int(labels[0, 0]) == 0
    small = paste_region(None, (112, 112), (slice(0, 10), slice(0, 10)), values[:10, :10], lazy_source=True)
    assert isinstance(small, np.ndarray), "small images keep plain numpy results"


def test_predict_view_of_a_pyramid_makes_a_pyramid(make_napari_viewer_proxy, qtbot, tiny_config):
    """A multiscale image (as the lazy reader opens OME-Zarr pyramids): read at full resolution, labels per level."""
    import napari_hrdv2 as hr

    viewer, image, segmentation = trained_on_texture(make_napari_viewer_proxy, qtbot, tiny_config)

    big = two_texture_image(224, seed=3)[0]
    pyramid = viewer.add_image([big, big[::2, ::2]], multiscale=True, name="pyr")
    rows, cols = (40, 150), (100, 201)
    from napari_hrdv2._layers import ViewRegion

    segmentation.predict_view(pyramid, ViewRegion(0, rows, cols))
    wait_idle(qtbot, segmentation)
    layer = viewer.layers["pyr segmentation"]
    assert layer.multiscale and [level.shape for level in layer.data] == [(224, 224), (112, 112)]
    level0, level1 = (np.asarray(level) for level in layer.data)
    model = segmentation._session.segmenter
    full = model.predict(hr.Featurizer(segmentation._session.prediction_config()).encode(big, with_attention=False))
    inside = np.zeros(level0.shape, dtype=bool)
    inside[rows[0] : rows[1], cols[0] : cols[1]] = True
    np.testing.assert_array_equal(level0[inside], full[inside])
    assert np.all(level0[~inside] == 0)
    np.testing.assert_array_equal(level1, level0[::2, ::2])  # every level shows the same labels (nearest)


def test_predict_view_of_a_lazy_stack_fills_the_plane_shown(make_napari_viewer_proxy, qtbot, tiny_config):
    """A dask stack (read lazily, as the job gets it): only the region of the plane shown is segmented."""
    import dask.array as da

    import napari_hrdv2 as hr
    from napari_hrdv2._layers import ViewRegion, visible_region

    viewer, image, segmentation = trained_on_texture(make_napari_viewer_proxy, qtbot, tiny_config)

    planes = np.stack([two_texture_image(seed=s)[0] for s in (4, 5, 6)])
    stack = viewer.add_image(da.from_array(planes, chunks=(1, 56, 56)), name="lazy")
    viewer.dims.set_point(0, 1)
    assert visible_region(viewer, stack).plane == 1
    segmentation.predict_view(stack, ViewRegion(1, (20, 90), (30, 100)))
    wait_idle(qtbot, segmentation)
    labels = np.asarray(viewer.layers["lazy segmentation"].data)
    assert labels.shape == (3, 112, 112) and isinstance(viewer.layers["lazy segmentation"].data, np.ndarray)
    full = segmentation._session.segmenter.predict(
        hr.Featurizer(segmentation._session.prediction_config()).encode(planes[1], with_attention=False)
    )
    np.testing.assert_array_equal(labels[1, 20:90, 30:100], full[20:90, 30:100])
    labels[1, 20:90, 30:100] = 0
    assert not labels.any(), "nothing outside the region of plane 1"


def test_train_on_a_huge_lazy_image_encodes_only_the_scribbled_tiles(
    make_napari_viewer_proxy, qtbot, tiny_config, monkeypatch
):
    """A lazily read image above the size limit (lowered here): Train encodes the scribbled tiles only (the same
    model as ``fit_lazy``), and 'Segment after training' segments the view, not the whole image."""
    import dask.array as da

    import napari_hrdv2 as hr
    from napari_hrdv2._widgets import _segmentation_jobs
    from napari_hrdv2.core.scale import streaming

    monkeypatch.setattr(_segmentation_jobs, "LAZY_TRAIN_PIXELS", 100 * 100)  # 224 x 224 counts as huge here
    encoded = []
    iter_encode = streaming.TileEncoder.iter_encode
    monkeypatch.setattr(
        streaming.TileEncoder,
        "iter_encode",
        lambda self, tile, **kw: (encoded.append(tile.top), iter_encode(self, tile, **kw))[1],
    )
    pixels = two_texture_image(224, seed=7)[0]
    viewer = make_napari_viewer_proxy()
    image = viewer.add_image(da.from_array(pixels, chunks=56), name="huge")
    _, features = viewer.window.add_plugin_dock_widget(PLUGIN, "HR-Dv2 Features")
    config = tiny_config.replace(tile_size=112, tile_overlap=28)
    features.set_settings(config)
    _, segmentation = viewer.window.add_plugin_dock_widget(PLUGIN, "HR-Dv2 Segmentation")
    scribbles = segmentation.new_scribbles_layer(image)
    painted = np.zeros((224, 224), dtype=np.uint8)
    painted[10:40, 15:19], painted[10:40, 130:134] = 1, 2  # top rows only
    scribbles.data = painted
    segmentation._auto_segment.value = False
    segmentation._train.changed.emit(True)
    wait_idle(qtbot, segmentation)
    assert "huge segmentation" not in viewer.layers and "press View" in segmentation.status
    assert encoded and max(encoded) == 0, f"only the top row of tiles holds scribbles: {sorted(set(encoded))}"
    reference = hr.fit_lazy(hr.LinearSegmenter(), pixels, painted, hr.Featurizer(config))
    np.testing.assert_allclose(segmentation._session.segmenter.coef_, reference.coef_, rtol=1e-4, atol=1e-5)

    segmentation._auto_segment.value = True
    rows, cols = show_rows_cols(viewer, (150, 60), visible_rows=40, size=224)
    assert rows[1] - rows[0] >= 40 and 0 < cols[0] < cols[1] < 224, (rows, cols)
    segmentation._train.changed.emit(True)
    wait_idle(qtbot, segmentation)
    labels = np.asarray(viewer.layers["huge segmentation"].data)
    inside = np.zeros(labels.shape, dtype=bool)
    inside[rows[0] : rows[1], cols[0] : cols[1]] = True
    assert np.all(labels[inside] > 0) and np.all(labels[~inside] == 0), "the view only"

    # The view's tiles and the image's intensity range are in the dock's cache now: View again encodes nothing.
    forwards = []
    featurizer_encode = hr.Featurizer.iter_encode
    monkeypatch.setattr(
        hr.Featurizer, "iter_encode", lambda self, *a, **k: (forwards.append(1), featurizer_encode(self, *a, **k))[1]
    )
    segmentation._predict_view.changed.emit(True)
    wait_idle(qtbot, segmentation)
    assert not forwards, "View of the same rectangle encoded tiles again"
    np.testing.assert_array_equal(np.asarray(viewer.layers["huge segmentation"].data), labels)


def test_lazy_reader_splits_ome_zarr_channels(tmp_path, make_napari_viewer_proxy):
    """An OME-Zarr with a c axis of 3 channels opens as one grey layer per channel, not as a 3-plane stack."""
    import zarr

    from napari_hrdv2._reader import read_lazy

    image = two_texture_image(64)[0].astype(np.uint8)
    channels = np.stack([image, 255 - image, image // 2])
    group = zarr.open_group(str(tmp_path / "cyx.zarr"), mode="w", zarr_format=2)
    axes = [{"name": "c", "type": "channel"}, {"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    group.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": [{"path": "0"}]}]
    group.create_array("0", shape=channels.shape, chunks=(1, 32, 32), dtype="uint8")[:] = channels
    ((data, meta, kind),) = read_lazy(str(tmp_path / "cyx.zarr"))
    assert kind == "image" and meta["channel_axis"] == 0 and meta["name"] == ["cyx c0", "cyx c1", "cyx c2"]
    viewer = make_napari_viewer_proxy()
    layers = viewer.add_image(data, **meta)
    assert [layer.name for layer in layers] == ["cyx c0", "cyx c1", "cyx c2"]
    np.testing.assert_array_equal(np.asarray(layers[1].data), 255 - image)
    group.create_array("1", shape=(1, 64, 64), chunks=(1, 32, 32), dtype="uint8")[:] = image[None]
    group.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": [{"path": "1"}]}]
    ((_, single, _),) = read_lazy(str(tmp_path / "cyx.zarr"))  # one channel: an ordinary grey image
    assert "channel_axis" not in single and single["name"] == "cyx"
