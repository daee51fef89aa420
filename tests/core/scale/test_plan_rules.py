"""Batch planning: which files are inputs, room estimates to the byte, per-file failure texts, where each input's
outputs go (single plane, stack, streamed, skipped) and the refusals made before any pixel is read."""

from __future__ import annotations

import types

import numpy as np
import pytest
import tifffile
from PIL import Image

import napari_hrdv2 as hr
from napari_hrdv2.core.errors import InputError, ModelFileError, OutputError
from napari_hrdv2.core.scale import plan as plan_module
from napari_hrdv2.core.scale.plan import (
    INPUT_KINDS,
    LABELS_COMPRESSED_FRACTION,
    UNCERTAINTY_COMPRESSED_FRACTION,
    BatchPlan,
    candidate_outputs,
    collect_inputs,
    estimate_output_bytes,
    image_pixels,
    max_label,
    per_file_reason,
    plan_batch,
)


def message(call, *args, **kwargs) -> str:
    with pytest.raises(InputError) as caught:
        call(*args, **kwargs)
    return str(caught.value)


def test_collect_inputs_leaves_out_outputs_other_files_and_folder_npy(tmp_path):
    for name in ("a.tif", "a_labels.tif", "a_uncertainty.tif", "b.png", "b_labels.zarr.txt", "c.npy", "n.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "d.zarr").mkdir()
    (tmp_path / "a_labels.zarr").mkdir()
    names = [p.name for p in collect_inputs([tmp_path])]
    assert names == ["a.tif", "b.png", "d.zarr"]
    elsewhere = [p.name for p in collect_inputs([tmp_path], tmp_path / "out")]
    assert "a_labels.tif" in elsewhere  # outputs go elsewhere: a file of that name is an input
    assert [p.name for p in collect_inputs([tmp_path / "c.npy", tmp_path / "d.zarr"])] == ["c.npy", "d.zarr"]
    assert [p.name for p in collect_inputs([tmp_path], suffix="png")] == ["a.tif", "b.png", "d.zarr"]
    assert INPUT_KINDS[-2:] == (".zarr", ".npy") and ".tif" in INPUT_KINDS


def test_max_label_and_image_pixels_from_headers(tmp_path):
    assert max_label(types.SimpleNamespace(classes_=None)) == 255
    assert max_label(types.SimpleNamespace(classes_=np.array([], int))) == 255
    assert max_label(types.SimpleNamespace(classes_=np.array([1, 300, 2]))) == 300
    tifffile.imwrite(tmp_path / "s.tif", np.zeros((3, 10, 20), np.uint8))
    Image.fromarray(np.zeros((10, 20), np.uint8)).save(tmp_path / "p.png")
    (tmp_path / "junk.png").write_bytes(b"junk")
    np.save(tmp_path / "a.npy", np.zeros((7, 9), np.float32))
    assert image_pixels(tmp_path / "s.tif") == 600
    assert image_pixels(tmp_path / "p.png") == 200
    assert image_pixels(tmp_path / "a.npy") == 63
    assert image_pixels(tmp_path / "junk.png") is None and image_pixels(tmp_path / "gone.tif") is None


def test_estimated_bytes_per_folder_by_dtype_uncertainty_and_kept_outputs(tmp_path):
    assert LABELS_COMPRESSED_FRACTION == 1 / 256 and UNCERTAINTY_COMPRESSED_FRACTION == 1 / 2
    tifffile.imwrite(tmp_path / "s.tif", np.zeros((2, 256, 256), np.uint8))  # 131072 pixels
    paths = [tmp_path / "s.tif", tmp_path / "gone.tif"]
    out = tmp_path / "out"
    assert estimate_output_bytes(paths, out) == {out: 512}
    assert estimate_output_bytes(paths, out, max_label=300) == {out: 1024}
    assert estimate_output_bytes(paths, out, uncertainty=True) == {out: 512 + 262144}
    assert estimate_output_bytes(paths, None) == {tmp_path: 512}
    out.mkdir()
    (out / "s_labels.tif").write_bytes(b"")
    assert estimate_output_bytes(paths, out) == {}
    assert estimate_output_bytes(paths, out, overwrite=True) == {out: 512}
    assert estimate_output_bytes(paths, out, ".zarr", uncertainty=True) == {out: 512 + 262144}


def test_per_file_reasons_and_errors_that_stop_the_batch():
    assert per_file_reason(InputError("bad shape")) == "bad shape"
    assert per_file_reason(OSError("disk")) == "OSError: disk"
    assert per_file_reason(ValueError("v")) == "ValueError: v"
    assert per_file_reason(RuntimeError("r")) == "RuntimeError: r"
    assert per_file_reason(MemoryError("m")) == "MemoryError: m"
    assert per_file_reason(KeyError("x")) == (
        "unexpected KeyError while reading or segmenting it: 'x' (the file may be damaged)"
    )
    assert per_file_reason(TypeError()) == (
        "unexpected TypeError while reading or segmenting it: no message (the file may be damaged)"
    )
    long = per_file_reason(TypeError("a  b\n" + "c" * 400))  # white space squeezed, cut at 300 characters
    assert long == f"unexpected TypeError while reading or segmenting it: a b {'c' * 296} (the file may be damaged)"
    for stop in (OutputError("full"), ModelFileError("m"), hr.Cancelled()):
        with pytest.raises(type(stop)):
            per_file_reason(stop)


def test_candidate_outputs_and_plan_outputs(tmp_path):
    source = tmp_path / "x.png"
    assert candidate_outputs(source, None, ".png", False) == [tmp_path / "x_labels.png", tmp_path / "x_labels.tif"]
    assert candidate_outputs(source, tmp_path / "o", ".tif", True) == [
        tmp_path / "o" / "x_labels.tif",
        tmp_path / "o" / "x_labels.tif",
        tmp_path / "o" / "x_uncertainty.tif",
    ]
    plan = BatchPlan((source,), None, ".png", None, False, True)
    assert plan.separate is False
    assert plan.output(source) == tmp_path / "x_labels.png"
    assert plan.output(source, ".tif", "_uncertainty") == tmp_path / "x_uncertainty.tif"
    assert plan.candidate_outputs(source)[-1] == tmp_path / "x_uncertainty.tif"


def test_prepare_reads_single_planes_and_stacks_and_skips_what_exists(tmp_path, monkeypatch):
    image = (np.arange(20 * 30) % 251).astype(np.uint8).reshape(20, 30)
    Image.fromarray(image).save(tmp_path / "p.png")
    tifffile.imwrite(tmp_path / "s.tif", np.stack([image, image]))
    plan = BatchPlan((tmp_path / "p.png", tmp_path / "s.tif"), tmp_path / "o", ".png", None, False, True)
    single = plan.prepare(tmp_path / "p.png")
    assert single.target == tmp_path / "o" / "p_labels.png" and single.single and not single.skip
    assert single.extra == tmp_path / "o" / "p_uncertainty.tif" and single.streamed is None
    np.testing.assert_array_equal(single.planes[0], image)
    stack = plan.prepare(tmp_path / "s.tif")
    assert stack.target == tmp_path / "o" / "s_labels.tif" and not stack.single and stack.planes.shape == (2, 20, 30)
    assert message(plan.prepare, tmp_path / "gone.png") == f"'{tmp_path / 'gone.png'}' does not exist or is not a file."
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "s_labels.tif").write_bytes(b"")
    assert not plan.prepare(tmp_path / "s.tif").skip  # its uncertainty map is still missing
    (tmp_path / "o" / "s_uncertainty.tif").write_bytes(b"")
    assert plan.prepare(tmp_path / "s.tif").skip
    tif_plan = BatchPlan((tmp_path / "s.tif",), tmp_path / "o", ".tif", None, False, False)
    skipped = tif_plan.prepare(tmp_path / "s.tif")
    assert skipped.skip and skipped.planes is None  # known from the names, the image is not read
    assert (
        not BatchPlan((tmp_path / "s.tif",), tmp_path / "o", ".tif", None, True, False).prepare(tmp_path / "s.tif").skip
    )


def test_large_or_zarr_outputs_are_streamed_and_png_is_refused_for_them(tmp_path, monkeypatch):
    image = np.zeros((20, 30), np.uint8)
    tifffile.imwrite(tmp_path / "s.tif", image)
    Image.fromarray(image).save(tmp_path / "p.png")
    zarr_plan = BatchPlan((tmp_path / "s.tif",), tmp_path / "o", ".zarr", None, False, True)
    job = zarr_plan.prepare(tmp_path / "s.tif")
    assert job.streamed is not None and job.planes is None and job.target == tmp_path / "o" / "s_labels.zarr"
    assert job.streamed.finals == {"labels": job.target, "uncertainty": tmp_path / "o" / "s_uncertainty.zarr"}
    assert BatchPlan((), None, ".tif", None, False, False).prepare_streamed(tmp_path / "s.tif") is None  # small
    assert BatchPlan((), None, ".tif", None, False, False).prepare_streamed(tmp_path / "p.png") is None
    monkeypatch.setattr("napari_hrdv2.core.scale.streaming.STREAM_PIXELS", 100)
    big = BatchPlan((), tmp_path / "o", ".tif", None, False, False).prepare(tmp_path / "s.tif")
    assert big.streamed is not None and big.streamed.finals == {"labels": tmp_path / "o" / "s_labels.tif"}
    assert message(BatchPlan((), None, ".png", None, False, False).prepare_streamed, tmp_path / "s.tif") == (
        "it has 20x30 pixels, too large for a PNG written in memory; use --format tif or zarr."
    )
    (tmp_path / "o" / "s_labels.tif").parent.mkdir(exist_ok=True)
    (tmp_path / "o" / "s_labels.tif").write_bytes(b"")
    assert BatchPlan((), tmp_path / "o", ".tif", None, False, False).prepare(tmp_path / "s.tif").skip


@pytest.fixture(scope="module")
def model(tiny_backbone):
    from conftest import two_texture_image

    config = hr.FeatureConfig(backbone=tiny_backbone, device="cpu", shifts="none", tile_size=None)
    image, truth = two_texture_image(28)
    labels = np.zeros_like(truth)
    labels[2:-2, 2:4] = 1
    labels[2:-2, 24:26] = 2
    return config, hr.LinearSegmenter().fit(hr.Featurizer(config).encode(image, with_attention=False), labels)


def test_plan_batch_checks_everything_first_with_its_defaults(tmp_path, model):
    config, segmenter = model
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(tmp_path / "p.png")
    plan = plan_batch([tmp_path], None, segmenter, config)
    assert plan.paths == (tmp_path / "p.png",) and plan.outdir is None and plan.suffix == ".tif"
    assert (plan.channels, plan.overwrite, plan.uncertainty, plan.separate) == (None, False, False, False)
    assert plan_batch([tmp_path], None, segmenter, config, suffix="PNG").suffix == ".png"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert message(plan_batch, [empty], None, segmenter, config) == (
        f"No images found in {empty} (looked for {', '.join(INPUT_KINDS)})."
    )
    assert message(plan_batch, [], None, segmenter, config).startswith("No images found in (no inputs) (looked for")
    (tmp_path / "b").mkdir()
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(tmp_path / "b" / "p.png")
    clash = [tmp_path / "p.png", tmp_path / "b" / "p.png"]
    assert "Some inputs would write the same output file" in message(
        plan_batch, clash, tmp_path / "o", segmenter, config
    )
    assert len(plan_batch(clash, tmp_path / "o", segmenter, config, distinct_outputs=False).paths) == 2


def test_check_room_asks_every_output_folder_for_its_estimate(tmp_path, monkeypatch):
    tifffile.imwrite(tmp_path / "s.tif", np.zeros((2, 256, 256), np.uint8))
    (tmp_path / "b").mkdir()
    tifffile.imwrite(tmp_path / "b" / "t.tif", np.zeros((256, 256), np.uint8))
    asked = []
    monkeypatch.setattr(plan_module, "check_output_folder", lambda folder, n: asked.append((folder, n)))
    wide = types.SimpleNamespace(classes_=np.array([1, 300]))
    plan_module.check_room([tmp_path / "s.tif", tmp_path / "b" / "t.tif"], None, wide, uncertainty=True)
    assert asked == [(tmp_path, 1024 + 262144), (tmp_path / "b", 512 + 131072)]
    asked.clear()
    plan_module.check_room([tmp_path / "s.tif"], tmp_path / "o", types.SimpleNamespace(classes_=None), suffix="TIF")
    assert asked == [(tmp_path / "o", 512)]
