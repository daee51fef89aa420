"""Tile-by-tile segmentation on images wider than one tile and of odd sizes: defaults of regions and streamed
jobs, every output kind against the in-memory path, the job description, and the messages of refusals."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import tifffile
import zarr

import napari_hrdv2 as hr
from conftest import two_texture_image
from napari_hrdv2.core.errors import InputError
from napari_hrdv2.core.scale import streaming
from napari_hrdv2.core.scale.streaming import (
    DEFAULT_CHUNK,
    OUTPUT_KINDS,
    STREAM_PIXELS,
    StreamJob,
    fit_lazy,
    iter_encode_labelled,
    model_digest,
    outputs_of_logits,
    plane_shape,
    segment_region,
    stream_segment,
    streamed_file,
)
from napari_hrdv2.core.segmentation.segmenter import normalized_entropy

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def message(call, *args, **kwargs) -> str:
    with pytest.raises(InputError) as caught:
        call(*args, **kwargs)
    return str(caught.value)


@pytest.fixture(scope="module")
def setup(tiny_backbone):
    """Tiles of 56 px (overlap 14) and an odd 61 x 103 image: several tiles in both directions."""
    config = hr.FeatureConfig(
        backbone=tiny_backbone, device="cpu", shifts="none", tile_size=56, tile_overlap=14, dtype="float32",
        storage_dtype="float32",
    )  # fmt: skip
    base, _ = two_texture_image(112)
    image = np.ascontiguousarray(base[:61, :103])
    labels = np.zeros(image.shape, np.uint8)
    labels[5:50, 10:13] = 1
    labels[5:50, 90:93] = 2
    featurizer = hr.Featurizer(config)
    model = hr.LinearSegmenter().fit(featurizer.encode(image, with_attention=False), labels)
    whole = model.outputs(featurizer.encode(image, with_attention=False), OUTPUT_KINDS)
    return config, featurizer, image, labels, model, whole


def test_constants():
    assert DEFAULT_CHUNK == 1024 and OUTPUT_KINDS == ("labels", "probabilities", "uncertainty")
    assert STREAM_PIXELS == 2**25


def test_a_region_defaults_to_the_whole_image_and_clips_to_it(setup):
    config, featurizer, image, _, model, whole = setup
    tiles = [(t.top, t.left, t.height, t.width) for t in featurizer.plan_tiles(61, 103)]
    assert tiles == [
        (0, 0, 42, 56),
        (0, 28, 42, 56),
        (0, 47, 42, 56),
        (19, 0, 42, 56),
        (19, 28, 42, 56),
        (19, 47, 42, 56),
    ]
    everything = segment_region(model, image, featurizer=featurizer, outputs=OUTPUT_KINDS)
    np.testing.assert_array_equal(everything["labels"], whole["labels"])
    assert everything["probabilities"].shape == (2, 61, 103) and everything["uncertainty"].dtype == np.float32
    np.testing.assert_allclose(everything["probabilities"], whole["probabilities"], atol=1e-5)
    np.testing.assert_allclose(everything["uncertainty"], whole["uncertainty"], atol=1e-5)
    only_labels = segment_region(model, image, (-5, 20), (90, 500), featurizer=config)  # default: labels only
    assert list(only_labels) == ["labels"]
    np.testing.assert_array_equal(only_labels["labels"], whole["labels"][:20, 90:])
    assert message(segment_region, model, image, (61, 70), featurizer=featurizer) == (
        "The region rows (61, 70), cols None lies outside the 61x103 image."
    )
    assert message(segment_region, model, image, None, (5, 5), featurizer=featurizer) == (
        "The region rows None, cols (5, 5) lies outside the 61x103 image."
    )
    assert message(segment_region, model, image, outputs=("labels", "edges"), featurizer=featurizer) == (
        "outputs must be some of ('labels', 'probabilities', 'uncertainty'), got ('labels', 'edges')."
    )
    assert "got ()" in message(segment_region, model, image, outputs=(), featurizer=featurizer)


def test_outputs_of_logits_are_the_models_labels_softmax_and_entropy():
    model = hr.LinearSegmenter()
    model.classes_ = np.array([2, 7])
    logits = np.array([[[0.0, 3.0]], [[1.0, 3.0]]], np.float32)
    out = outputs_of_logits(model, logits.copy(), OUTPUT_KINDS)
    np.testing.assert_array_equal(out["labels"], [[7, 2]])  # a tie goes to the first class
    assert out["labels"].dtype == np.uint8
    e = np.exp(1.0)
    np.testing.assert_allclose(out["probabilities"][:, 0, 0], [1 / (1 + e), e / (1 + e)], rtol=1e-6)
    np.testing.assert_allclose(out["probabilities"][:, 0, 1], [0.5, 0.5])
    np.testing.assert_allclose(out["uncertainty"], normalized_entropy(out["probabilities"]))
    assert out["uncertainty"][0, 1] == pytest.approx(1.0)
    assert list(outputs_of_logits(model, logits.copy(), ["uncertainty"])) == ["uncertainty"]


def test_model_digest_is_a_stable_sha256_of_what_the_model_computes(setup, tmp_path):
    model = setup[4]
    digest = model_digest(model)
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert model_digest(hr.LinearSegmenter.load(model.save(tmp_path / "m.hrdv2"))) == digest
    changed = copy.deepcopy(model)
    changed.intercept_ = changed.intercept_ + 1
    assert model_digest(changed) != digest
    other_params = copy.deepcopy(model)
    other_params.l2 = 0.5
    assert model_digest(other_params) != digest
    with pytest.raises(Exception, match="(?i)fit|train"):
        model_digest(hr.LinearSegmenter())


def test_models_that_need_the_whole_image_are_refused_tile_by_tile(setup):
    config, featurizer, image, labels, model, _ = setup
    cleaning = copy.deepcopy(model)
    cleaning.majority_size = 3
    assert message(segment_region, cleaning, image, featurizer=featurizer) == (
        "This model cleans its predictions up (majority_size / min_object_size), which needs the whole label image; "
        "images segmented tile by tile need a model without clean-up."
    )
    cleaning.majority_size, cleaning.min_object_size = 0, 4
    assert "cleans its predictions up" in message(segment_region, cleaning, image, featurizer=featurizer)
    hybrid = copy.deepcopy(model)
    hybrid.hybrid = True
    assert message(segment_region, hybrid, image, featurizer=featurizer) == (
        "Hybrid models (classical filters) cannot segment images tile by tile yet; segment this image in memory or "
        "use a model trained without --hybrid."
    )
    assert message(fit_lazy, hr.LinearSegmenter(hybrid=True), image, labels, config) == (
        "Hybrid models need the whole image in memory; train them with LinearSegmenter.fit."
    )


def test_stream_job_describes_the_input_model_and_chunks(setup, tmp_path):
    config, featurizer, image, _, model, _ = setup
    job = StreamJob.create(model, image, {"labels": tmp_path / "l.zarr"}, config=config, chunk=25)
    assert job.shape == (1, 61, 103) and job.single and job.n_classes == 2 and job.label_dtype == "uint8"
    assert job.chunk == 25 and job.n_chunk_rows == 3 and job.channels is None
    assert job.job == {
        "model_sha256": model_digest(model),
        "source": "array",
        "source_shape": [1, 61, 103],
        "config": config.to_dict(),
        "classes": [1, 2],
    }
    assert job.bands(2) == [(0, 0, 2), (0, 2, 3)] and job.bands(5) == [(0, 0, 3)]
    assert StreamJob.create(model, image, {"labels": tmp_path / "l.zarr"}, config=config).chunk == 1024
    job.open()
    assert job.missing_rows(0) == [0, 1, 2] and not job.complete()
    assert message(job.finish) == "Some chunks are not written yet; run the missing bands first."
    from napari_hrdv2.core.progress import run_steps

    assert run_steps(job.iter_band(model, featurizer, 0, (1, 2))) == 1
    assert job.missing_rows(0) == [0, 2]
    assert run_steps(job.iter_band(model, featurizer, 0, (1, 2))) == 0  # nothing left there
    assert run_steps(job.iter_band(model, featurizer)) == 2
    assert job.complete()
    path = job.finish()["labels"]
    np.testing.assert_array_equal(zarr.open_group(str(path), mode="r")["0"][:], setup[5]["labels"])
    assert message(StreamJob.create, model, image, {"labels": tmp_path / "l.tif"}, config=config) == (
        "Streamed labels are written as Zarr: 'l.tif' must end with .zarr."
    )
    named = StreamJob.create(model, image, {"labels": tmp_path / "n.zarr"}, config=config, source_id="mine")
    assert named.job["source"] == "mine"


def test_stream_segment_of_a_stack_writes_every_kind_like_the_whole_prediction(setup, tmp_path):
    _, featurizer, image, _, model, whole = setup
    stack = np.stack([image, image[::-1].copy()])
    outputs = {kind: tmp_path / f"{kind}.zarr" for kind in OUTPUT_KINDS}
    seen = []
    paths = stream_segment(model, stack, outputs, featurizer=featurizer, chunk=32, progress=seen.append)
    assert paths == outputs and seen and seen[-1].fraction == pytest.approx(1.0)
    labels = zarr.open_group(str(paths["labels"]), mode="r")["0"][:]
    probabilities = zarr.open_group(str(paths["probabilities"]), mode="r")["0"][:]
    uncertainty = zarr.open_group(str(paths["uncertainty"]), mode="r")["0"][:]
    assert labels.shape == (2, 61, 103) and probabilities.shape == (2, 2, 61, 103) and uncertainty.shape == (2, 61, 103)
    np.testing.assert_array_equal(labels[0], whole["labels"])
    np.testing.assert_allclose(probabilities[0], whole["probabilities"], atol=1e-5)
    np.testing.assert_allclose(uncertainty[0], whole["uncertainty"], atol=1e-5)
    flipped = model.predict(featurizer.encode(stack[1], with_attention=False))
    np.testing.assert_array_equal(labels[1], flipped)


def test_files_streamed_to_tif_and_their_shapes(setup, tmp_path):
    config, featurizer, image, _, model, whole = setup
    tifffile.imwrite(tmp_path / "s.tif", np.stack([image, image, image]))
    assert plane_shape(tmp_path / "s.tif") == (3, (61, 103))
    tifffile.imwrite(tmp_path / "one.tif", image)
    assert plane_shape(tmp_path / "one.tif") == (1, (61, 103))
    streamed = streamed_file(tmp_path / "one.tif", tmp_path / "one_labels.tif", tmp_path / "one_u.zarr")
    assert streamed.finals == {"labels": tmp_path / "one_labels.tif", "uncertainty": tmp_path / "one_u.zarr"}
    assert streamed.zarr_outputs == {
        "labels": tmp_path / ".one_labels.tif.zarr",
        "uncertainty": tmp_path / "one_u.zarr",
    }
    assert streamed_file(tmp_path / "one.tif", tmp_path / "x.tif").finals == {"labels": tmp_path / "x.tif"}
    from napari_hrdv2.core.progress import run_steps

    files = run_steps(streamed.iter_run(model, featurizer, chunk=32))
    np.testing.assert_array_equal(tifffile.imread(files["labels"]), whole["labels"])
    assert not (tmp_path / ".one_labels.tif.zarr").exists()
    assert message(streamed_file, tmp_path / "one.tif", tmp_path / "l.png") == (
        "'one.tif' is segmented tile by tile, so its labels are written as .zarr or tiled .tif, not '.png': use "
        "--format zarr or tif."
    )


def test_labelled_tiles_only_are_encoded_and_clusters_group_overlapping_tiles(setup):
    config, featurizer, image, labels, model, _ = setup
    from napari_hrdv2.core.progress import run_steps

    corner = np.zeros_like(labels)
    corner[2:6, 2:4] = 1
    corner[2:6, 5:7] = 2
    encodings, crops = run_steps(iter_encode_labelled(featurizer, image, corner))
    assert len(encodings) == 1 and crops[0].shape == encodings[0].shape == (42, 56)  # the first tile only
    np.testing.assert_array_equal(crops[0], corner[:42, :56])
    whole_encoding = featurizer.encode(image, with_attention=False)
    np.testing.assert_allclose(encodings[0].sample([3, 4], [2, 6]), whole_encoding.sample([3, 4], [2, 6]), atol=1e-5)
    assert message(run_steps, iter_encode_labelled(featurizer, image, labels[:10])) == (
        "The labels have shape (10, 103) but the image is (61, 103)."
    )
    assert message(run_steps, iter_encode_labelled(featurizer, image, np.zeros_like(labels))) == (
        "No pixels are labelled: paint a few strokes of at least two classes (0 = unlabelled)."
    )
    ones = np.ones(10, np.float32)
    tiles = [streaming.Tile(top, left, 10, 10, ones, ones) for top, left in ((0, 0), (0, 5), (50, 50), (0, 20))]
    clusters = streaming._tile_clusters(tiles)
    assert [[(t.top, t.left) for t in c] for c in clusters] == [[(0, 0), (0, 5)], [(50, 50)], [(0, 20)]]
    fitted = fit_lazy(hr.LinearSegmenter(), image, labels, config)
    np.testing.assert_allclose(fitted.coef_, model.coef_, atol=1e-4)
