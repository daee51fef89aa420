"""PCA basis files: bound to their backbone weights, values checked on load, integrity checksum; pca apply
writes PNGs without third-party tracebacks on a full disk and checks the room first."""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

import napari_hrdv2 as hr
from napari_hrdv2.core.analysis.pca import CHECKSUM_KEY, backbone_identity


@pytest.fixture(scope="module")
def encoding(tiny_backbone):
    from conftest import two_texture_image

    image, _ = two_texture_image(56)
    return hr.Featurizer(hr.FeatureConfig(backbone=tiny_backbone, shifts="none", tile_size=None)).encode(image)


@pytest.fixture(scope="module")
def saved(encoding, tmp_path_factory):
    path = hr.fit_pca(encoding, n_pixels=300).save(tmp_path_factory.mktemp("basis") / "b.safetensors")
    with safe_open(str(path), framework="numpy") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}, dict(handle.metadata())  # noqa: SIM118


def write(tmp_path, saved, *, tensors=None, meta=None, drop_checksum=True):
    tensors_, meta_ = dict(saved[0]), dict(saved[1])
    tensors_.update(tensors or {})
    meta_.update(meta or {})
    if drop_checksum:
        meta_.pop(CHECKSUM_KEY, None)
    path = tmp_path / "crafted.safetensors"
    save_file({k: np.ascontiguousarray(v) for k, v in tensors_.items()}, str(path), metadata=meta_)
    return path


def test_a_basis_records_and_checks_its_backbone_weights(encoding, saved, tmp_path):
    from conftest import two_texture_image
    from napari_hrdv2.testing import save_random_dinov2

    basis = hr.PCABasis.load(write(tmp_path, saved, drop_checksum=False))
    assert basis.backbone_fingerprint is not None and basis.metadata["backbone_weights"]
    assert basis.metadata["backbone_resolved"] == str(__import__("pathlib").Path(encoding.config.backbone).resolve())
    basis.to_rgb(encoding)  # the same weights: fine
    other = save_random_dinov2(tmp_path / "other", seed=7)
    image, _ = two_texture_image(56)
    features = hr.Featurizer(encoding.config.replace(backbone=str(other))).encode(image)
    with pytest.raises(hr.InputError, match="other backbone weights"):
        basis.to_rgb(features)


def test_relative_backbones_are_recorded_resolved(tmp_path, monkeypatch):
    (tmp_path / "bb" / "tiny").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    identity = backbone_identity({"backbone": "bb/tiny"}, np.ones(4, np.float32))
    assert identity["backbone_resolved"] == str((tmp_path / "bb" / "tiny").resolve())
    assert len(identity["backbone_weights"]) == 12


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: {"components": np.full_like(t["components"], np.nan)}, "NaN or infinite"),
        (lambda t: {"high": t["low"].copy()}, "colour range"),
        (lambda t: {"high": np.full_like(t["high"], np.inf)}, "NaN or infinite"),
        (lambda t: {"mean": t["mean"].astype(np.int32)}, "dtype int32"),
    ],
)
def test_bases_with_unusable_values_are_refused(tmp_path, saved, change, message):
    with pytest.raises(hr.ModelFileError, match=message):
        hr.PCABasis.load(write(tmp_path, saved, tensors=change(saved[0])))


def test_an_edited_basis_fails_its_integrity_check_and_old_bases_load(tmp_path, saved):
    header = json.loads(saved[1]["hrdv2_pca"])
    header["metadata"]["backbone"] = "elsewhere"
    edited = write(tmp_path, saved, meta={"hrdv2_pca": json.dumps(header)}, drop_checksum=False)
    with pytest.raises(hr.ModelFileError, match="integrity check"):
        hr.PCABasis.load(edited)
    assert hr.PCABasis.load(write(tmp_path, saved)).n_components == 3  # no checksum: written before it existed


def test_a_png_on_a_full_disk_is_one_output_error_without_third_party_traceback(tmp_path, monkeypatch, capfd):
    import gc

    from napari_hrdv2.core.errors import OutputError
    from napari_hrdv2.core.files import atomic

    real_open = open

    class Full:
        def __init__(self, *args, **kwargs):
            self.handle = real_open(*args, **kwargs)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic, "open", Full, raising=False)
    with pytest.raises(OutputError):
        atomic.write_png(tmp_path / "x.png", np.zeros((8, 8, 3), np.uint8))
    gc.collect()
    assert "Exception ignored" not in capfd.readouterr().err
    assert not list(tmp_path.iterdir())


def test_pca_apply_checks_the_room_first(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from napari_hrdv2.core.analysis.basis_files import check_pca_room
    from napari_hrdv2.core.errors import OutputError

    image = tmp_path / "big.tif"
    image.write_bytes(b"\0" * 400_000)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(10**6, 10**6, 1000))
    with pytest.raises(OutputError, match="Not enough room"):
        check_pca_room([image], tmp_path / "out")
