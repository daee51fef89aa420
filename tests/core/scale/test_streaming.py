"""Images larger than memory: lazy inputs, tile-by-tile segmentation equal to the in-memory path, resumable Zarr outputs."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import tifffile
import zarr

import napari_hrdv2 as hr
from conftest import two_texture_image
from napari_hrdv2.core.errors import Cancelled, InputError
from napari_hrdv2.core.features.preprocess import scale_intensities
from napari_hrdv2.core.files.lazy import intensity_range, lazy_planes, open_lazy, zarr_output_info
from napari_hrdv2.core.scale import streaming

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def big_image(size: int, seed: int = 0) -> np.ndarray:
    """A two-texture image tiled up to ``size`` x ``size`` with a gradient, uint8."""
    base, _ = two_texture_image(112, seed)
    reps = -(-size // 112)
    image = np.tile(base, (reps, reps))[:size, :size].astype(np.float32)
    image += np.linspace(0, 40, size, dtype=np.float32)[None, :]
    return np.clip(image, 0, 255).astype(np.uint8)


def strokes(shape: tuple[int, int]) -> np.ndarray:
    labels = np.zeros(shape, dtype=np.uint8)
    labels[10:100, 20:23] = 1
    labels[10:100, 80:83] = 2
    return labels


@pytest.fixture(scope="module")
def tiled(tiny_backbone) -> hr.FeatureConfig:
    """Small tiles so that a small image has many tiles (and overlaps in both directions)."""
    return hr.FeatureConfig(
        backbone=tiny_backbone, device="cpu", shifts="none", tile_size=112, tile_overlap=28, storage_dtype="float32"
    )


@pytest.fixture(scope="module")
def model(tiled) -> hr.LinearSegmenter:
    image = big_image(112)
    return hr.LinearSegmenter().fit(hr.Featurizer(tiled).encode(image, with_attention=False), strokes(image.shape))


def test_region_equals_whole_prediction_cropped(tiled, model):
    image = big_image(300)[:, :260]
    featurizer = hr.Featurizer(tiled)
    encoding = featurizer.encode(image, with_attention=False)
    whole = streaming.segment_region(model, image, featurizer=featurizer, outputs=("labels", "probabilities"))
    np.testing.assert_array_equal(whole["labels"], model.predict(encoding))
    np.testing.assert_array_equal(whole["probabilities"], model.predict_proba(encoding))  # bit-identical
    seen = []
    part = streaming.segment_region(
        model,
        image,
        (50, 170),
        (30, 250),
        featurizer=featurizer,
        outputs=("labels", "uncertainty"),
        progress=seen.append,
    )
    np.testing.assert_array_equal(part["labels"], whole["labels"][50:170, 30:250])
    np.testing.assert_array_equal(part["uncertainty"], model.uncertainty(encoding)[50:170, 30:250])
    # only the tiles touching the region are encoded: 3 of the 4 tile rows (tops 0, 63, 125, 188), 3 columns
    assert seen[-1].total == 9 and seen[-1].done == 9


@pytest.mark.slow
def test_streamed_zarr_equals_in_memory_2048(tmp_path, tiny_backbone, model):
    """A 2048 x 2048 image, Zarr in and Zarr out, with the default tiles: labels equal the in-memory ones."""
    config = hr.FeatureConfig(backbone=tiny_backbone, device="cpu", shifts="none", tile_size=518, tile_overlap=84)
    image = big_image(2048)
    source = zarr.create_array(str(tmp_path / "in.zarr"), shape=image.shape, chunks=(500, 500), dtype="uint8")
    source[:] = image
    featurizer = hr.Featurizer(config)
    expected = model.predict(featurizer.encode(image, with_attention=False))
    out = tmp_path / "in_labels.zarr"
    files = hr.stream_segment(model, tmp_path / "in.zarr", {"labels": out}, featurizer=featurizer, chunk=512)
    assert files == {"labels": out}
    written = zarr.open_group(str(out), mode="r")
    np.testing.assert_array_equal(written["0"][:], expected)
    assert written["0"].dtype == expected.dtype == np.uint8  # labels stay labels, not float32
    assert written.attrs["multiscales"][0]["axes"][-1]["name"] == "x"
    info = zarr_output_info(out)
    assert info["complete"] and info["model_sha256"] == streaming.model_digest(model)
    assert not (tmp_path / "in_labels.zarr.partial").exists()


def test_interrupted_stream_resumes_from_finished_chunks(tmp_path, tiled, model, monkeypatch):
    image = big_image(336)
    featurizer = hr.Featurizer(tiled)
    expected = model.predict(featurizer.encode(image, with_attention=False))
    outputs = {"labels": tmp_path / "a_labels.zarr", "uncertainty": tmp_path / "a_uncertainty.zarr"}
    cancel = threading.Event()

    def stop_after_two_chunk_rows(update):
        if len(list((tmp_path / "a_labels.zarr.partial" / ".hrdv2_state" / "done").glob("*"))) >= 2:
            cancel.set()

    with pytest.raises(Cancelled):
        hr.stream_segment(
            model, image, outputs, featurizer=featurizer, chunk=64, progress=stop_after_two_chunk_rows, cancel=cancel
        )
    assert not outputs["labels"].exists() and zarr_output_info(tmp_path / "a_labels.zarr.partial") is None
    done_before = len(list((tmp_path / "a_labels.zarr.partial" / ".hrdv2_state" / "done").glob("*")))
    assert 2 <= done_before < 6  # 336 rows = 6 chunk rows of 64

    encoded_tiles = []
    original = streaming.TileEncoder.iter_encode

    def counting(self, tile, **kwargs):
        encoded_tiles.append(tile.top)
        return (yield from original(self, tile, **kwargs))

    monkeypatch.setattr(streaming.TileEncoder, "iter_encode", counting)
    hr.stream_segment(model, image, outputs, featurizer=featurizer, chunk=64)
    np.testing.assert_array_equal(zarr.open_group(str(outputs["labels"]))["0"][:], expected)
    assert zarr_output_info(outputs["uncertainty"])["complete"]
    assert min(encoded_tiles) > 0  # the first tile row (top 0) was finished before: not encoded again
    assert not (tmp_path / "a_labels.zarr.partial").exists()


def test_a_band_returns_the_chunk_rows_it_wrote(tmp_path, tiled, model):
    """300 rows in chunks of 32 are 10 chunk rows (9 of 32, one of 12): a band writes only the missing ones, in
    several writes as the tile rows finish, and returns how many it wrote."""
    from napari_hrdv2.core.progress import run_steps

    image = big_image(300)[:, :120]
    featurizer = hr.Featurizer(tiled)
    outputs = {"labels": tmp_path / "b_labels.zarr"}
    job = streaming.StreamJob.create(model, image, outputs, config=featurizer.config, chunk=32).open()
    assert job.n_chunk_rows == 10 and job.missing_rows(0) == list(range(10))
    assert run_steps(job.iter_band(model, featurizer, 0, (2, 5))) == 3
    assert job.missing_rows(0) == [0, 1, 5, 6, 7, 8, 9] and not job.complete()
    assert run_steps(job.iter_band(model, featurizer, 0)) == 7
    assert run_steps(job.iter_band(model, featurizer, 0)) == 0
    assert job.complete()
    job.finish()
    expected = model.predict(featurizer.encode(image, with_attention=False))
    np.testing.assert_array_equal(zarr.open_group(str(outputs["labels"]))["0"][:], expected)


def test_partial_output_of_another_model_is_discarded(tmp_path, tiled, model):
    image = big_image(200)
    out = tmp_path / "b_labels.zarr"
    (tmp_path / "b_labels.zarr.partial" / ".hrdv2_state").mkdir(parents=True)
    (tmp_path / "b_labels.zarr.partial" / ".hrdv2_state" / "job.json").write_text('{"model_sha256": "other"}')
    hr.stream_segment(model, image, {"labels": out}, featurizer=hr.Featurizer(tiled), chunk=64)
    expected = model.predict(hr.Featurizer(tiled).encode(image, with_attention=False))
    np.testing.assert_array_equal(zarr.open_group(str(out))["0"][:], expected)


def test_fit_on_labelled_tiles_only(tiled, model):
    image = big_image(336)
    labels = np.zeros(image.shape, dtype=np.uint8)
    labels[:112] = strokes((112, 336))
    featurizer = hr.Featurizer(tiled)
    in_memory = hr.LinearSegmenter().fit(featurizer.encode(image, with_attention=False), labels)
    encodings, crops = hr.core.scale.streaming.run_steps(streaming.iter_encode_labelled(featurizer, image, labels))
    assert sum(len(e.tiles) for e in encodings) == 2 * 2  # the 2 x 2 tiles covering rows 0..111, cols 0..111
    lazy = hr.fit_lazy(hr.LinearSegmenter(), image, labels, featurizer)
    np.testing.assert_allclose(lazy.coef_, in_memory.coef_, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(lazy.intercept_, in_memory.intercept_, rtol=1e-4, atol=1e-5)


def test_labels_and_image_given_as_files_are_read_lazily(tiled, tmp_path):
    image = big_image(336)
    labels = np.zeros(image.shape, dtype=np.uint8)
    labels[:112] = strokes((112, 336))
    tifffile.imwrite(tmp_path / "image.tif", image, tile=(64, 64))
    tifffile.imwrite(tmp_path / "labels.tif", labels)
    featurizer = hr.Featurizer(tiled)
    _, from_arrays = run_steps_of(streaming.iter_encode_labelled(featurizer, image, labels))
    for label_file in (tmp_path / "labels.tif", str(tmp_path / "labels.tif")):
        _, from_files = run_steps_of(streaming.iter_encode_labelled(featurizer, tmp_path / "image.tif", label_file))
        assert len(from_files) == len(from_arrays)
        assert all(np.array_equal(a, b) for a, b in zip(from_files, from_arrays))


def test_lazy_inputs_tiff_npy_ome_zarr(tmp_path):
    image = big_image(300)[:, :260]
    tifffile.imwrite(tmp_path / "a.tif", image, tile=(64, 64))
    np.save(tmp_path / "a.npy", image)
    group = zarr.open_group(str(tmp_path / "a.ome.zarr"), mode="w", zarr_format=2)
    group.attrs["multiscales"] = [
        {"version": "0.4", "axes": [{"name": n} for n in "tczyx"], "datasets": [{"path": "0"}]}
    ]
    group.create_array("0", shape=(1, 1, 1, *image.shape), chunks=(1, 1, 1, 64, 64), dtype="uint8")[:] = image[
        None, None, None
    ]
    for name in ("a.tif", "a.npy", "a.ome.zarr"):
        planes, stack = lazy_planes(tmp_path / name)
        assert not stack and len(planes) == 1 and planes[0].shape == image.shape
        np.testing.assert_array_equal(planes[0].read(slice(10, 80), slice(200, 260)), image[10:80, 200:260])
    assert isinstance(open_lazy(tmp_path / "a.npy"), np.memmap)
    with pytest.raises(InputError, match="does not exist"):
        open_lazy(tmp_path / "missing.zarr")


@pytest.mark.parametrize("normalize", ["minmax", "percentile", "dtype"])
@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_intensity_range_matches_in_memory(normalize, dtype):
    rng = np.random.default_rng(1)
    image = rng.gamma(2.0, 300.0, size=(333, 77)).astype(dtype)
    if dtype == np.float32 and normalize == "dtype":
        image = image / image.max()
    planes, _ = lazy_planes(image)
    scaling = intensity_range(planes[0], normalize)
    expected = scale_intensities(image, normalize=normalize)
    tolerance = 0 if normalize != "percentile" or dtype != np.float32 else 1e-4
    np.testing.assert_allclose(scaling.apply(image[5:50]), expected[5:50], rtol=0, atol=tolerance)


def test_streaming_refuses_hybrid_models(tiled):
    image = big_image(112)
    hybrid = hr.LinearSegmenter(hybrid=True).fit(hr.Featurizer(tiled).encode(image), strokes(image.shape))
    with pytest.raises(InputError, match="Hybrid"):
        streaming.segment_region(hybrid, image)


def test_segment_files_streams_large_tiffs_to_tiled_bigtiff(tmp_path, tiled, model, monkeypatch):
    """Planes above STREAM_PIXELS are segmented tile by tile; a .tif output is a tiled BigTIFF with the same labels."""
    image = big_image(200)
    tifffile.imwrite(tmp_path / "large.tif", image, tile=(64, 64))
    monkeypatch.setattr(streaming, "STREAM_PIXELS", 100 * 100)
    featurizer = hr.Featurizer(tiled)
    report = hr.segment_files([tmp_path / "large.tif"], tmp_path / "out", model, featurizer, uncertainty=True)
    assert report.ok and [p.name for p in report.written] == ["large_labels.tif"]
    with tifffile.TiffFile(tmp_path / "out" / "large_labels.tif") as handle:
        assert handle.is_bigtiff and handle.pages[0].is_tiled
        labels = handle.asarray()
    encoding = featurizer.encode(image, with_attention=False)
    np.testing.assert_array_equal(labels, model.predict(encoding))
    uncertainty = tifffile.imread(tmp_path / "out" / "large_uncertainty.tif")
    np.testing.assert_array_equal(uncertainty, model.uncertainty(encoding))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["large_labels.tif", "large_uncertainty.tif"]


def test_predict_region_job_on_a_lazy_stack(tmp_path, tiled, model):
    """The napari job behind "Predict current view": plane 1 of a Zarr stack, only the visible rectangle."""
    from napari_hrdv2._workers import predict_region_job
    from napari_hrdv2.core.progress import run_steps

    image = big_image(300)[:, :260]
    stack = zarr.create_array(str(tmp_path / "stack.zarr"), shape=(2, *image.shape), chunks=(1, 64, 64), dtype="uint8")
    stack[1] = image
    result = run_steps(
        predict_region_job(stack, 1, (50, 170), (-10, 120), model, tiled, is_stack=True, uncertainty=True)
    )
    encoding = hr.Featurizer(tiled).encode(image, with_attention=False)
    assert (result.plane, result.top, result.left) == (1, 50, 0)
    np.testing.assert_array_equal(result.labels, model.predict(encoding)[result.rows, result.cols])
    np.testing.assert_array_equal(result.uncertainty, model.uncertainty(encoding)[50:170, 0:120])


def _count_tile_encodes(monkeypatch) -> list[int]:
    """Count the tiles actually encoded (the backbone runs) by ``TileEncoder``; returns the live counter."""
    count = [0]
    original = hr.Featurizer.iter_encode

    def counting(self, *args, **kwargs):
        count[0] += 1
        return (yield from original(self, *args, **kwargs))

    monkeypatch.setattr(hr.Featurizer, "iter_encode", counting)
    return count


def test_views_reuse_cached_tiles_and_scaling(tmp_path, tiled, model, monkeypatch):
    """A second overlapping view (or the same view after retraining) encodes only the tiles not seen before."""
    from napari_hrdv2._workers import predict_region_job
    from napari_hrdv2.core.features.cache import EncodingCache
    from napari_hrdv2.core.files import lazy as lazy_io
    from napari_hrdv2.core.progress import run_steps

    image = big_image(300)[:, :260]
    source = zarr.create_array(str(tmp_path / "in.zarr"), shape=image.shape, chunks=(64, 64), dtype="uint8")
    source[:] = image
    cache = EncodingCache()
    reference = hr.Featurizer(tiled).encode(image, with_attention=False)
    encoded = _count_tile_encodes(monkeypatch)
    scaled = []
    original_range = lazy_io.intensity_range

    def counting_range(*args, **kwargs):
        scaled.append(1)
        return original_range(*args, **kwargs)

    monkeypatch.setattr(lazy_io, "intensity_range", counting_range)

    def view(segmenter, rows, cols):
        return run_steps(predict_region_job(source, 0, rows, cols, segmenter, tiled, is_stack=False, cache=cache))

    first = view(model, (0, 100), (0, 100))  # tiles in rows 0/63 x cols 0/63: 4 tiles
    assert encoded[0] == 4 and len(scaled) == 1
    again = view(model, (0, 100), (0, 100))
    assert encoded[0] == 4 and len(scaled) == 1  # nothing encoded, the scaling not recomputed
    np.testing.assert_array_equal(again.labels, first.labels)
    shifted = view(model, (0, 100), (50, 150))  # tile columns 0, 63, 125: one new column of 2 tiles
    assert encoded[0] == 6
    np.testing.assert_array_equal(shifted.labels, model.predict(reference)[0:100, 50:150])
    retrained = hr.LinearSegmenter(l2=0.1).fit(reference, strokes(image.shape))
    after = view(retrained, (0, 100), (50, 150))  # another model, the same features: no encoding
    assert encoded[0] == 6 and len(scaled) == 1
    np.testing.assert_array_equal(after.labels, retrained.predict(reference)[0:100, 50:150])
    source[:5, :5] = 255  # the tile's pixels are part of the key: a changed image is encoded again
    view(model, (0, 20), (0, 20))
    assert encoded[0] == 7


def test_lazy_training_and_views_share_cached_tiles(tiled, monkeypatch):
    """Tiles encoded for training (placed in their cluster) serve the views and a retrain, with the same results."""
    from napari_hrdv2.core.features.cache import EncodingCache

    image = big_image(300)[:, :260]
    labels = np.zeros(image.shape, dtype=np.uint8)
    labels[130:180, 140:143], labels[130:180, 200:203] = 1, 2  # tiles away from the top-left corner
    featurizer = hr.Featurizer(tiled)
    plain = hr.LinearSegmenter().fit(*run_steps_of(streaming.iter_encode_labelled(featurizer, image, labels)))
    cache = EncodingCache()
    encoded = _count_tile_encodes(monkeypatch)
    cached = hr.LinearSegmenter().fit(
        *run_steps_of(streaming.iter_encode_labelled(featurizer, image, labels, cache=cache))
    )
    trained_tiles = encoded[0]
    assert trained_tiles > 0
    np.testing.assert_array_equal(cached.coef_, plain.coef_)
    again = hr.LinearSegmenter().fit(
        *run_steps_of(streaming.iter_encode_labelled(featurizer, image, labels, cache=cache))
    )
    np.testing.assert_array_equal(again.coef_, plain.coef_)
    view = run_steps_of(
        streaming.iter_segment_region(plain, image, (130, 180), (140, 203), featurizer=featurizer, cache=cache)
    )
    assert encoded[0] == trained_tiles  # the retrain and the view of the scribbled area encoded nothing new
    np.testing.assert_array_equal(
        view["labels"], plain.predict(featurizer.encode(image, with_attention=False))[130:180, 140:203]
    )


def run_steps_of(steps):
    from napari_hrdv2.core.progress import run_steps

    return run_steps(steps)


def test_view_of_an_in_memory_plane_uses_its_cached_encoding(tiled, model, monkeypatch):
    """A plane encoded whole before (Compute / Predict plane) is projected for a view, not encoded tile by tile."""
    from napari_hrdv2._workers import predict_region_job
    from napari_hrdv2.core.features.cache import EncodingCache
    from napari_hrdv2.core.progress import run_steps

    image = big_image(300)[:, :260]
    stack = np.stack([image, image[::-1]])
    cache = EncodingCache()
    featurizer = model.featurizer(**{name: getattr(tiled, name) for name in ("device", "tile_size", "tile_overlap")})
    whole = run_steps(cache.iter_encode(stack[1], featurizer.config))
    encoded = _count_tile_encodes(monkeypatch)
    result = run_steps(
        predict_region_job(stack, 1, (40, 90), (10, 200), model, tiled, is_stack=True, uncertainty=True, cache=cache)
    )
    assert encoded[0] == 0
    np.testing.assert_array_equal(result.labels, model.predict(whole)[40:90, 10:200])
    np.testing.assert_allclose(result.uncertainty, model.uncertainty(whole)[40:90, 10:200], atol=1e-6)
    run_steps(predict_region_job(stack, 0, (40, 90), (10, 200), model, tiled, is_stack=True, cache=cache))
    assert encoded[0] > 0  # plane 0 was never encoded whole: its tiles are


def test_lazy_reader_for_napari(tmp_path):
    from napari_hrdv2._reader import get_reader

    image = big_image(128)
    group = zarr.open_group(str(tmp_path / "pyramid.zarr"), mode="w", zarr_format=2)
    group.attrs["multiscales"] = [{"version": "0.4", "axes": ["y", "x"], "datasets": [{"path": "0"}, {"path": "1"}]}]
    group.create_array("0", shape=image.shape, chunks=(64, 64), dtype="uint8")[:] = image
    group.create_array("1", shape=(64, 64), chunks=(64, 64), dtype="uint8")[:] = image[::2, ::2]
    tifffile.imwrite(tmp_path / "small.tif", image)
    assert get_reader(str(tmp_path / "small.tif")) is None  # napari's own reader
    ((data, meta, kind),) = get_reader(str(tmp_path / "pyramid.zarr"))(str(tmp_path / "pyramid.zarr"))
    assert kind == "image" and meta["multiscale"] and [level.shape for level in data] == [(128, 128), (64, 64)]
    assert isinstance(data[0], zarr.Array)  # read lazily, by napari, one chunk at a time


def test_cli_segment_zarr_folder(tmp_path, tiled, model, capsys):
    """``segment FOLDER --format zarr``: a Zarr input inside the folder is read lazily; OUT/<stem>_labels.zarr."""
    from napari_hrdv2.cli import main

    folder = tmp_path / "in"
    folder.mkdir()
    image_a, image_b = big_image(140), big_image(112, seed=3)
    zarr.create_array(str(folder / "a.zarr"), shape=image_a.shape, chunks=(64, 64), dtype="uint8")[:] = image_a
    tifffile.imwrite(folder / "b.tif", image_b)
    np.save(folder / "features.npy", np.zeros((3, 8, 8), np.float32))  # not an image: left out of folder scans
    path = model.save(tmp_path / "model.hrdv2")
    args = ["segment", str(folder), "--model", str(path), "-o", str(tmp_path / "out"), "--format", "zarr", "-q"]
    assert main(args) == 0, capsys.readouterr().err
    featurizer = hr.Featurizer(tiled)
    for name, image in (("a", image_a), ("b", image_b)):
        written = zarr.open_group(str(tmp_path / "out" / f"{name}_labels.zarr"), mode="r")["0"][:]
        np.testing.assert_array_equal(written, model.predict(featurizer.encode(image, with_attention=False)))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_labels.zarr", "b_labels.zarr"]
    capsys.readouterr()
    assert main([*args[:-1]]) == 0 and "skipped 2 existing" in capsys.readouterr().out


def test_a_zarr_image_named_as_an_input_is_segmented(tmp_path):
    """``segment a.zarr b.tif``: the Zarr image is an input (it was taken for a folder of images and silently left out)."""
    from napari_hrdv2.core.scale.plan import collect_inputs

    zarr.create_array(str(tmp_path / "a.zarr"), shape=(20, 20), chunks=(8, 8), dtype="uint8")
    tifffile.imwrite(tmp_path / "b.tif", np.zeros((20, 20), np.uint8))
    found = collect_inputs([tmp_path / "a.zarr", tmp_path / "b.tif"], tmp_path / "out")
    assert [p.name for p in found] == ["a.zarr", "b.tif"]
    assert [p.name for p in collect_inputs([tmp_path])] == ["a.zarr", "b.tif"]  # a folder: its images and Zarr images


def test_ome_zarr_channels_first_are_read_channels_last(tmp_path):
    """Known answer: an OME-Zarr image with axes (c, y, x) and 3 channels reads as (y, x, c), slices included."""
    rgb = np.random.default_rng(0).integers(0, 255, size=(3, 20, 30), dtype=np.uint8)
    group = zarr.open_group(str(tmp_path / "rgb.ome.zarr"), mode="w", zarr_format=2)
    group.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": n} for n in "cyx"], "datasets": [{"path": "0"}]}]
    group.create_array("0", shape=rgb.shape, chunks=(3, 8, 8), dtype="uint8")[:] = rgb
    view = open_lazy(tmp_path / "rgb.ome.zarr")
    assert view.shape == (20, 30, 3)
    np.testing.assert_array_equal(view[:], np.moveaxis(rgb, 0, -1))
    np.testing.assert_array_equal(view[2:5, 7:9], np.moveaxis(rgb[:, 2:5, 7:9], 0, -1))


# ---------------------------------------------------------------------------------------------- refinement
def refined_copy(model: hr.LinearSegmenter, method: str) -> hr.LinearSegmenter:
    import copy

    from napari_hrdv2.core.segmentation.refine import RefineSettings

    refined = copy.copy(model)
    options = {"iterations": 2, "radius": 3} if method == "crf" else {"radius": 3}
    refined.refine = RefineSettings.create(method, **options)
    return refined


@pytest.mark.parametrize("method", ["crf", "guided"])
def test_refined_regions_equal_the_refined_whole_prediction(tiled, model, method):
    """Regions and row bands are refined with the halo and cropped: equal to refining the whole image."""
    refined = refined_copy(model, method)
    image = big_image(260)[:, :230]
    featurizer = hr.Featurizer(tiled)
    encoding = featurizer.encode(image, with_attention=False)
    expected = refined.outputs(encoding, ("labels", "probabilities", "uncertainty"))
    assert not np.array_equal(expected["labels"], model.predict(encoding))  # the refinement changes something
    whole = streaming.segment_region(
        refined, image, featurizer=featurizer, outputs=("labels", "probabilities", "uncertainty")
    )
    np.testing.assert_array_equal(whole["labels"], expected["labels"])
    np.testing.assert_allclose(whole["probabilities"], expected["probabilities"], atol=1e-5)
    np.testing.assert_allclose(whole["uncertainty"], expected["uncertainty"], atol=1e-5)
    part = streaming.segment_region(refined, image, (37, 151), (60, 200), featurizer=featurizer)
    np.testing.assert_array_equal(part["labels"], expected["labels"][37:151, 60:200])
    cached = streaming.refined_outputs_of_encoding(refined, encoding, (37, 151), (60, 200), ("labels",))
    np.testing.assert_array_equal(cached["labels"], expected["labels"][37:151, 60:200])


def test_refined_stream_segment_equals_in_memory(tmp_path, tiled, model):
    refined = refined_copy(model, "crf")
    image = big_image(200)
    out = tmp_path / "r_labels.zarr"
    unc = tmp_path / "r_unc.zarr"
    hr.stream_segment(refined, image, {"labels": out, "uncertainty": unc}, featurizer=hr.Featurizer(tiled), chunk=48)
    encoding = hr.Featurizer(tiled).encode(image, with_attention=False)
    np.testing.assert_array_equal(zarr.open_group(str(out))["0"][:], refined.predict(encoding))
    np.testing.assert_allclose(zarr.open_group(str(unc))["0"][:], refined.uncertainty(encoding), atol=1e-5)
    assert streaming.model_digest(refined) != streaming.model_digest(model)
