"""``napari-hrdv2 pca fit|apply`` and ``napari-hrdv2 match``, run in-process on known answers."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from skimage.io import imread, imsave

import napari_hrdv2 as hr
from conftest import two_texture_image
from napari_hrdv2.cli import main
from references import smooth_noise

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def opts(tiny_backbone) -> list[str]:
    return ["--backbone", tiny_backbone, "--device", "cpu", "--shifts", "neumann", "--distances", "3", "-q"]


@pytest.fixture(scope="module")
def config(tiny_backbone) -> hr.FeatureConfig:
    return hr.FeatureConfig(backbone=tiny_backbone, device="cpu", shifts="neumann", shift_distances=(3,))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A folder with two PNG images and one 2-plane TIFF stack."""
    folder = tmp_path_factory.mktemp("data")
    first, second = two_texture_image(56, seed=1)[0], two_texture_image(56, seed=2)[0][:, ::-1]
    imsave(folder / "a.png", first, check_contrast=False)
    imsave(folder / "b.png", np.ascontiguousarray(second), check_contrast=False)
    stack = np.stack([two_texture_image(56, seed=3)[0], two_texture_image(56, seed=4)[0].T])
    tifffile.imwrite(folder / "s.tif", stack)
    return folder, [first, np.ascontiguousarray(second), *stack]


def test_pca_fit_then_apply_colours_every_plane_with_one_basis(tmp_path, dataset, opts, config):
    folder, planes = dataset
    basis_path = tmp_path / "basis.safetensors"
    assert main(["pca", "fit", str(folder), "-o", str(basis_path), "--components", "4", *opts]) == 0
    basis = hr.PCABasis.load(basis_path)
    assert basis.n_components == 4 and basis.metadata["n_images"] == 4
    expected = hr.fit_pca(planes, config=config, n_components=4)
    np.testing.assert_allclose(basis.components, expected.components, atol=1e-5)

    out = tmp_path / "out"
    assert main(["pca", "apply", str(folder), "--basis", str(basis_path), "-o", str(out), "-q"]) == 0
    featurizer = hr.Featurizer(config)
    for name, plane in (("a_pca.png", planes[0]), ("b_pca.png", planes[1])):
        rgb = imread(out / name)
        np.testing.assert_allclose(rgb / 255, basis.to_rgb(featurizer.encode(plane)), atol=1 / 255 + 1e-4)
    pages = tifffile.imread(out / "s_pca.tif")
    assert pages.shape == (2, 56, 56, 3) and pages.dtype == np.uint8
    for page, plane in zip(pages, planes[2:]):  # fixed colour range of the fit: no per-plane rescaling
        np.testing.assert_allclose(page / 255, basis.to_rgb(featurizer.encode(plane)), atol=1 / 255 + 1e-4)

    assert main(["pca", "apply", str(folder / "a.png"), "--basis", str(basis_path), "-o", str(out), "-q"]) == 0
    side = tmp_path / "side"
    args = ["pca", "apply", str(folder / "a.png"), "--basis", str(basis_path), "-o", str(side), "--show", "3", "-q"]
    assert main([*args, "--side-by-side"]) == 0
    both = imread(side / "a_pca.png")
    assert both.shape == (56, 56 + 4 + 56, 3)
    grey = basis.to_grey(featurizer.encode(planes[0]), 3)
    np.testing.assert_allclose(both[:, 60:, 1] / 255, grey, atol=1 / 255 + 1e-4)


def test_pca_errors_are_one_line_with_exit_codes(tmp_path, dataset, opts, capsys):
    folder, _ = dataset
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"nonsense")
    assert main(["pca", "apply", str(folder), "--basis", str(junk), "-o", str(tmp_path / "o")]) == 4
    assert "not a PCA basis" in capsys.readouterr().err
    assert main(["pca", "fit", str(folder), "-o", str(tmp_path / "basis.npy"), *opts]) == 2
    assert ".safetensors" in capsys.readouterr().err
    assert main(["pca", "apply", str(folder), "--basis", str(junk), "-o", "x", "--show", "0,1"]) == 2


def test_match_writes_the_csv_and_the_line_drawing(tmp_path, opts):
    image = smooth_noise((126, 154))
    imsave(tmp_path / "a.png", image, check_contrast=False)
    imsave(tmp_path / "b.png", image[28:112, 42:140], check_contrast=False)
    csv, png = tmp_path / "m.csv", tmp_path / "lines.png"
    args = ["match", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(csv), "--png", str(png)]
    assert main([*args, "--top-k", "12", "--tile-size", "none", *opts]) == 0
    lines = csv.read_text().splitlines()
    assert lines[0] == "row_a,col_a,row_b,col_b,score" and len(lines) == 13
    table = np.array([[float(v) for v in line.split(",")] for line in lines[1:]])
    np.testing.assert_array_equal(table[:, 0] - table[:, 2], 28)
    np.testing.assert_array_equal(table[:, 1] - table[:, 3], 42)
    drawing = imread(png)
    assert drawing.shape == (126, 154 + 8 + 98, 3)
    assert main([*args, *opts]) == 2  # exists: refused without --overwrite
