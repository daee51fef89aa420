"""Hostile files: crafted model files (a pickle payload among them), images that used to be misread.

Every case has a known answer: a :class:`ModelFileError` / :class:`InputError` naming the problem,
or the one correct reading of the file. A marker file shows that no code in a file ever runs.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import tifffile
from safetensors import safe_open
from safetensors.numpy import save_file

import napari_hrdv2 as hr
from conftest import two_texture_image
from napari_hrdv2.cli import main
from napari_hrdv2.core.errors import InputError, ModelFileError
from napari_hrdv2.core.files.images import read_image, read_labels
from napari_hrdv2.core.segmentation.segmenter import LinearSegmenter


# ---------------------------------------------------------------------------------------------- model files
@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Tensors and metadata of a valid model file (trained on dense features with known classes 3 and 7)."""
    rng = np.random.default_rng(0)
    features = rng.normal(size=(4, 20, 20)).astype(np.float32)
    labels = np.zeros((20, 20), np.uint8)
    labels[:, :5], labels[:, -5:] = 3, 7
    features[0, :, :10] += 3
    model = LinearSegmenter().fit(features, labels)
    model.feature_config = hr.FeatureConfig(backbone="some/backbone", shifts="none")
    path = model.save(tmp_path_factory.mktemp("model") / "m.hrdv2")
    with safe_open(str(path), framework="numpy") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}, dict(handle.metadata())  # noqa: SIM118


def crafted(tmp_path: Path, saved, tensors=None, meta=None, config=None) -> Path:
    tensors_, meta_ = dict(saved[0]), dict(saved[1])
    tensors_.update(tensors or {})
    meta_.update(meta or {})
    if config is not None:
        meta_["feature_config"] = json.dumps({**json.loads(meta_["feature_config"]), **config})
    if "checksum" in meta_:  # crafted with a valid checksum: every other check still has to catch it
        from napari_hrdv2.core.files.checksums import contents_sha256

        meta_["checksum"] = contents_sha256(tensors_, meta_)
    path = tmp_path / "crafted.hrdv2"
    save_file({k: np.ascontiguousarray(v) for k, v in tensors_.items()}, str(path), metadata=meta_)
    return path


def test_valid_model_round_trip(tmp_path, saved_model):
    model = LinearSegmenter.load(crafted(tmp_path, saved_model))
    assert model.classes_.tolist() == [3, 7]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tensors": {"classes": np.array([0, 7])}}, "1..65535"),
        ({"tensors": {"classes": np.array([3, 70000])}}, "1..65535"),
        ({"tensors": {"classes": np.array([-3, 7])}}, "1..65535"),
        ({"tensors": {"classes": np.array([7, 7])}}, "not distinct"),
        ({"tensors": {"classes": np.array([3.5, 7.0], np.float32)}}, "dtype"),
        ({"tensors": {"coef": np.full((2, 4), np.nan, np.float32)}}, "NaN or infinite"),
        ({"tensors": {"intercept": np.array([np.inf, 0], np.float32)}}, "NaN or infinite"),
        ({"tensors": {"coef": np.zeros((2, 5), np.float32)}}, "inconsistent array shapes"),
        ({"meta": {"format_version": "abc"}}, "not a whole number"),
        ({"meta": {"format_version": "1.5"}}, "not a whole number"),
        ({"meta": {"format_version": "-1"}}, "not a whole number"),
        ({"meta": {"format_version": "99"}}, "newer napari-hrdv2"),
        ({"meta": {"n_hr_features": "x"}}, "damaged"),
        ({"meta": {"params": "{not json"}}, "damaged"),
        ({"meta": {"format": "other"}}, "not a napari-hrdv2 segmentation model"),
        ({"config": {"shifts": "moore", "shift_distances": list(range(1, 1001))}}, "at most"),
        (
            {
                "config": {
                    "shifts": "moore",
                    "shift_distances": [1, 2, 3, 4, 5, 6, 7, 8],
                    "flips": True,
                    "rotations": True,
                }
            },
            "passes",
        ),  # fmt: skip
        ({"config": {"tile_size": "abc"}}, "tile_size must be an integer"),
        ({"config": {"batch_size": 10**9}}, "batch_size"),
        ({"config": {"colour": "red"}}, "Unknown FeatureConfig"),
    ],
    ids=lambda value: str(value)[:40] if isinstance(value, dict) else None,
)
def test_crafted_model_files_are_refused(tmp_path, saved_model, change, message):
    path = crafted(tmp_path, saved_model, **change)
    with pytest.raises(ModelFileError, match=message):
        LinearSegmenter.load(path)


def test_pickle_payload_never_runs(tmp_path):
    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    for name in ("model.hrdv2", "model.pth"):
        (tmp_path / name).write_bytes(pickle.dumps({"coef": Payload()}))
        with pytest.raises(ModelFileError):
            LinearSegmenter.load(tmp_path / name)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"\x00" * 7, b"garbage" * 50])
def test_empty_and_garbage_model_files(tmp_path, content):
    (tmp_path / "m.hrdv2").write_bytes(content)
    with pytest.raises(ModelFileError):
        LinearSegmenter.load(tmp_path / "m.hrdv2")


# ---------------------------------------------------------------------------------------------- backbone identity
@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_backbone) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("identity")
    image, truth = two_texture_image(56)
    strokes = np.zeros_like(truth)
    strokes[5:-5, 14:16], strokes[5:-5, 42:44] = 1, 2
    tifffile.imwrite(folder / "img.tif", image)
    tifffile.imwrite(folder / "strokes.tif", strokes)
    args = ["train", folder / "img.tif", "--labels", folder / "strokes.tif", "-o", folder / "m.hrdv2",
            "--backbone", tiny_backbone, "--device", "cpu", "--shifts", "none", "--tile-size", "none", "-q"]  # fmt: skip
    assert main([str(a) for a in args]) == 0
    return folder / "m.hrdv2", folder / "img.tif"


def test_model_records_its_backbone_weights(trained, tiny_backbone):
    from napari_hrdv2.core.backbone.identity import backbone_fingerprint, same_weights
    from napari_hrdv2.core.backbone.loading import load_backbone

    model = LinearSegmenter.load(trained[0])
    assert model.backbone_fingerprint_ is not None
    mine = backbone_fingerprint(load_backbone(tiny_backbone).model)
    assert same_weights(model.backbone_fingerprint_, mine)
    assert same_weights(mine, mine.astype(np.float16).astype(np.float32))  # half-precision loading: same weights
    assert not same_weights(mine, mine * 1.1)


@pytest.fixture(scope="module")
def other_weights(tmp_path_factory) -> str:
    """A tiny DINOv2 of the same family and width (128) as tiny-dinov2, with other (random) weights."""
    from napari_hrdv2.testing import save_random_dinov2

    return str(save_random_dinov2(tmp_path_factory.mktemp("other") / "tiny-dinov2-seed1", seed=1))


def test_other_weights_of_the_same_width_are_refused(trained, other_weights, capsys, tmp_path):
    """Same family, same width (128), other weights: the model must not apply."""
    model_path, image = trained
    code = main(["segment", str(image), "--model", str(model_path), "--backbone-path", other_weights,
                 "-o", str(tmp_path)])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "other backbone weights" in err[0]
    assert not (tmp_path / "img_labels.tif").exists()
    model = LinearSegmenter.load(model_path)
    from napari_hrdv2.core.backbone.loading import load_backbone

    other = hr.Featurizer(model.feature_config, backbone=load_backbone(other_weights))
    with pytest.raises(InputError, match="other backbone weights"):
        model.predict(other.encode(tifffile.imread(image), with_attention=False))


def test_model_records_its_backbone_family(trained, tiny_backbone_registers, tmp_path):
    from napari_hrdv2.core.backbone.identity import backbone_family_of
    from napari_hrdv2.core.backbone.loading import load_backbone

    model = LinearSegmenter.load(trained[0])
    assert model.backbone_family_ == "dinov2"
    with safe_open(str(trained[0]), framework="numpy") as handle:
        assert handle.metadata()["backbone_family"] == "dinov2"
    assert backbone_family_of(load_backbone(tiny_backbone_registers)) == "dinov2_reg"
    featurizer = hr.Featurizer(model.feature_config.replace(backbone=tiny_backbone_registers))
    encoding = featurizer.encode(tifffile.imread(trained[1]), with_attention=False)
    assert encoding.backbone_family == "dinov2_reg"
    labels = np.zeros(encoding.shape, np.uint8)
    labels[:, :5], labels[:, -5:] = 1, 2
    retrained = LinearSegmenter().fit(encoding, labels)
    assert LinearSegmenter.load(retrained.save(tmp_path / "reg.hrdv2")).backbone_family_ == "dinov2_reg"


def test_features_of_another_family_are_refused_naming_both(trained, tiny_dinov3, capsys, tmp_path):
    """tiny-dinov3 has the width of tiny-dinov2 (128): the shapes fit, the family does not."""
    from napari_hrdv2.core.backbone.loading import load_backbone

    model_path, image = trained
    model = LinearSegmenter.load(model_path)
    other = hr.Featurizer(model.feature_config, backbone=load_backbone(tiny_dinov3))
    encoding = other.encode(tifffile.imread(image), with_attention=False)
    assert encoding.backbone_family == "dinov3" and encoding.n_features == model.n_hr_features_
    with pytest.raises(InputError, match=r"DINOv3 backbone.*trained on DINOv2 features"):
        model.predict(encoding)
    capsys.readouterr()  # (transformers' loading bars of the in-process load above)
    code = main(["segment", str(image), "--model", str(model_path), "--backbone-path", tiny_dinov3,
                 "-o", str(tmp_path)])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "DINOv3" in err[0] and "DINOv2" in err[0], err
    assert not (tmp_path / "img_labels.tif").exists()
    # The tile-by-tile path (huge images) checks the same way.
    from napari_hrdv2.core.scale.streaming import _weights

    with pytest.raises(InputError, match="DINOv3"):
        _weights(model, other)



def test_family_refusal_names_the_source_only_when_given(trained):
    model = LinearSegmenter.load(trained[0])
    with pytest.raises(InputError) as unnamed:
        model.check_backbone_family("dinov3")
    assert "DINOv3 backbone, but the model was trained on DINOv2 features" in str(unnamed.value)
    with pytest.raises(InputError, match=r"DINOv3 backbone \('b\.tif'\), but the model"):
        model.check_backbone_family("dinov3", source="b.tif")

def test_model_files_without_a_family_still_load_and_apply(tmp_path, saved_model):
    model = LinearSegmenter.load(crafted(tmp_path, saved_model))  # written without backbone_family
    assert model.backbone_family_ is None
    model.check_backbone_family("dinov3")  # unknown: not refused
    assert "backbone_family" not in saved_model[1]
    with pytest.raises(ModelFileError, match="backbone_family"):
        LinearSegmenter.load(crafted(tmp_path, saved_model, meta={"backbone_family": "x" * 100}))


def test_hugging_face_backbone_is_never_downloaded_silently(tmp_path, saved_model, capsys, monkeypatch):
    import huggingface_hub

    from napari_hrdv2.core.backbone.identity import download_needed

    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: calls.append(a) or 1 / 0)
    path = crafted(tmp_path, saved_model, config={"backbone": "facebook/dinov2-giant"})
    tifffile.imwrite(tmp_path / "img.tif", two_texture_image(56)[0])
    assert main(["segment", str(tmp_path / "img.tif"), "--model", str(path)]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--allow-download" in err[0] and "facebook/dinov2-giant" in err[0]
    assert calls == []
    assert download_needed("facebook/dinov2-giant") == "facebook/dinov2-giant"
    assert download_needed("dinov2_vitg14") == "facebook/dinov2-giant"
    assert download_needed(str(tmp_path)) is None  # a local path never downloads


@pytest.mark.parametrize("command", ["features", "train", "pca-fit", "match"])
def test_no_command_downloads_a_preset_without_the_option(tmp_path, capsys, monkeypatch, command):
    import huggingface_hub

    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: calls.append(a) or 1 / 0)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    image, truth = two_texture_image(28)
    tifffile.imwrite(tmp_path / "img.tif", image)
    tifffile.imwrite(tmp_path / "lab.tif", truth)
    img, lab = str(tmp_path / "img.tif"), str(tmp_path / "lab.tif")
    argv = {
        "features": ["features", img, "-o", str(tmp_path / "f.npy")],
        "train": ["train", img, "--labels", lab, "-o", str(tmp_path / "m.hrdv2")],
        "pca-fit": ["pca", "fit", img, "-o", str(tmp_path / "basis.safetensors")],
        "match": ["match", img, img, "-o", str(tmp_path / "m.csv")],
    }[command]
    assert main([*argv, "--backbone", "dinov2_vitg14"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "hf download facebook/dinov2-giant" in err[0] and "--allow-download" in err[0], err
    assert calls == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.tif", "lab.tif"]  # nothing written


def test_a_preset_in_the_local_cache_needs_no_option(tmp_path, tiny_backbone, monkeypatch, capsys):
    """The weights of a preset already in the Hugging Face cache load without --allow-download."""
    import shutil

    import huggingface_hub

    from napari_hrdv2.core.backbone.identity import download_needed

    cache = tmp_path / "hub"
    repo = cache / "models--facebook--dinov2-small"
    snapshot = repo / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_backbone, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    assert download_needed("dinov2_vits14") is None
    tifffile.imwrite(tmp_path / "img.tif", two_texture_image(28)[0])
    argv = ["features", str(tmp_path / "img.tif"), "-o", str(tmp_path / "f.npy"), "--backbone", "dinov2_vits14",
            "--shifts", "none", "--tile-size", "none", "--device", "cpu", "-q"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    assert np.load(tmp_path / "f.npy").shape == (128, 28, 28)


# ---------------------------------------------------------------------------------------------- images
@pytest.fixture
def grey() -> np.ndarray:
    return (np.random.default_rng(1).random((30, 34)) * 255).astype(np.uint8)


def test_float_beyond_float32_is_refused(tiny_config, grey, tmp_path):
    featurizer = hr.Featurizer(tiny_config)
    for image in (grey * 1e300, grey * -1e39):
        with pytest.raises(InputError, match="beyond the float32 range"):
            featurizer.encode(image)
    features = featurizer.encode(grey.astype(np.float64) * 1e30, with_attention=False).features()
    assert np.isfinite(features).all()  # large but representable values still work


def test_grey_alpha_png_is_grey(tmp_path, grey):
    from PIL import Image

    Image.fromarray(np.dstack([grey, np.full_like(grey, 255)])).save(tmp_path / "la.png")
    with pytest.warns(UserWarning, match="alpha"):
        image = read_image(tmp_path / "la.png")
    np.testing.assert_array_equal(image, grey)


@pytest.mark.parametrize("n_channels", [2, 5])
def test_tiff_with_unusable_channels_is_refused(tmp_path, grey, n_channels):
    tifffile.imwrite(tmp_path / "c.tif", np.dstack([grey] * n_channels), photometric="minisblack",
                     planarconfig="contig")  # fmt: skip
    with pytest.raises(InputError, match=f"has {n_channels} channels"):
        read_image(tmp_path / "c.tif")


def test_axes_come_from_ome_and_imagej_metadata(tmp_path, grey):
    rgb = np.stack([grey, grey // 2, grey // 3])
    tifffile.imwrite(tmp_path / "cyx.ome.tif", rgb, ome=True, metadata={"axes": "CYX"})
    with pytest.warns(UserWarning, match="as RGB"):
        np.testing.assert_array_equal(read_image(tmp_path / "cyx.ome.tif"), np.moveaxis(rgb, 0, -1))
    tifffile.imwrite(tmp_path / "zcyx.ome.tif", np.stack([rgb, rgb]), ome=True, metadata={"axes": "ZCYX"})
    with pytest.warns(UserWarning):
        assert read_image(tmp_path / "zcyx.ome.tif").shape == (2, 30, 34, 3)
    tifffile.imwrite(tmp_path / "zyx.tif", np.stack([grey] * 4), imagej=True, metadata={"axes": "ZYX"})
    assert read_image(tmp_path / "zyx.tif").shape == (4, 30, 34)
    tifffile.imwrite(tmp_path / "plain.tif", np.stack([grey] * 3))  # no metadata: planes, as always
    assert read_image(tmp_path / "plain.tif").shape == (3, 30, 34)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.png", b"", "the file is empty"),
        ("empty.tif", b"", "the file is empty"),
        ("random.png", b"\x89PNG" + bytes(range(200)), "Could not read"),
        ("random.tif", b"II*\x00" + bytes(100), "Could not read"),
        ("text.jpg", b"hello", "Could not read"),
    ],
)
def test_unreadable_files_give_one_line(tmp_path, name, content, message, capsys, tiny_backbone):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(InputError, match=message) as error:
        read_image(tmp_path / name)
    assert "pip" not in str(error.value) and "\n" not in str(error.value)
    code = main(["features", str(tmp_path / name), "-o", str(tmp_path / "f.npy"), "--backbone", tiny_backbone])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "pip" not in err[0]


def test_palette_labels_keep_their_indices(tmp_path):
    from PIL import Image

    labels = np.zeros((20, 20), np.uint8)
    labels[:, 10:] = 2
    Image.fromarray(labels, mode="L").convert("P").save(tmp_path / "labels.png")
    np.testing.assert_array_equal(read_labels(tmp_path / "labels.png"), labels)


def test_huge_image_is_refused_before_allocating(tiny_config, monkeypatch):
    monkeypatch.setenv("NAPARI_HRDV2_MEMORY_LIMIT", str(64 << 20))  # pretend 64 MiB are available
    image = np.broadcast_to(np.uint8(7), (4000, 4000))  # no memory of its own
    with pytest.raises(InputError, match="needs about .* GiB of memory .* split the image"):
        hr.Featurizer(tiny_config).encode(image)


def test_labels_that_look_like_an_image_warn():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(3, 24, 24)).astype(np.float32)
    image_like = (rng.random((24, 24)) * 200).astype(np.uint8) + 1  # ~200 classes, every pixel "labelled"
    with pytest.warns(UserWarning, match="look like an image"):
        LinearSegmenter(max_iter=2).fit(features, image_like)


# ---------------------------------------------------------------------------------------------- paths
LONG = "n" * 300  # longer than any file system's name limit (255 bytes)


@pytest.mark.parametrize(
    "what",
    ["backbone", "backbone .pth", "image", "labels", "model", "PCA basis", "output", "output folder", "input folder"],
)
def test_names_too_long_for_the_file_system_give_a_clear_error(tmp_path, what):
    from napari_hrdv2.core.analysis.pca import PCABasis
    from napari_hrdv2.core.backbone.loading import load_backbone
    from napari_hrdv2.core.files import atomic
    from napari_hrdv2.core.files.images import expand_inputs

    long = tmp_path / LONG
    call, kind = {
        "backbone": (lambda: load_backbone(str(long), cache=False), InputError),
        "backbone .pth": (lambda: load_backbone(f"{long}.pth", cache=False), InputError),
        "image": (lambda: read_image(f"{long}.tif"), InputError),
        "labels": (lambda: read_labels(f"{long}.png"), InputError),
        "model": (lambda: LinearSegmenter.load(f"{long}.hrdv2"), ModelFileError),
        "PCA basis": (lambda: PCABasis.load(f"{long}.safetensors"), InputError),
        "output": (lambda: atomic.write_bytes(f"{long}.bin", b"x"), InputError),
        "output folder": (lambda: atomic.check_output_folder(long / "sub"), InputError),
        "input folder": (lambda: expand_inputs([long]), InputError),
    }[what]
    with pytest.raises(kind, match="at most 255 bytes"):
        call()
    assert list(tmp_path.iterdir()) == []


def test_long_names_on_the_command_line(tmp_path, trained, capsys):
    from napari_hrdv2.core.backbone.identity import download_needed

    assert download_needed(str(tmp_path / LONG)) is None  # not a download: loading gives the clear error
    model, image = trained
    assert main(["features", str(image), "-o", str(tmp_path / f"{LONG}.npy")]) == 2
    assert main(["train", str(image), "--labels", str(image), "-o", str(tmp_path / f"{LONG}.hrdv2")]) == 2
    assert main(["segment", str(image), "--model", str(model), "-o", str(tmp_path / LONG)]) == 2
    assert main(["segment", str(image), "--model", str(tmp_path / f"{LONG}.hrdv2")]) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all("at most 255 bytes" in line for line in err), err
    # An input whose name fits but whose output name would not: that input fails with the reason, nothing raw.
    fits = tmp_path / ("s" * 248 + ".tif")
    fits.write_bytes(image.read_bytes())
    assert main(["segment", str(fits), "--model", str(model), "-q"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "at most 255 bytes" in err[0] and "Errno" not in err[0], err


# ---------------------------------------------------------------------------------------------- inputs and outputs
TINY = ["--device", "cpu", "--shifts", "none", "--tile-size", "none", "-q"]


def zarr_image(path: Path, image: np.ndarray) -> Path:
    import zarr

    zarr.save_array(str(path), image)
    return path


def broken_ome_zarr(path: Path) -> Path:
    """An OME-Zarr group whose metadata names a dataset path that is not there."""
    import zarr

    group = zarr.open_group(str(path), mode="w")
    group.attrs["multiscales"] = [
        {"version": "0.4", "axes": [{"name": "y"}, {"name": "x"}], "datasets": [{"path": "0"}]}
    ]
    return path


def test_match_png_is_never_an_input(tmp_path, tiny_backbone, capsys):
    from PIL import Image

    image, _ = two_texture_image(56)
    for name in ("a.png", "b.png"):
        Image.fromarray(image).save(tmp_path / name)
    before = (tmp_path / "a.png").read_bytes()
    args = ["match", tmp_path / "a.png", tmp_path / "b.png", "-o", tmp_path / "m.csv", "--png", tmp_path / "a.png",
            "--overwrite", "--backbone", tiny_backbone, *TINY]  # fmt: skip
    assert main([str(a) for a in args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--png" in err[0] and "destroy" in err[0], err
    assert (tmp_path / "a.png").read_bytes() == before and not (tmp_path / "m.csv").exists()


def test_pca_apply_never_reads_its_own_outputs(tmp_path, tiny_backbone):
    from PIL import Image

    image, _ = two_texture_image(56)
    folder = tmp_path / "d9"
    folder.mkdir()
    Image.fromarray(image).save(folder / "x.png")
    Image.fromarray(image[::-1]).save(folder / "x_pca.png")  # an earlier run's view (or the user's file)
    basis = tmp_path / "b.safetensors"
    fit = ["pca", "fit", folder / "x.png", "-o", basis, "--components", "3", "--backbone", tiny_backbone, *TINY]
    assert main([str(a) for a in fit]) == 0
    apply = ["pca", "apply", folder, "--basis", basis, "-o", folder, "--overwrite", "--device", "cpu", "-q"]
    assert main([str(a) for a in apply]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["x.png", "x_pca.png"]  # no x_pca_pca.png


def test_stream_segment_never_writes_over_its_input(tmp_path, trained):
    model, image_path = trained
    source = zarr_image(tmp_path / "in.zarr", tifffile.imread(image_path))
    before = sorted(p.relative_to(source) for p in source.rglob("*"))
    segmenter = LinearSegmenter.load(model)
    for target in (source, source / "labels.zarr"):
        with pytest.raises(InputError, match="is the input"):
            hr.stream_segment(segmenter, source, {"labels": target}, featurizer=segmenter.feature_config)
    assert sorted(p.relative_to(source) for p in source.rglob("*")) == before
    np.testing.assert_array_equal(hr.open_lazy(source)[...], tifffile.imread(image_path))


def test_a_broken_zarr_does_not_stop_the_batch(tmp_path, trained, capsys):
    model, image_path = trained
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("b.tif", "z.tif"):
        (folder / name).write_bytes(image_path.read_bytes())
    broken_ome_zarr(folder / "m.zarr")
    assert main(["segment", str(folder), "--model", str(model), "-o", str(tmp_path / "out"), "-q"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "m.zarr" in err[0] and "dataset path" in err[0], err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["b_labels.tif", "z_labels.tif"]


def test_open_lazy_names_a_missing_dataset_path(tmp_path):
    with pytest.raises(InputError, match="dataset path '0'"):
        hr.open_lazy(broken_ome_zarr(tmp_path / "m.zarr"))


def test_features_train_and_match_read_zarr_images(tmp_path, trained, tiny_backbone):
    _, image_path = trained
    image = tifffile.imread(image_path)
    source = zarr_image(tmp_path / "img.zarr", image)
    strokes = zarr_image(tmp_path / "strokes.zarr", tifffile.imread(image_path.parent / "strokes.tif"))
    backbone = ["--backbone", tiny_backbone, *TINY]
    assert main(["features", str(source), "-o", str(tmp_path / "f.npy"), *backbone]) == 0
    assert np.load(tmp_path / "f.npy").shape[-2:] == image.shape
    assert main(["train", str(source), "--labels", str(strokes), "-o", str(tmp_path / "m.hrdv2"), *backbone]) == 0
    assert main(["match", str(source), str(image_path), "-o", str(tmp_path / "m.csv"), *backbone]) == 0


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifos_folders_and_loops_give_one_line(tmp_path, trained, tiny_backbone, capsys):
    model, image_path = trained
    os.mkfifo(tmp_path / "pipe.tif")
    os.mkfifo(tmp_path / "pipe.hrdv2")
    os.mkfifo(tmp_path / "pipe.safetensors")
    (tmp_path / "loop.tif").symlink_to(tmp_path / "loop2.tif")
    (tmp_path / "loop2.tif").symlink_to(tmp_path / "loop.tif")
    (tmp_path / "folder.hrdv2").mkdir()
    out = str(tmp_path / "f.npy")
    cases = [
        (["features", str(tmp_path / "pipe.tif"), "-o", out, "--backbone", tiny_backbone], 2, "FIFO"),
        (["features", str(tmp_path / "loop.tif"), "-o", out, "--backbone", tiny_backbone], 2, "symbolic link loop"),
        (["train", str(image_path), "--labels", str(tmp_path / "pipe.tif"), "-o", str(tmp_path / "m.hrdv2")], 2, "FIFO"),
        (["segment", str(image_path), "--model", str(tmp_path / "pipe.hrdv2")], 4, "FIFO"),
        (["segment", str(image_path), "--model", str(tmp_path / "folder.hrdv2")], 4, "is a folder"),
        (["segment", str(tmp_path / "loop.tif"), "--model", str(model), "-o", str(tmp_path / "o")], 1, "loop"),
        (["segment", str(image_path), "--model", str(model), "--scheduler", "udp://x"], 2, "udp"),
        (["pca", "apply", str(image_path), "--basis", str(tmp_path / "pipe.safetensors"), "-o", str(tmp_path)], 2, "FIFO"),
        (["features", str(image_path), "-o", out, "--backbone", str(tmp_path / "pipe.safetensors")], 3, "FIFO"),
    ]  # fmt: skip
    for args, code, message in cases:
        assert main([*args, "-q"]) == code, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0] and "Traceback" not in err[0], (args, err)


def test_channels_last_tiff_with_channels(tmp_path, trained, tiny_backbone):
    image, _ = two_texture_image(112)
    channels = np.stack([image, 255 - image, image // 2, image, image], axis=-1)  # (112, 112, 5)
    tifffile.imwrite(tmp_path / "c5.tif", channels)
    with pytest.warns(UserWarning, match="channel 1 of 5"):
        np.testing.assert_array_equal(read_image(tmp_path / "c5.tif", channels=1), 255 - image)
    with pytest.raises(InputError, match="5 channels"):
        read_image(tmp_path / "c5.tif")
    args = ["features", tmp_path / "c5.tif", "-o", tmp_path / "f.npy", "--channels", "0", "--backbone", tiny_backbone]
    assert main([str(a) for a in [*args, *TINY]]) == 0
    assert np.load(tmp_path / "f.npy").shape[-2:] == (112, 112)


def test_a_batch_never_writes_into_a_zarr_input(tmp_path, trained, capsys):
    model, image_path = trained
    source = zarr_image(tmp_path / "x.zarr", tifffile.imread(image_path))
    before = sorted(p.relative_to(source) for p in source.rglob("*"))
    args = ["segment", str(source), "--model", str(model), "-o", str(source), "--format", "zarr", "--overwrite", "-q"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "inside it" in err[0], err
    assert sorted(p.relative_to(source) for p in source.rglob("*")) == before
