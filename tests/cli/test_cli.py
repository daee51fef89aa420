"""The ``napari-hrdv2`` command line, run in-process: exit codes, files, shapes, messages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

import napari_hrdv2 as hr
from conftest import two_texture_image
from napari_hrdv2.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def strokes(truth: np.ndarray) -> np.ndarray:
    """One vertical brush stroke of class 1 in the left half and one of class 2 in the right half."""
    size = truth.shape[1]
    labels = np.zeros(truth.shape, dtype=np.uint8)
    labels[5:-5, size // 4 : size // 4 + 3] = 1
    labels[5:-5, 3 * size // 4 : 3 * size // 4 + 3] = 2
    return labels


@pytest.fixture(scope="module")
def opts(tiny_backbone) -> list[str]:
    return ["--backbone", tiny_backbone, "--device", "cpu", "--shifts", "neumann", "--distances", "3"]


@pytest.fixture(scope="module")
def config(tiny_backbone) -> hr.FeatureConfig:
    return hr.FeatureConfig(
        backbone=tiny_backbone, device="cpu", shifts="neumann", shift_distances=(3,), tile_size=None
    )


@pytest.fixture(scope="module")
def model(tmp_path_factory, opts) -> Path:
    """A model trained with the CLI on a two-texture image and stroke labels written as TIFF."""
    folder = tmp_path_factory.mktemp("train")
    image, truth = two_texture_image(112)
    tifffile.imwrite(folder / "tex.tif", image)
    tifffile.imwrite(folder / "tex_strokes.tif", strokes(truth))
    path = folder / "model.hrdv2"
    args = ["train", str(folder / "tex.tif"), "--labels", str(folder / "tex_strokes.tif"), "-o", str(path)]
    assert main([*args, *opts, "--tile-size", "none"]) == 0
    return path


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------------------------------------- features
def test_features_npy_pca_attention(tmp_path, capsys, opts, config):
    image = two_texture_image(56)[0][:, :42]  # not square, not a multiple of the patch size
    tifffile.imwrite(tmp_path / "img.tif", image)
    out, pca, attention = tmp_path / "f.npy", tmp_path / "pca.png", tmp_path / "att.tif"
    code, stdout, _ = run(
        capsys, "features", tmp_path / "img.tif", *opts, "--tile-size", "none", "-o", out, "--pca", pca,
        "--attention", attention,
    )  # fmt: skip
    assert code == 0
    encoding = hr.Featurizer(config).encode(image)
    features = np.load(out)
    assert features.shape == (128, 56, 42) and features.dtype == np.float32
    np.testing.assert_allclose(features, encoding.features(), atol=1e-5)
    from skimage.io import imread

    rgb = imread(pca)
    assert rgb.shape == (56, 42, 3) and rgb.dtype == np.uint8 and rgb.std() > 0
    np.testing.assert_allclose(rgb / 255, hr.pca_rgb(encoding), atol=1 / 255 + 1e-3)
    maps = tifffile.imread(attention)
    assert maps.shape == (2, 56, 42) and maps.dtype == np.float32
    np.testing.assert_allclose(maps, encoding.attention(), atol=1e-5)
    assert "(128, 56, 42) float32" in stdout


def test_features_storage_dtype_option(tmp_path, capsys, opts, config):
    image = two_texture_image(56)[0]
    tifffile.imwrite(tmp_path / "img.tif", image)
    base = ["features", tmp_path / "img.tif", *opts, "--tile-size", "none", "--dtype", "float32"]
    assert run(capsys, *base, "--storage-dtype", "float32", "-o", tmp_path / "f32.npy")[0] == 0
    exact = hr.Featurizer(config.replace(dtype="float32", storage_dtype="float32")).encode(image).features()
    np.testing.assert_array_equal(np.load(tmp_path / "f32.npy"), exact)
    assert run(capsys, *base, "-o", tmp_path / "auto.npy")[0] == 0  # default with float32 compute: float16 maps
    default = np.load(tmp_path / "auto.npy")
    assert not np.array_equal(default, exact)
    np.testing.assert_allclose(default, exact, atol=np.abs(exact).max() * 2**-10)
    code, _, err = run(capsys, *base, "--storage-dtype", "int8", "-o", tmp_path / "x.npy")
    assert code == 2 and "--storage-dtype" in err


def test_features_dtype_bfloat16_stores_its_maps_as_computed(tmp_path, capsys, opts, config):
    """--dtype bfloat16 (what auto picks on bfloat16 CPUs): the default storage keeps the bfloat16 maps, so
    float32 storage gives the same features, which are the API's."""
    image = two_texture_image(56)[0]
    tifffile.imwrite(tmp_path / "img.tif", image)
    base = ["features", tmp_path / "img.tif", *opts, "--tile-size", "none", "--dtype", "bfloat16"]
    assert run(capsys, *base, "-o", tmp_path / "auto.npy")[0] == 0
    assert run(capsys, *base, "--storage-dtype", "float32", "-o", tmp_path / "f32.npy")[0] == 0
    default = np.load(tmp_path / "auto.npy")
    assert default.dtype == np.float32
    np.testing.assert_array_equal(default, np.load(tmp_path / "f32.npy"))
    np.testing.assert_array_equal(default, hr.Featurizer(config.replace(dtype="bfloat16")).encode(image).features())


def test_features_stack_plane_and_float16(tmp_path, capsys, opts, config):
    stack = np.stack([two_texture_image(56, seed=s)[0] for s in range(2)])
    tifffile.imwrite(tmp_path / "stack.tif", stack)
    base = ["features", tmp_path / "stack.tif", *opts, "--tile-size", "0"]
    code, _, _ = run(capsys, *base, "-o", tmp_path / "all.npy", "--dtype-out", "float16", "--pca", tmp_path / "p.tif")
    assert code == 0
    everything = np.load(tmp_path / "all.npy")
    assert everything.shape == (2, 128, 56, 56) and everything.dtype == np.float16
    assert tifffile.imread(tmp_path / "p.tif").shape == (2, 56, 56, 3)
    code, _, _ = run(capsys, *base, "--plane", "1", "-o", tmp_path / "one.npy")
    assert code == 0
    one = np.load(tmp_path / "one.npy")
    np.testing.assert_allclose(one, hr.Featurizer(config).encode(stack[1]).features(), atol=1e-5)
    np.testing.assert_allclose(everything[1], one, atol=2e-2, rtol=2e-3)  # float16 rounding

    code, _, err = run(capsys, *base, "--plane", "5", "-o", tmp_path / "x.npy")
    assert code == 2 and "--plane 5 is out of range" in err and "0..1" in err
    code, _, err = run(capsys, *base, "--pca", tmp_path / "p.png")
    assert code == 2 and "stack of 2 planes" in err and "--plane" in err


def test_features_output_errors(tmp_path, capsys, opts):
    image = two_texture_image(56)[0]
    tifffile.imwrite(tmp_path / "img.tif", image)
    (tmp_path / "exists.npy").write_bytes(b"")
    base = ["features", tmp_path / "img.tif", *opts]
    code, _, err = run(capsys, *base)
    assert code == 2 and "Nothing to write" in err
    code, _, err = run(capsys, *base, "-o", tmp_path / "exists.npy")
    assert code == 2 and "already exists" in err and "--overwrite" in err
    code, _, err = run(capsys, *base, "-o", tmp_path / "f.csv")
    assert code == 2 and ".npy" in err
    code, _, err = run(capsys, "features", tmp_path / "missing.tif", *opts, "-o", tmp_path / "f.npy")
    assert code == 2 and "does not exist" in err and "Traceback" not in err
    # An OSError while writing is one line too.
    (tmp_path / "afile").write_text("")
    code, _, err = run(capsys, *base, "--tile-size", "none", "-o", tmp_path / "afile" / "f.npy")
    assert code == 2 and err.startswith("napari-hrdv2: error:") and err.count("\n") == 1


def test_missing_backbone_folder(tmp_path, capsys):
    tifffile.imwrite(tmp_path / "img.tif", two_texture_image(56)[0])
    code, _, err = run(
        capsys, "features", tmp_path / "img.tif", "--backbone", tmp_path / "no-such-model", "-o", tmp_path / "f.npy"
    )
    assert code == 3 and "does not exist" in err and "Traceback" not in err
    assert not (tmp_path / "f.npy").exists()


def test_debug_shows_traceback(tmp_path, capsys):
    code, _, err = run(capsys, "features", tmp_path / "missing.tif", "-o", tmp_path / "f.npy", "--debug")
    assert code == 2 and "Traceback" in err and "does not exist" in err


def test_progress_bar_on_stderr(tmp_path, capsys, opts):
    tifffile.imwrite(tmp_path / "img.tif", two_texture_image(56)[0])
    code, _, err = run(
        capsys, "features", tmp_path / "img.tif", *opts, "-o", tmp_path / "f.npy", "--tile-size", "none", "--progress"
    )
    assert code == 0 and "0/5" in err and "pass" in err
    code, stdout, err = run(
        capsys, "features", tmp_path / "img.tif", *opts, "-o", tmp_path / "g.npy", "--tile-size", "none", "-q"
    )
    assert code == 0 and stdout == "" and "pass" not in err


def test_usage_errors_return_2(capsys):
    assert main(["features"]) == 2
    assert main(["train", "a.tif", "-o", "m.hrdv2"]) == 2  # --labels is required
    assert main(["segment", "a.tif", "--model", "m.hrdv2", "--tile-size", "7"]) == 2
    assert main(["--version"]) == 0
    capsys.readouterr()


def test_every_config_field_has_an_option():
    import dataclasses

    from napari_hrdv2 import cli

    assert set(cli.OPTION_OF) == {f.name for f in dataclasses.fields(hr.FeatureConfig)}


# ---------------------------------------------------------------------------------------------- train
def test_train_writes_model_and_refuses_overwrite(model, capsys, opts):
    seg = hr.LinearSegmenter.load(model)
    assert seg.classes_.tolist() == [1, 2]
    assert seg.feature_config.shifts == "neumann" and seg.feature_config.shift_distances == (3,)
    folder = model.parent
    args = ["train", folder / "tex.tif", "--labels", folder / "tex_strokes.tif", "-o", model, *opts]
    code, _, err = run(capsys, *args)
    assert code == 2 and "already exists" in err and "--overwrite" in err


def test_train_mlp_head_then_segment_uses_it(model, tmp_path, capsys, opts, config):
    folder = model.parent
    out = tmp_path / "mlp.hrdv2"
    args = [
        "train",
        folder / "tex.tif",
        "--labels",
        folder / "tex_strokes.tif",
        "-o",
        out,
        *opts,
        "--tile-size",
        "none",
    ]
    code, stdout, _ = run(capsys, *args, "--head", "mlp", "--hidden", "8")
    assert code == 0 and "Trained an MLP model" in stdout
    seg = hr.load_segmenter(out)
    assert type(seg) is hr.MLPSegmenter and seg.hidden == 8 and seg.classes_.tolist() == [1, 2]
    code, _, _ = run(capsys, "segment", folder / "tex.tif", "--model", out, "-o", tmp_path / "labels", "-q")
    assert code == 0
    labels = tifffile.imread(tmp_path / "labels" / "tex_labels.tif")
    np.testing.assert_array_equal(
        labels, seg.predict(hr.Featurizer(config).encode(tifffile.imread(folder / "tex.tif")))
    )
    code, _, err = run(capsys, *args, "--overwrite", "--hidden", "8")
    assert code == 2 and "--head mlp" in err
    code, _, err = run(capsys, *args, "--overwrite", "--head", "forest")
    assert code == 2 and "invalid choice" in err


def test_cli_head_choices_match_the_core():
    from napari_hrdv2.cli import train
    from napari_hrdv2.core.segmentation import heads, mlp

    assert train.HEADS == heads.HEADS and train.DEFAULT_HIDDEN == mlp.DEFAULT_HIDDEN


def test_train_on_stack_uses_labelled_planes(tmp_path, capsys, opts):
    images, truths = zip(*(two_texture_image(56, seed=s) for s in range(3)))
    labels = np.zeros((3, 56, 56), dtype=np.uint8)
    labels[1] = strokes(truths[1])  # only the middle plane is labelled
    tifffile.imwrite(tmp_path / "stack.tif", np.stack(images))
    tifffile.imwrite(tmp_path / "labels.tif", labels)
    code, stdout, _ = run(
        capsys, "train", tmp_path / "stack.tif", "--labels", tmp_path / "labels.tif", "-o", tmp_path / "m.hrdv2",
        *opts, "--tile-size", "none",
    )  # fmt: skip
    assert code == 0 and "1 labelled plane" in stdout
    assert hr.LinearSegmenter.load(tmp_path / "m.hrdv2").classes_.tolist() == [1, 2]


def test_train_bad_labels(tmp_path, capsys, opts):
    image, truth = two_texture_image(56)
    tifffile.imwrite(tmp_path / "img.tif", image)
    tifffile.imwrite(tmp_path / "small.tif", strokes(truth)[:40])
    tifffile.imwrite(tmp_path / "one_class.tif", (strokes(truth) == 1).astype(np.uint8))
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([image, image]))
    base = ["-o", tmp_path / "m.hrdv2", *opts]
    code, _, err = run(capsys, "train", tmp_path / "img.tif", "--labels", tmp_path / "small.tif", *base)
    assert code == 2 and "shape (40, 56)" in err and "(56, 56)" in err and "small.tif" in err
    code, _, err = run(capsys, "train", tmp_path / "img.tif", "--labels", tmp_path / "one_class.tif", *base)
    assert code == 2 and "Only one class" in err
    code, _, err = run(capsys, "train", tmp_path / "stack.tif", "--labels", tmp_path / "small.tif", *base)
    assert code == 2 and "stack of 2 planes" in err
    code, _, err = run(
        capsys, "train", tmp_path / "img.tif", tmp_path / "img.tif", "--labels", tmp_path / "small.tif", *base
    )
    assert code == 2 and "one label file per image" in err
    assert not (tmp_path / "m.hrdv2").exists()


# ---------------------------------------------------------------------------------------------- segment
def test_segment_folder_with_a_corrupt_file(tmp_path, capsys, model):
    from skimage.io import imsave

    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    truths = {}
    for seed, name in ((1, "a.tif"), (2, "b.png")):
        image, truths[Path(name).stem] = two_texture_image(84, seed=seed)
        (tifffile.imwrite if name.endswith(".tif") else imsave)(folder / name, image)
    (folder / "corrupt.tif").write_bytes(b"not a tiff at all")
    (folder / "notes.txt").write_text("ignored")
    code, stdout, err = run(capsys, "segment", folder, "--model", model, "-o", out, "--tile-size", "none")
    assert code == 1
    assert "corrupt.tif" in err and "failed" in err and "Traceback" not in err
    assert "Wrote 2 label image(s)" in stdout and "1 failed" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["a_labels.tif", "b_labels.tif"]
    for stem, truth in truths.items():
        labels = tifffile.imread(out / f"{stem}_labels.tif")
        assert labels.shape == (84, 84) and labels.dtype == np.uint8
        assert np.mean(labels == truth) >= 0.8


def test_segment_stack_gives_multipage_tiff(tmp_path, capsys, model):
    stack = np.stack([two_texture_image(56, seed=s)[0] for s in range(2)])
    tifffile.imwrite(tmp_path / "stack.tif", stack)
    code, _, _ = run(
        capsys, "segment", tmp_path / "stack.tif", "--model", model, "--uncertainty", "--format", "png",
        "--tile-size", "none",
    )  # fmt: skip
    assert code == 0
    with tifffile.TiffFile(tmp_path / "stack_labels.tif") as tif:  # default: next to the input; stacks stay TIFF
        assert len(tif.pages) == 2
        labels = tif.asarray()
    assert labels.shape == (2, 56, 56) and set(np.unique(labels)) <= {1, 2}
    uncertainty = tifffile.imread(tmp_path / "stack_uncertainty.tif")
    assert uncertainty.shape == (2, 56, 56) and uncertainty.dtype == np.float32
    assert uncertainty.min() >= 0 and uncertainty.max() <= 1
    # Asking for the uncertainty later adds it without touching the labels.
    (tmp_path / "stack_uncertainty.tif").unlink()
    before = (tmp_path / "stack_labels.tif").stat().st_mtime_ns
    code, stdout, _ = run(capsys, "segment", tmp_path / "stack.tif", "--model", model, "--uncertainty")
    assert code == 0 and "skipped 1" in stdout and (tmp_path / "stack_uncertainty.tif").exists()
    assert (tmp_path / "stack_labels.tif").stat().st_mtime_ns == before


def test_segment_skips_existing_and_png(tmp_path, capsys, model):
    image, truth = two_texture_image(56)
    tifffile.imwrite(tmp_path / "img.tif", image)
    base = ["segment", tmp_path, "--model", model, "--tile-size", "none"]  # a folder, outputs inside it
    assert run(capsys, *base)[0] == 0
    target = tmp_path / "img_labels.tif"
    before = target.stat().st_mtime_ns
    code, stdout, _ = run(capsys, *base)
    assert code == 0 and "Wrote 0" in stdout and "skipped 1" in stdout and "--overwrite" in stdout
    assert target.stat().st_mtime_ns == before
    assert not (tmp_path / "img_labels_labels.tif").exists()  # its own output is not an input
    code, stdout, _ = run(capsys, *base, "--overwrite")
    assert code == 0 and "Wrote 1" in stdout
    code, _, _ = run(capsys, *base, "--format", "png")
    assert code == 0
    from skimage.io import imread

    png = imread(tmp_path / "img_labels.png")
    assert png.shape == (56, 56) and png.dtype == np.uint8
    np.testing.assert_array_equal(png, tifffile.imread(target))


def test_segment_model_errors(tmp_path, capsys, model):
    tifffile.imwrite(tmp_path / "img.tif", two_texture_image(56)[0])
    code, _, err = run(capsys, "segment", tmp_path / "img.tif", "--model", tmp_path / "missing.hrdv2")
    assert code == 4 and "does not exist" in err
    (tmp_path / "corrupt.hrdv2").write_bytes(b"\x00garbage" * 10)
    code, _, err = run(capsys, "segment", tmp_path / "img.tif", "--model", tmp_path / "corrupt.hrdv2")
    assert code == 4 and "corrupt.hrdv2" in err and "Traceback" not in err
    truncated = tmp_path / "truncated.hrdv2"
    truncated.write_bytes(model.read_bytes()[:200])
    code, _, err = run(capsys, "segment", tmp_path / "img.tif", "--model", truncated)
    assert code == 4 and "truncated.hrdv2" in err
    assert not (tmp_path / "img_labels.tif").exists()


def test_segment_feature_options_must_match_the_model(tmp_path, capsys, model, tiny_backbone):
    tifffile.imwrite(tmp_path / "img.tif", two_texture_image(56)[0])
    base = ["segment", tmp_path / "img.tif", "--model", model]
    code, _, err = run(capsys, *base, "--shifts", "moore", "--preset", "quality")
    assert code == 2 and "--shifts" in err and "'neumann'" in err and "--preset quality" in err
    code, _, err = run(capsys, *base, "--backbone", tmp_path / "other")
    assert code == 2 and "--backbone-path" in err
    # Repeating the model's settings and changing runtime ones is fine.
    args = ["--shifts", "neumann", "--distances", "3", "--backbone", tiny_backbone, "--batch-size", "2", "-q"]
    assert run(capsys, *base, *args, "--tile-size", "28", "--tile-overlap", "6")[0] == 0
    # A model whose backbone folder is gone (trained on another computer): --backbone-path says where it is now.
    from napari_hrdv2.testing import save_random_dinov2

    seg = hr.LinearSegmenter.load(model)
    seg.feature_config = seg.feature_config.replace(backbone=str(tmp_path / "gone" / "tiny-dinov2"))
    moved_model = seg.save(tmp_path / "moved.hrdv2")
    code, _, err = run(capsys, "segment", tmp_path / "img.tif", "--model", moved_model, "--overwrite")
    assert code == 3 and "does not exist" in err and "--backbone-path" in err
    code, stdout, _ = run(
        capsys, "segment", tmp_path / "img.tif", "--model", moved_model, "--backbone-path", tiny_backbone, "--overwrite"
    )
    assert code == 0 and "Wrote 1" in stdout
    narrow = save_random_dinov2(tmp_path / "narrow-dinov2", hidden=64)
    code, _, err = run(capsys, *base, "--backbone-path", narrow, "--overwrite")
    assert code == 2 and "64 features" in err and "128" in err
    code, _, err = run(capsys, *base, "--backbone-path", tmp_path / "nowhere", "--overwrite")
    assert code == 3 and "nowhere" in err


def test_segment_no_images(tmp_path, capsys, model):
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "segment", tmp_path / "empty", "--model", model)
    assert code == 2 and "No images found" in err


# ---------------------------------------------------------------------------------------------- batch module
def test_batch_generator_and_gui_wrapper(tmp_path, model, config):
    from napari_hrdv2._workers import BatchReport, folder_job
    from napari_hrdv2.core.progress import Progress
    from napari_hrdv2.core.scale.in_process import iter_segment_files

    seg = hr.LinearSegmenter.load(model)
    tifffile.imwrite(tmp_path / "img.tif", two_texture_image(56)[0])
    steps = iter_segment_files([tmp_path / "img.tif"], tmp_path / "out", seg, config)
    items = []
    while True:
        try:
            items.append(next(steps))
        except StopIteration as finished:
            report = finished.value
            break
    assert all(isinstance(item, Progress) for item in items)
    fractions = [item.fraction for item in items]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert report.written == [tmp_path / "out" / "img_labels.tif"] and report.ok

    job = folder_job([tmp_path / "img.tif"], tmp_path / "out", seg, config)
    progress = []
    while True:
        try:
            progress.append(next(job))
        except StopIteration as finished:
            gui_report = finished.value
            break
    assert all(isinstance(item, Progress) for item in progress)
    assert isinstance(gui_report, BatchReport) and gui_report.skipped == [tmp_path / "out" / "img_labels.tif"]
    assert "tick Overwrite" in gui_report.summary()

    wrong = config.replace(shifts="moore")
    with pytest.raises(hr.InputError, match="shifts"):
        next(iter_segment_files([tmp_path / "img.tif"], tmp_path / "out", seg, wrong))


def test_inputs_with_the_same_output_name(tmp_path, capsys, model):
    from skimage.io import imsave

    image = two_texture_image(56)[0]
    tifffile.imwrite(tmp_path / "a.tif", image)
    imsave(tmp_path / "a.png", image, check_contrast=False)
    code, stdout, err = run(capsys, "segment", tmp_path / "a.png", tmp_path / "a.tif", "--model", model, "-o", tmp_path)
    assert code == 2 and "a.tif" in err and "a.png" in err and "same output file" in err
    assert not (tmp_path / "a_labels.tif").exists()  # refused before any work


def test_inputs_with_the_same_stem_in_two_folders(tmp_path, capsys, model):
    """a/x.tif and b/x.tif into one -o: refused up front, so no re-run can skip one as "existing"."""
    image = two_texture_image(56)[0]
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        tifffile.imwrite(tmp_path / sub / "x.tif", image)
    args = ("segment", tmp_path / "a" / "x.tif", tmp_path / "b" / "x.tif", "--model", model, "-o", tmp_path / "out")
    for _ in range(2):
        code, _, err = run(capsys, *args)
        assert code == 2 and "same output file" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "x_labels.tif").exists()
    code, _, _ = run(capsys, "segment", tmp_path / "a", tmp_path / "b", "--model", model)  # next to each: fine
    assert code == 0 and (tmp_path / "a" / "x_labels.tif").exists() and (tmp_path / "b" / "x_labels.tif").exists()


# ---------------------------------------------------------------------------------------------- refinement
def test_train_refine_is_saved_and_segment_uses_it(tmp_path, capsys, model, opts):
    folder = model.parent
    path = tmp_path / "refined.hrdv2"
    args = ["train", folder / "tex.tif", "--labels", folder / "tex_strokes.tif", "-o", path, *opts]
    code, out, err = run(capsys, *args, "--tile-size", "none", "--refine", "guided", "--refine-option", "radius=3")
    assert code == 0 and "refinement guided (radius=3, eps=" in out + err
    seg = hr.LinearSegmenter.load(path)
    assert seg.refine == "guided" and seg.refine_settings.radius == 3
    code, _, err = run(capsys, "segment", folder / "tex.tif", "--model", path, "-o", tmp_path / "out", "-q")
    assert code == 0, err
    image = tifffile.imread(folder / "tex.tif")
    expected = seg.predict(seg.featurizer(tile_size=None).encode(image, with_attention=False))
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / "tex_labels.tif"), expected)


def test_train_bad_refine_options_are_usage_errors(tmp_path, capsys, model, opts):
    folder = model.parent
    args = ["train", folder / "tex.tif", "--labels", folder / "tex_strokes.tif", "-o", tmp_path / "m.hrdv2", *opts]
    assert run(capsys, *args, "--refine", "blur")[0] == 2
    assert run(capsys, *args, "--refine", "crf", "--refine-option", "radius")[0] == 2
    code, _, err = run(capsys, *args, "--refine", "crf", "--refine-option", "eps=0.1")
    assert code == 2 and "takes no option eps" in err
