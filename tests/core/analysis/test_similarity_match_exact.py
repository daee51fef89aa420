"""Similarity search and patch matching on hand-made (C, H, W) features with exact answers: defaults,
messages, odd image sizes, the larger-image-first path, refinement and the match table / drawing helpers."""

from __future__ import annotations

import types

import numpy as np
import pytest

from napari_hrdv2.core.analysis.match import (
    DEFAULT_PATCH_SIZE,
    MATCH_COLUMNS,
    MAX_PATCHES,
    draw_matches,
    match_patches,
    matches_to_csv_text,
    patch_centres,
    patch_size_of,
    read_matches_csv,
    side_by_side,
)
from napari_hrdv2.core.analysis.similarity import (
    MAX_REGION_PIXELS,
    cls_vector,
    iter_similarity_maps,
    pixel_vector,
    region_vector,
    similarity_maps,
    similarity_to,
    stack_similarity,
)
from napari_hrdv2.core.errors import InputError


def message(call, *args, **kwargs) -> str:
    with pytest.raises(InputError) as caught:
        call(*args, **kwargs)
    return str(caught.value)


def two_vector_features() -> np.ndarray:
    """(2, 3, 4): the left two columns hold (1, 0) scaled by the row + 1, the right two (0, 2)."""
    features = np.zeros((2, 3, 4), np.float32)
    for row in range(3):
        features[0, row, :2] = row + 1
        features[1, row, 2:] = 2.0
    return features


def test_pixel_and_region_vectors_are_exact_and_name_bad_regions():
    features = two_vector_features()
    vector = pixel_vector(features, 2, 1)
    assert vector.dtype == np.float32
    np.testing.assert_array_equal(vector, [3, 0])
    assert message(pixel_vector, features, 3, 0) == "Pixel (3, 0) lies outside the 3x4 image."
    assert message(pixel_vector, features, 0, 4) == "Pixel (0, 4) lies outside the 3x4 image."
    left = np.zeros((3, 4), bool)
    left[:, :2] = True
    np.testing.assert_allclose(region_vector(features, left), [2, 0])
    labels = np.where(left, 1, 7)
    np.testing.assert_allclose(region_vector(features, labels=labels, value=7), [0, 2])
    assert region_vector(features, left).dtype == np.float32
    assert MAX_REGION_PIXELS == 200_000
    one = region_vector(features, np.ones((3, 4), bool), max_pixels=1)  # one random pixel of the image
    assert any(np.array_equal(one, features[:, r, c]) for r in range(3) for c in range(4))
    np.testing.assert_array_equal(one, region_vector(features, np.ones((3, 4), bool), max_pixels=1, seed=0))
    assert message(region_vector, features) == (
        "Give a region: mask=(H, W) bool array, or labels=(H, W) array and value=label."
    )
    assert message(region_vector, features, labels=labels) == message(region_vector, features)
    assert message(region_vector, features, labels=labels[:2], value=1) == (
        "labels have shape (2, 4), the image is (3, 4)."
    )
    assert message(region_vector, features, left[:, :3]) == "The region mask has shape (3, 3), the image is (3, 4)."
    assert (
        message(region_vector, features, labels=labels, value=5) == "The region is empty: no pixel has label value 5."
    )
    assert message(region_vector, features, np.zeros((3, 4), bool)) == "The region is empty: no pixel has the mask."


def test_similarity_to_is_the_exact_cosine_and_checks_the_width():
    features = two_vector_features()
    features[:, 0, 0] = 0.0  # a zero feature: similarity 0, not NaN
    diagonal = np.array([1.0, 1.0])
    similarity = similarity_to(features, diagonal * 5)  # the length of the reference does not matter
    assert similarity.dtype == np.float32 and similarity.shape == (3, 4)
    expected = np.full((3, 4), 1 / np.sqrt(2))
    expected[0, 0] = 0.0
    np.testing.assert_allclose(similarity, expected, atol=1e-6)
    np.testing.assert_allclose(similarity_to(features, [[0.0, -1.0]])[:, 2:], -1.0)  # any shape, flattened
    assert message(similarity_to, features, np.ones(3)) == (
        "The reference vector has 3 values but the features have 2 channels: take the reference from features of "
        "the same backbone."
    )
    np.testing.assert_array_equal(similarity_to(features, np.zeros(2)), 0.0)


def test_similarity_maps_over_planes_in_order_with_progress_and_stack_similarity():
    a, b = two_vector_features(), two_vector_features()[::-1].copy()  # b: channels swapped
    seen = []
    maps = similarity_maps([a, b], np.array([1.0, 0.0]), progress=seen.append)
    assert len(maps) == 2
    np.testing.assert_allclose(maps[0][:, :2], 1.0)
    np.testing.assert_allclose(maps[1][:, 2:], 1.0)
    assert [(p.done, p.total, p.message) for p in seen] == [
        (0, 2, "Similarity"),
        (1, 2, "Similarity of features 0"),
        (2, 2, "Similarity of features 1"),
    ]
    steps = iter_similarity_maps([a], np.array([0.0, 1.0]))
    assert next(steps).message == "Similarity"
    stacked = stack_similarity([a, b], 0, 3)  # default plane 0: the reference is a's (0, 2)
    assert stacked.shape == (2, 3, 4) and stacked.dtype == np.float32
    np.testing.assert_allclose(stacked[0][:, 2:], 1.0)
    np.testing.assert_allclose(stacked[1][:, :2], 1.0)
    np.testing.assert_allclose(stack_similarity([a, b], 0, 3, plane=1)[0][:, :2], 1.0)
    assert message(stack_similarity, [a, b], 0, 0, plane=2) == "Plane 2 is out of range (0..1)."
    assert message(stack_similarity, [a, b], 0, 0, plane=-1) == "Plane -1 is out of range (0..1)."
    assert (
        message(cls_vector, np.zeros((14, 14), np.uint8))
        == "cls_vector needs config=FeatureConfig(...) or featurizer=."
    )


def test_patch_size_comes_from_the_encoding_the_preset_or_the_folder(tmp_path):
    assert DEFAULT_PATCH_SIZE == 14 and MAX_PATCHES == 4096
    assert patch_size_of(types.SimpleNamespace(patch_size=16)) == 16
    assert patch_size_of(np.zeros((2, 3, 3))) == 14  # bare features: no config
    assert patch_size_of(types.SimpleNamespace(config=types.SimpleNamespace(backbone="dinov3_vits16"))) == 16
    assert patch_size_of(types.SimpleNamespace(config=types.SimpleNamespace(backbone="dinov2_vits14"))) == 14
    (tmp_path / "config.json").write_text('{"patch_size": 8}')
    assert patch_size_of(types.SimpleNamespace(config=types.SimpleNamespace(backbone=str(tmp_path)))) == 8
    (tmp_path / "config.json").write_text("{}")
    assert patch_size_of(types.SimpleNamespace(config=types.SimpleNamespace(backbone=str(tmp_path)))) == 14
    (tmp_path / "config.json").write_text("not json")
    assert patch_size_of(types.SimpleNamespace(config=types.SimpleNamespace(backbone=str(tmp_path)))) == 14
    assert patch_size_of(types.SimpleNamespace(config=types.SimpleNamespace(backbone=str(tmp_path / "x")))) == 14


def test_patch_centres_of_odd_and_tiny_images():
    rows, cols = patch_centres(9, 13, 4)  # 2 x 3 patches, centres at (4 - 1) // 2 = 1 + 4k
    np.testing.assert_array_equal(rows, [1, 1, 1, 5, 5, 5])
    np.testing.assert_array_equal(cols, [1, 5, 9, 1, 5, 9])
    rows, cols = patch_centres(5, 5, 5)
    assert (rows.tolist(), cols.tolist()) == ([2], [2])
    rows, cols = patch_centres(3, 2, 14)  # smaller than one patch: one patch whose centre lies outside
    assert rows.size == 0 and cols.size == 0
    rows, cols = patch_centres(10, 3, 14)  # the row centre (6) fits, the column one does not
    assert rows.size == 0
    assert patch_centres(20, 20, 14)[0].tolist() == [6]
    rows, cols = patch_centres(14, 27, 14)  # one whole patch across: one column, not a second one at 20
    assert (rows.tolist(), cols.tolist()) == ([6], [6])
    assert patch_centres(20, 6, 14)[1].size == 0 and patch_centres(6, 20, 14)[0].size == 0  # centre 6 == side
    assert patch_centres(7, 20, 14)[0].tolist() == [6]


def blocks(order) -> np.ndarray:
    """(4, 8, 8): 4 x 4 patches, patch k (row-major) holds unit vector order[k]."""
    dense = np.zeros((4, 8, 8), np.float32)
    for k, (r, c) in enumerate([(0, 0), (0, 4), (4, 0), (4, 4)]):
        dense[order[k], r : r + 4, c : c + 4] = 1.0
    return dense


def test_match_patches_when_a_is_larger_assigns_b_and_keeps_a_b_columns():
    small = blocks([3, 2, 1, 0])
    large = np.zeros((4, 8, 12), np.float32)
    large[:, :, :8] = blocks([0, 1, 2, 3])
    large[:, :, 8:] = 0.5  # a third column of patches, equally like every vector
    matches = match_patches(large, small, patch_size=4)
    assert matches.shape == (4, 5) and matches.dtype == np.float64
    pairs = {(int(r_a), int(c_a)): (int(r_b), int(c_b)) for r_a, c_a, r_b, c_b, _ in matches}
    assert pairs == {(1, 1): (5, 5), (1, 5): (5, 1), (5, 1): (1, 5), (5, 5): (1, 1)}
    np.testing.assert_allclose(matches[:, 4], 1.0)
    assert match_patches(large, small, 2, patch_size=4).shape == (2, 5)  # top_k positional
    assert message(match_patches, small, small, top_k=0) == "top_k must be a positive number of matches, got 0."
    assert message(match_patches, np.zeros((8, 8)), small) == (
        "enc_a must be an Encoding or (C, H, W) features, got shape (8, 8)."
    )
    assert message(match_patches, small, np.zeros((4, 8))) == (
        "enc_b must be an Encoding or (C, H, W) features, got shape (4, 8)."
    )


def test_max_patches_widens_the_grid_step():
    dense = np.random.default_rng(0).standard_normal((3, 16, 16)).astype(np.float32)
    assert match_patches(dense, dense, patch_size=2).shape == (64, 5)
    assert match_patches(dense, dense, patch_size=2, max_patches=20).shape == (16, 5)  # step 2 -> 3 -> 4
    matched = match_patches(dense, dense, patch_size=2, max_patches=20)
    np.testing.assert_array_equal(matched[:, :2], matched[:, 2:4])  # an image matches itself
    np.testing.assert_allclose(matched[:, 4], 1.0)
    assert set(matched[:, 0].tolist()) == {1, 5, 9, 13}


def test_refinement_moves_each_match_to_the_most_similar_pixel_within_a_patch():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((6, 8, 8)).astype(np.float32)
    b = rng.standard_normal((6, 12, 12)).astype(np.float32)
    exact = {(1, 1): (2, 3), (1, 5): (2, 7), (5, 1): (6, 3), (5, 5): (6, 7)}
    for (row, col), (to_row, to_col) in exact.items():
        b[:, row, col] = a[:, row, col] + 0.3 * rng.standard_normal(6)  # b's patch centre: like a's, not equal
        b[:, to_row, to_col] = a[:, row, col]  # a's patch feature itself, one row and two columns off
    coarse = match_patches(a, b, patch_size=4)
    assert {(int(r), int(c)): (int(rb), int(cb)) for r, c, rb, cb, _ in coarse} == {k: k for k in exact}
    assert np.all(coarse[:, 4] < 1.0)
    refined = match_patches(a, b, patch_size=4, refine=True)
    assert {(int(r), int(c)): (int(rb), int(cb)) for r, c, rb, cb, _ in refined} == exact
    np.testing.assert_allclose(refined[:, 4], 1.0, atol=1e-6)
    # b first: b is still the larger image, so its columns (now 0 and 1) are the refined ones
    swapped = match_patches(b, a, patch_size=4, refine=True)
    assert {(int(rb), int(cb)): (int(r), int(c)) for r, c, rb, cb, _ in swapped} == exact
    top = match_patches(a, b, 2, patch_size=4, refine=True)
    assert top.shape == (2, 5) and np.all(np.diff(top[:, 4]) <= 0)


def test_match_table_text_and_reader(tmp_path):
    table = np.array([[1, 2, 3, 4, 0.5], [5.9, 6, 7, 8, -0.1234567]])
    text = matches_to_csv_text(table)
    assert text == "row_a,col_a,row_b,col_b,score\n1,2,3,4,0.500000\n5,6,7,8,-0.123457\n"
    assert MATCH_COLUMNS == ("row_a", "col_a", "row_b", "col_b", "score")
    path = tmp_path / "m.csv"
    path.write_text(text + "\n")
    np.testing.assert_allclose(read_matches_csv(path), [[1, 2, 3, 4, 0.5], [5, 6, 7, 8, -0.123457]])
    path.write_text(matches_to_csv_text(np.zeros((0, 5))))
    assert read_matches_csv(path).shape == (0, 5)
    path.write_text("a,b\n1,2\n")
    assert message(read_matches_csv, path) == "'m.csv' is not a match table (header row_a,col_a,row_b,col_b,score)."
    path.write_text("")
    assert "is not a match table" in message(read_matches_csv, path)


def test_side_by_side_and_drawn_matches():
    a = np.zeros((4, 5), np.uint8)
    b = np.full((6, 3), 255, np.uint8)
    b[0, 0] = 0
    canvas, offset = side_by_side(a, b)
    assert offset == 5 + 8 and canvas.shape == (6, 16, 3) and canvas.dtype == np.uint8
    assert canvas[:, 5:13].max() == 0 and canvas[4:, :5].max() == 0  # the gap and below the shorter image
    assert side_by_side(a, b, gap=2)[1] == 7
    np.testing.assert_array_equal(draw_matches(a, b, np.zeros((0, 5))), canvas)
    image = np.zeros((20, 20), np.uint8)
    matches = np.array([[10, 10, 10, 10, 0.9], [2, 2, 17, 17, 0.1]])
    drawn = draw_matches(image, image, matches)
    np.testing.assert_array_equal(drawn[10, 10], [0, 255, 60])  # best: green
    np.testing.assert_array_equal(drawn[2, 2], [255, 0, 60])  # worst: red
    np.testing.assert_array_equal(drawn[17, 17 + 28], [255, 0, 60])
    only_best = draw_matches(image, image, matches, max_lines=1)
    np.testing.assert_array_equal(only_best[2, 2], [128, 128, 128])  # a flat image shows mid grey, not drawn on
    np.testing.assert_array_equal(only_best[10, 10], [255, 0, 60])  # a single line: its own lowest score
