"""Progressive encoding: every partial result is the exact HR-Dv2 average over the transforms done so far."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_hrdv2 as hr
from napari_hrdv2.core.backbone.vit import forward_tokens
from napari_hrdv2.core.features.encoding import PartialEncoding, pad_to_grid
from napari_hrdv2.core.features.preprocess import to_rgb01
from napari_hrdv2.core.progress import Progress


def reference_average(featurizer: hr.Featurizer, image: np.ndarray, transforms) -> np.ndarray:
    """mean over ``transforms`` of T^-1(bilinear resize(features(T(x)))) with torch's interpolate (one tile)."""
    backbone = featurizer.backbone
    patch = stride = backbone.patch_size
    rgb = torch.from_numpy(to_rgb01(image, normalize=featurizer.config.normalize)).permute(2, 0, 1)
    pixels = (rgb - torch.tensor(backbone.mean).view(3, 1, 1)) / torch.tensor(backbone.std).view(3, 1, 1)
    height, width = pixels.shape[-2:]
    total = torch.zeros(backbone.embed_dim, height, width, dtype=torch.float64)
    for transform in transforms:
        padded = pad_to_grid(transform.apply(pixels), patch_size=patch, stride=stride)
        with torch.no_grad():
            tokens, _ = forward_tokens(backbone, padded[None], stride=stride)
        grid_h, grid_w = tokens.shape[-2:]
        # Token centres at 7 + 14 i: align_corners=False bilinear resize to the padded size, then crop.
        full = torch.nn.functional.interpolate(
            tokens.double(), size=(grid_h * patch, grid_w * patch), mode="bilinear", align_corners=False
        )[0, :, :height, :width]
        total += transform.invert(full)
    return (total / len(transforms)).float().numpy()


def test_partial_encodings_equal_the_average_over_the_transforms_done(tiny_backbone):
    image = (np.random.default_rng(3).random((56, 70)) * 255).astype(np.uint8)  # 4 x 5 patches, no padding
    config = hr.FeatureConfig(
        backbone=tiny_backbone, device="cpu", tile_size=None, storage_dtype="float32", shifts="neumann",
        shift_distances=(3,), batch_size=2,
    )  # fmt: skip
    featurizer = hr.Featurizer(config)
    steps = featurizer.iter_encode(image, progressive=True)
    partials, progress = [], []
    while True:
        try:
            item = next(steps)
        except StopIteration as finished:
            final = finished.value
            break
        (partials if isinstance(item, PartialEncoding) else progress).append(item)
    assert all(isinstance(p, Progress) for p in progress)
    # identity alone first, then batches of 2 of the remaining 4 shifts; the last batch is the returned encoding
    assert [p.n_transforms for p in partials] == [1, 3] and partials[0].total == 5
    probe = torch.arange(12.0).view(1, 3, 4)
    assert torch.equal(config.transforms[0].apply(probe), probe), "the identity comes first"
    for partial in [*partials, None]:
        encoding = final if partial is None else partial.encoding
        done = config.transforms[: encoding.n_transforms]
        expected = reference_average(featurizer, image, done)
        np.testing.assert_allclose(encoding.features(), expected, atol=2e-4, rtol=1e-4)
    # the first partial is plain DINOv2 at pixel resolution: it differs from the full average
    assert np.abs(partials[0].encoding.features() - final.features()).max() > 1e-3


def test_progressive_final_encoding_is_identical_to_the_plain_one(tiny_config, two_textures):
    image = two_textures[0][:70, 21:91]
    featurizer = hr.Featurizer(tiny_config.replace(tile_size=56, tile_overlap=8))
    plain = featurizer.encode(image)
    steps = featurizer.iter_encode(image, progressive=True)
    partials = []
    while True:
        try:
            item = next(steps)
        except StopIteration as finished:
            progressive = finished.value
            break
        if isinstance(item, PartialEncoding):
            partials.append(item)
    assert len(plain.tiles) > 1 and partials[0].n_transforms == 1
    channels = [0, 17, 99]
    np.testing.assert_array_equal(progressive.features(channels), plain.features(channels))
    # a partial over several tiles is a complete encoding: features, projection and samples agree
    partial = partials[0].encoding
    weight = np.random.default_rng(0).standard_normal((2, partial.n_features)).astype(np.float32)
    dense = partial.features()
    np.testing.assert_allclose(partial.project(weight), np.einsum("oc,chw->ohw", weight, dense), atol=1e-3)
    np.testing.assert_allclose(partial.sample([5, 60], [7, 65]), dense[:, [5, 60], [7, 65]].T, atol=1e-4)


@pytest.mark.parametrize("progressive", [False, True])
def test_cancelling_a_progressive_encode_stops_it(tiny_config, two_textures, progressive):
    steps = hr.Featurizer(tiny_config).iter_encode(two_textures[0], progressive=progressive)
    next(steps)
    next(steps)
    steps.close()
    with pytest.raises(StopIteration):
        next(steps)
