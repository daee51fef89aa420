"""pca apply on files: the uint8 view (alone and side by side), outputs per image and per stack, skips,
progress messages, the room estimate and the refusals made before any encoding."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

import napari_hrdv2 as hr
from napari_hrdv2.core.analysis import basis_files
from napari_hrdv2.core.analysis.basis_files import (
    PCA_BYTES_PER_INPUT_BYTE,
    SIDE_BY_SIDE_GAP,
    check_pca_room,
    iter_apply_pca_files,
    pca_view,
)
from napari_hrdv2.core.analysis.pca import PCABasis


def run(steps):
    seen = []
    try:
        while True:
            seen.append(next(steps))
    except StopIteration as stop:
        return seen, stop.value


def unit_basis() -> PCABasis:
    """Two-channel features scored as themselves, range [0, 1] on each of 3 components."""
    components = np.array([[1, 0], [0, 1], [1, 0]], np.float32)
    return PCABasis(np.zeros(2, np.float32), components, np.zeros(3, np.float32), np.ones(3, np.float32))


def test_pca_view_is_rounded_uint8_and_side_by_side_has_a_black_gap():
    features = np.zeros((2, 2, 3), np.float32)
    features[0] = [[0.0, 0.5, 1.0], [0.2, 0.0, 2.0]]
    features[1] = 0.25
    view = pca_view(unit_basis(), features)
    assert view.dtype == np.uint8 and view.shape == (2, 3, 3)
    np.testing.assert_array_equal(view[..., 0], [[0, 128, 255], [51, 0, 255]])
    np.testing.assert_array_equal(view[..., 1], 64)
    np.testing.assert_array_equal(view[..., 2], view[..., 0])
    np.testing.assert_array_equal(pca_view(unit_basis(), features, components=1)[..., 0], 64)
    assert SIDE_BY_SIDE_GAP == 4 and PCA_BYTES_PER_INPUT_BYTE == 0.25
    image = np.array([[0, 100, 200], [50, 150, 250]], np.uint8)
    both = pca_view(unit_basis(), features, image=image, normalize="dtype")
    assert both.shape == (2, 3 + 4 + 3, 3)
    np.testing.assert_array_equal(both[:, 3:7], 0)
    np.testing.assert_array_equal(both[:, 7:], view)
    np.testing.assert_array_equal(both[:, :3, 0], image)  # "dtype": uint8 shown as stored
    stretched = pca_view(unit_basis(), features, image=image)  # default "percentile": stretched to 0..255
    assert stretched[0, 0, 0] == 0 and stretched[1, 2, 0] == 255


def test_room_check_adds_a_quarter_of_each_input_per_folder(tmp_path, monkeypatch):
    first, second = tmp_path / "a.png", tmp_path / "b.png"
    first.write_bytes(b"x" * 400)
    second.write_bytes(b"x" * 800)
    asked = []
    monkeypatch.setattr(
        "napari_hrdv2.core.files.atomic.check_output_folder", lambda folder, n: asked.append((folder, n))
    )
    check_pca_room([first, second, tmp_path / "gone.png"], tmp_path / "out")
    assert asked == [(tmp_path / "out", 300)]
    asked.clear()
    check_pca_room([first], None, side_by_side=True)
    assert asked == [(tmp_path, 200)]


@pytest.fixture(scope="module")
def featurizer(tiny_backbone):
    config = hr.FeatureConfig(backbone=tiny_backbone, device="cpu", shifts="none", tile_size=None, dtype="float32")
    return hr.Featurizer(config)


def test_apply_writes_a_png_per_image_and_a_tif_per_stack_then_skips(tmp_path, featurizer):
    from conftest import two_texture_image

    image, _ = two_texture_image(28)
    tifffile.imwrite(tmp_path / "one.tif", image)
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([image, image[::-1]]))
    basis = hr.fit_pca(featurizer.encode(image), n_pixels=200)
    seen, report = run(iter_apply_pca_files([tmp_path], tmp_path / "out", basis, featurizer))
    assert sorted(p.name for p in report.written) == ["one_pca.png", "stack_pca.tif"]
    assert not report.failed and not report.skipped
    assert seen[0].message == "Loading the backbone" and (seen[0].done, seen[0].total) == (0, 2)
    finished = [p for p in seen if p.message.startswith("Finished")]
    assert [(p.done, p.message) for p in finished] == [(1, "Finished one.tif"), (2, "Finished stack.tif")]
    assert any(p.message == "stack.tif plane 2/2" for p in seen)
    pages = tifffile.imread(tmp_path / "out" / "stack_pca.tif")
    assert pages.shape == (2, 28, 28, 3) and pages.dtype == np.uint8
    np.testing.assert_array_equal(pages[0], pca_view(basis, featurizer.encode(image)))
    _, again = run(iter_apply_pca_files([tmp_path], tmp_path / "out", basis, featurizer))
    assert sorted(p.name for p in again.skipped) == ["one_pca.png", "stack_pca.tif"] and not again.written
    _, wide = run(
        iter_apply_pca_files(
            [tmp_path / "one.tif"], tmp_path / "out", basis, featurizer, side_by_side=True, overwrite=True
        )
    )
    assert [p.name for p in wide.written] == ["one_pca.png"]
    import imageio.v3 as iio

    assert iio.imread(tmp_path / "out" / "one_pca.png").shape == (28, 28 + 4 + 28, 3)


def test_apply_refuses_before_encoding(tmp_path, featurizer, monkeypatch):
    basis = unit_basis()
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(hr.InputError, match=r"Components \(0, 5\) requested but the basis has 3"):
        run(iter_apply_pca_files([tmp_path / "a.png"], None, basis, featurizer, components=(0, 5)))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(hr.InputError, match="^No input images found.$"):
        run(iter_apply_pca_files([empty], None, basis, featurizer))
    assert basis_files.PCA_TAG == "_pca"
