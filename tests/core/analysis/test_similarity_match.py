"""Similarity search (pixel, region, CLS token, many planes) and patch matching, on known answers."""

from __future__ import annotations

import numpy as np
import pytest

import napari_hrdv2 as hr
from napari_hrdv2.core.analysis import similarity
from napari_hrdv2.core.analysis.match import MATCH_COLUMNS, match_patches, matches_to_csv_text, read_matches_csv
from references import smooth_noise


@pytest.fixture(scope="module")
def featurizer(tiny_backbone):
    return hr.Featurizer(
        hr.FeatureConfig(backbone=tiny_backbone, device="cpu", shifts="neumann", shift_distances=(3,), tile_size=None)
    )


@pytest.fixture(scope="module")
def textures(featurizer):
    from conftest import two_texture_image

    image, truth = two_texture_image(84)
    return image, truth, featurizer.encode(image)


def test_region_vector_is_the_mean_feature_of_the_region(textures):
    _, truth, encoding = textures
    dense = encoding.features()
    expected = dense[:, truth == 2].mean(axis=1)
    np.testing.assert_allclose(similarity.region_vector(encoding, labels=truth, value=2), expected, atol=1e-5)
    np.testing.assert_allclose(similarity.region_vector(encoding, truth == 2), expected, atol=1e-5)
    with pytest.raises(hr.InputError, match="empty"):
        similarity.region_vector(encoding, labels=truth, value=7)


def test_similarity_to_a_vector_is_the_cosine_of_the_dense_features(textures):
    _, truth, encoding = textures
    dense = encoding.features()
    vector = similarity.region_vector(encoding, labels=truth, value=1)
    expected = np.einsum("c,chw->hw", vector, dense) / (np.linalg.norm(dense, axis=0) * np.linalg.norm(vector))
    found = similarity.similarity_to(encoding, vector)
    np.testing.assert_allclose(found, expected, atol=1e-4)
    np.testing.assert_allclose(similarity.similarity_to(dense, vector), expected, atol=1e-4)
    assert found[truth == 1].mean() > found[truth == 2].mean()  # its own region is the more similar
    pixel = similarity.pixel_vector(encoding, 10, 10)
    np.testing.assert_allclose(
        similarity.similarity_to(encoding, pixel), hr.cosine_similarity_map(encoding, 10, 10), atol=1e-5
    )
    with pytest.raises(hr.InputError, match="128 channels"):
        similarity.similarity_to(encoding, np.ones(5))


def test_one_reference_vector_over_many_planes_never_builds_dense_features(featurizer, textures, monkeypatch):
    image, _, encoding = textures
    planes = [image, image[::-1].copy(), np.ascontiguousarray(image[:, ::-1])]
    vector = similarity.pixel_vector(encoding, 40, 70)
    expected = [similarity.similarity_to(featurizer.encode(plane), vector) for plane in planes]
    seen_channels = []
    real_features = hr.Encoding.features

    def counting(self, channels=None):
        result = real_features(self, channels)
        seen_channels.append(result.shape[0])
        return result

    monkeypatch.setattr(hr.Encoding, "features", counting)
    import napari_hrdv2.core.features.encoding as encoding_module

    monkeypatch.setattr(encoding_module, "_NORM_BLOCK_ELEMENTS", 16 * 84 * 84)  # the norm's channel-block budget
    found = similarity.similarity_maps(np.stack(planes), vector, featurizer=featurizer)
    assert len(found) == 3
    for got, want in zip(found, expected):
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert seen_channels and max(seen_channels) <= 16  # only bounded channel blocks (for the norm), never (C, H, W)


def test_cls_token_is_the_backbone_cls_output(featurizer, textures):
    import torch

    from napari_hrdv2.core.features.encoding import pad_to_grid
    from napari_hrdv2.core.features.preprocess import to_rgb01

    image, _, encoding = textures
    cls = similarity.cls_vector(image, featurizer=featurizer)
    backbone = featurizer.backbone
    rgb = torch.from_numpy(to_rgb01(image)).permute(2, 0, 1)
    pixels = (rgb - torch.tensor(backbone.mean).view(3, 1, 1)) / torch.tensor(backbone.std).view(3, 1, 1)
    with torch.no_grad():
        expected = backbone.model(pixel_values=pad_to_grid(pixels, patch_size=14, stride=14)[None]).last_hidden_state
    np.testing.assert_allclose(cls, expected[0, 0].float().numpy(), atol=1e-5)  # any compute dtype: same pass
    assert similarity.similarity_to(encoding, cls).shape == (84, 84)


# ---------------------------------------------------------------------------------------------- matching
@pytest.fixture(scope="module")
def shifted_pair(featurizer):
    """A 126 x 154 textured image and a copy cropped at a known offset of (2, 3) patches."""
    image = smooth_noise((126, 154))
    offset = (28, 42)
    crop = image[offset[0] : offset[0] + 84, offset[1] : offset[1] + 98]
    return featurizer.encode(image), featurizer.encode(crop), offset


def test_cropped_copy_matches_at_the_known_offset(shifted_pair):
    enc_a, enc_b, (dy, dx) = shifted_pair
    matches = match_patches(enc_a, enc_b)
    assert matches.shape == (6 * 7, 5)  # every patch of the smaller image, one-to-one
    assert len({(r, c) for r, c in matches[:, :2]}) == len(matches)
    assert np.all(np.diff(matches[:, 4]) <= 0)
    np.testing.assert_array_equal(matches[:, 0] - matches[:, 2], dy)
    np.testing.assert_array_equal(matches[:, 1] - matches[:, 3], dx)
    swapped = match_patches(enc_b, enc_a, top_k=10)
    assert swapped.shape == (10, 5)
    np.testing.assert_array_equal(swapped[:, 2] - swapped[:, 0], dy)
    refined = match_patches(enc_a, enc_b, top_k=20, refine=True)
    offsets = np.stack([refined[:, 0] - refined[:, 2], refined[:, 1] - refined[:, 3]], axis=1)
    np.testing.assert_array_equal(np.median(offsets, axis=0), (dy, dx))
    assert np.mean(np.all(np.abs(offsets - (dy, dx)) <= 1, axis=1)) >= 0.8


def test_unrelated_image_does_not_match_at_that_offset(featurizer, shifted_pair):
    enc_a, _, (dy, dx) = shifted_pair
    other = featurizer.encode(smooth_noise((84, 98), seed=9))
    matches = match_patches(enc_a, other)
    assert np.mean((matches[:, 0] - matches[:, 2] == dy) & (matches[:, 1] - matches[:, 3] == dx)) < 0.3


def test_match_table_csv_round_trip(tmp_path, shifted_pair):
    enc_a, enc_b, _ = shifted_pair
    matches = match_patches(enc_a, enc_b, top_k=5)
    path = tmp_path / "m.csv"
    path.write_text(matches_to_csv_text(matches))
    assert path.read_text().splitlines()[0] == ",".join(MATCH_COLUMNS) == "row_a,col_a,row_b,col_b,score"
    np.testing.assert_allclose(read_matches_csv(path), matches, atol=1e-6)


def test_dense_features_match_their_permuted_patches():
    """(C, H, W) arrays: four 4 x 4 patches, each one unit vector, placed in reverse order in b: each patch of a
    matches the patch of b with its vector, with cosine similarity 1."""
    dense_a = np.zeros((4, 8, 8), np.float32)
    for k, (r, c) in enumerate([(0, 0), (0, 4), (4, 0), (4, 4)]):
        dense_a[k, r : r + 4, c : c + 4] = 1.0
    dense_b = dense_a[::-1].copy()  # patch k of a holds vector k; in b that patch holds vector 3 - k
    matches = match_patches(dense_a, dense_b, patch_size=4)
    centres = {(1, 1): (5, 5), (1, 5): (5, 1), (5, 1): (1, 5), (5, 5): (1, 1)}  # centres at (step - 1) // 2
    assert {(a_r, a_c): (b_r, b_c) for a_r, a_c, b_r, b_c, _ in matches.tolist()} == centres
    np.testing.assert_allclose(matches[:, 4], 1.0)
    with pytest.raises(hr.InputError, match="4- and 3-channel features"):
        match_patches(dense_a, dense_b[:3], patch_size=4)
