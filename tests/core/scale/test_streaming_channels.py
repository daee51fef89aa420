"""``channel_mode="separate"`` tile by tile: per-channel whole-image scaling, regions equal the in-memory prediction."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr

import napari_hrdv2 as hr
from channel_images import five_channel_image, strokes
from napari_hrdv2.core.features.preprocess import scale_channels
from napari_hrdv2.core.files.images import read_image
from napari_hrdv2.core.files.lazy import channel_ranges, lazy_planes
from napari_hrdv2.core.scale import streaming

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def tiled(tiny_backbone) -> hr.FeatureConfig:
    return hr.FeatureConfig(
        backbone=tiny_backbone, device="cpu", shifts="none", tile_size=112, tile_overlap=28, storage_dtype="float32",
        dtype="float32", channel_mode="separate",
    )  # fmt: skip


def three_channel_image(height: int = 230, width: int = 200) -> np.ndarray:
    image, _ = five_channel_image(max(height, width))
    return np.ascontiguousarray(image[:height, :width, 2:])  # channels 2, 3, 4 (the classes are in the last)


@pytest.mark.parametrize("normalize", ["minmax", "percentile"])
def test_channel_ranges_equal_in_memory_scaling(normalize):
    image = three_channel_image()
    image[..., 1] //= 7  # other ranges per channel
    ranges = channel_ranges(image, normalize)
    assert len(ranges.ranges) == 3
    np.testing.assert_array_equal(
        ranges.apply(image[40:90, 10:70]), scale_channels(image, normalize=normalize)[40:90, 10:70]
    )


def test_region_equals_in_memory_prediction(tiled):
    image = three_channel_image()
    featurizer = hr.Featurizer(tiled)
    encoding = featurizer.encode(image, with_attention=False)
    assert len(encoding.blocks[0].tiles) > 1  # several tiles, overlapping
    labels = np.zeros(image.shape[:2], dtype=np.uint8)
    labels[:112, :112] = strokes(np.zeros((112, 112)))
    model = hr.LinearSegmenter().fit(encoding, labels)
    whole = streaming.segment_region(model, image, featurizer=featurizer, outputs=("labels", "probabilities"))
    np.testing.assert_array_equal(whole["labels"], model.predict(encoding))
    np.testing.assert_allclose(whole["probabilities"], model.predict_proba(encoding), atol=1e-5)
    part = streaming.segment_region(model, image, (50, 170), (30, 190), featurizer=featurizer)
    np.testing.assert_array_equal(part["labels"], whole["labels"][50:170, 30:190])
    lazy = hr.fit_lazy(hr.LinearSegmenter(), image, labels, featurizer)
    np.testing.assert_allclose(lazy.coef_, model.coef_, rtol=1e-3, atol=1e-4)


def test_multichannel_files_keep_every_channel(tmp_path):
    image = three_channel_image()
    five = np.concatenate([image, image[..., :2]], axis=-1)  # (H, W, 5)
    tifffile.imwrite(tmp_path / "a.ome.tif", np.moveaxis(five, -1, 0), ome=True, metadata={"axes": "CYX"})
    np.save(tmp_path / "a.npy", five)
    group = zarr.open_group(str(tmp_path / "a.ome.zarr"), mode="w", zarr_format=2)
    group.attrs["multiscales"] = [
        {"version": "0.4", "axes": [{"name": n} for n in "czyx"], "datasets": [{"path": "0"}]}
    ]
    group.create_array("0", shape=(5, 1, *image.shape[:2]), chunks=(1, 1, 64, 64), dtype=five.dtype)[:] = np.moveaxis(
        five, -1, 0
    )[:, None]
    np.testing.assert_array_equal(read_image(tmp_path / "a.ome.tif", separate=True), five)
    np.testing.assert_array_equal(read_image(tmp_path / "a.ome.tif", channels="4,0", separate=True), five[..., [4, 0]])
    for name in ("a.ome.tif", "a.npy", "a.ome.zarr"):
        planes, stack = lazy_planes(tmp_path / name, separate=True)
        assert not stack and planes[0].shape == five.shape, name
        np.testing.assert_array_equal(planes[0].read(slice(10, 80), slice(20, 90)), five[10:80, 20:90])
        planes, _ = lazy_planes(tmp_path / name, (3, 1), separate=True)
        np.testing.assert_array_equal(planes[0].read(slice(10, 80), slice(20, 90)), five[10:80, 20:90][..., [3, 1]])
    with pytest.raises(hr.InputError, match="channel-mode separate"):
        read_image(tmp_path / "a.ome.tif")


@pytest.mark.parametrize("refine", ["guided", "crf"])
def test_refined_region_of_four_channels_equals_in_memory(tiled, refine):
    """Refinement of separate channels is guided by every channel scaled on its own, whole or tile by tile."""
    image, _ = five_channel_image(200)
    image = np.ascontiguousarray(image[..., 1:])  # 4 channels: none of them is alpha in separate mode
    featurizer = hr.Featurizer(tiled)
    encoding = featurizer.encode(image, with_attention=False)
    labels = np.zeros(image.shape[:2], dtype=np.uint8)
    labels[:112, :112] = strokes(np.zeros((112, 112)))
    model = hr.LinearSegmenter(refine=refine).fit(encoding, labels)
    guide = model.guide(encoding)
    assert guide.shape == (*image.shape[:2], 4)
    np.testing.assert_array_equal(guide, scale_channels(image))
    whole = streaming.segment_region(model, image, featurizer=featurizer, outputs=("labels", "probabilities"))
    np.testing.assert_array_equal(whole["labels"], model.predict(encoding))
    np.testing.assert_allclose(whole["probabilities"], model.predict_proba(encoding), atol=1e-4)
