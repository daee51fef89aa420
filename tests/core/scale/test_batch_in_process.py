"""Batch segmentation in this process (segment_files / iter_segment_files): outputs equal the model's own
prediction, stacks and uncertainty maps, progress texts, skips and failures, volumes, and the refusals of options."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

import napari_hrdv2 as hr
from conftest import two_texture_image
from napari_hrdv2.core.errors import InputError
from napari_hrdv2.core.scale.batch import segment_files
from napari_hrdv2.core.scale.in_process import as_featurizer, iter_segment_files


@pytest.fixture(scope="module")
def trained(tiny_backbone):
    config = hr.FeatureConfig(backbone=tiny_backbone, device="cpu", shifts="none", tile_size=None, dtype="float32")
    featurizer = hr.Featurizer(config)
    image, truth = two_texture_image(56)
    labels = np.zeros_like(truth)
    labels[5:-5, 8:11] = 1
    labels[5:-5, 44:47] = 2
    model = hr.LinearSegmenter().fit(featurizer.encode(image, with_attention=False), labels)
    return config, featurizer, model


def run(steps):
    seen = []
    try:
        while True:
            seen.append(next(steps))
    except StopIteration as stop:
        return seen, stop.value


def test_as_featurizer_keeps_a_featurizer_and_wraps_a_config(trained):
    config, featurizer, _ = trained
    assert as_featurizer(featurizer) is featurizer
    made = as_featurizer(config)
    assert isinstance(made, hr.Featurizer) and made.config == config


def test_images_and_stacks_give_the_models_labels_and_uncertainty(tmp_path, trained):
    config, featurizer, model = trained
    image, _ = two_texture_image(42, seed=3)
    tifffile.imwrite(tmp_path / "a.tif", image)
    tifffile.imwrite(tmp_path / "b.tif", np.stack([image, image[:, ::-1]]))
    (tmp_path / "c.tif").write_bytes(b"not a tiff")
    seen, report = run(iter_segment_files([tmp_path], tmp_path / "out", model, featurizer, uncertainty=True))
    assert [p.name for p in report.written] == ["a_labels.tif", "b_labels.tif"]
    assert [p.name for p in report.extra] == ["a_uncertainty.tif", "b_uncertainty.tif"]
    assert [p.name for p, _ in report.failed] == ["c.tif"] and not report.skipped
    expected = model.predict(featurizer.encode(image, with_attention=False))
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / "a_labels.tif"), expected)
    stack = tifffile.imread(tmp_path / "out" / "b_labels.tif")
    assert stack.shape == (2, 42, 42)
    np.testing.assert_array_equal(stack[0], expected)
    np.testing.assert_array_equal(stack[1], model.predict(featurizer.encode(image[:, ::-1].copy())))
    uncertainty = tifffile.imread(tmp_path / "out" / "b_uncertainty.tif")
    assert uncertainty.shape == (2, 42, 42) and uncertainty.dtype == np.float32
    assert uncertainty.min() >= 0.0 and uncertainty.max() <= 1.0
    messages = [p.message for p in seen]
    assert messages[0] == "a.tif (1/3)" and messages[1] == "Loading the backbone"
    assert "b.tif (2/3), plane 2/2" in messages and "c.tif (3/3)" in messages
    assert messages.count("Loading the backbone") == 1
    assert (seen[-1].done, seen[-1].total) == (3, 3)
    assert seen[-1].message == report.summary() and report.summary().startswith(
        "Wrote 2 label image(s), 1 failed (c.tif"
    )

    # a second run skips what exists (all outputs), the backbone is not even needed
    seen, again = run(iter_segment_files([tmp_path / "a.tif"], tmp_path / "out", model, featurizer))
    assert [p.name for p in again.skipped] == ["a_labels.tif"] and not again.written
    assert "Loading the backbone" not in [p.message for p in seen]
    assert seen[-1].message == "Wrote 0 label image(s), skipped 1 existing (pass overwrite=True to replace them)."


def test_segment_files_defaults_next_to_the_input_as_tif_and_reports_progress(tmp_path, trained):
    config, _, model = trained
    image, _ = two_texture_image(28)
    tifffile.imwrite(tmp_path / "x.tif", image)
    seen = []
    report = segment_files([tmp_path / "x.tif"], None, model, config, progress=seen.append)  # a config is enough
    assert report.written == [tmp_path / "x_labels.tif"] and not report.extra
    assert seen[0].message == "x.tif (1/1)" and seen[-1].message == "Wrote 1 label image(s)."
    png = segment_files([tmp_path / "x.tif"], tmp_path / "png", model, config, suffix=".png")
    assert [p.name for p in png.written] == ["x_labels.png"]
    again = segment_files([tmp_path / "x.tif"], None, model, config, overwrite=True)
    assert again.written == [tmp_path / "x_labels.tif"] and not again.skipped


def test_options_that_need_a_dask_client_or_a_single_process_are_refused(tmp_path, trained):
    config, _, model = trained
    with pytest.raises(
        InputError, match=r"^\['model_path', 'retries'\] only apply with a dask client \(client=...\).$"
    ):
        segment_files([tmp_path], None, model, config, retries=2, model_path="m")
    with pytest.raises(InputError, match=r"Volumes \(volume=True\) are segmented in this process; run without a dask"):
        segment_files([tmp_path], None, model, config.replace(volume=True), client=object())


def test_a_volume_is_segmented_with_volume_features_like_predict_stack(tmp_path, trained):
    config = trained[0].replace(volume=True)
    rng = np.random.default_rng(0)
    volume = (rng.random((14, 14, 28)) * 255).astype(np.uint8)
    volume[:, :, 14:] //= 4  # a dark right half
    labels = np.zeros(volume.shape, np.uint8)
    labels[5, 2:-2, 3:6] = 1
    labels[5, 2:-2, 20:23] = 2
    model = hr.fit_stack(hr.LinearSegmenter(), volume, labels, config)
    tifffile.imwrite(tmp_path / "v.tif", volume)
    seen = []
    report = segment_files(
        [tmp_path / "v.tif"], tmp_path / "out", model, config, uncertainty=True, progress=seen.append
    )
    assert report.ok and [p.name for p in report.written] == ["v_labels.tif"], report.summary()
    written = tifffile.imread(tmp_path / "out" / "v_labels.tif")
    assert written.shape == (14, 14, 28)
    np.testing.assert_array_equal(written, hr.predict_stack(model, volume, config=config))
    assert tifffile.imread(tmp_path / "out" / "v_uncertainty.tif").shape == (14, 14, 28)
    assert any(p.message == "v.tif (1/1)" for p in seen)
