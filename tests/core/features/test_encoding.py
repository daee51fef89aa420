"""HR-Dv2 features, projections, samples and attention against plain reference computations."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import napari_hrdv2 as hr
from napari_hrdv2.core.backbone.vit import forward_tokens
from napari_hrdv2.core.features.encoding import pad_to_grid
from napari_hrdv2.core.features.preprocess import to_rgb01
from references import reference_hrdv2

OPTIONS = [
    dict(shifts="none"),
    dict(shifts="neumann", shift_distances=(2,)),
    dict(shifts="moore", shift_distances=(1, 3)),
    dict(shifts="moore", shift_distances=(2,), flips=True),
    dict(shifts="neumann", shift_distances=(1,), resize="nearest"),
    dict(shifts="neumann", shift_distances=(2,), stride=7),
    dict(shifts="moore", shift_distances=(1,), flips=True, stride=5, normalize="percentile"),
    dict(shifts="neumann", shift_distances=(2,), rotations=True),
    dict(shifts="neumann", shift_distances=(1,), flips=True, rotations=True, stride=5),
    dict(shifts="none", rotations=True, resize="nearest"),
]


@pytest.fixture(scope="module")
def odd_image():
    rng = np.random.default_rng(1)
    return (rng.random((45, 59)) * 4000).astype(np.uint16)  # sides not multiples of 14


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_features_equal_reference_loop(tiny_backbone, odd_image, options):
    config = hr.FeatureConfig(
        backbone=tiny_backbone, device="cpu", tile_size=None, dtype="float32", storage_dtype="float32", **options
    )
    featurizer = hr.Featurizer(config)
    encoding = featurizer.encode(odd_image)
    features = encoding.features()
    expected = reference_hrdv2(featurizer, odd_image)
    assert features.shape == (128, 45, 59) and features.dtype == np.float32
    np.testing.assert_allclose(features, expected, atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(encoding.attention(), reference_hrdv2(featurizer, odd_image, attention=True), atol=1e-6)


def test_bilinear_resize_equals_interpolate_align_corners_false(tiny_backbone):
    """With stride == patch size the resize is F.interpolate(align_corners=False) to the padded size, cropped."""
    image = np.random.default_rng(2).random((30, 40)).astype(np.float32)
    config = hr.FeatureConfig(
        backbone=tiny_backbone, device="cpu", shifts="none", tile_size=None, dtype="float32", storage_dtype="float32"
    )
    featurizer = hr.Featurizer(config)
    backbone = featurizer.backbone
    rgb = torch.from_numpy(to_rgb01(image)).permute(2, 0, 1)
    pixels = (rgb - torch.tensor(backbone.mean).view(3, 1, 1)) / torch.tensor(backbone.std).view(3, 1, 1)
    padded = pad_to_grid(pixels, patch_size=14, stride=14)
    with torch.no_grad():
        tokens, _ = forward_tokens(backbone, padded[None])
    expected = F.interpolate(tokens, size=padded.shape[-2:], mode="bilinear", align_corners=False)[0, :, :30, :40]
    np.testing.assert_allclose(featurizer.encode(image).features(), expected.numpy(), atol=1e-5)


def test_project_equals_linear_map_of_features(tiny_backbone, odd_image):
    config = hr.FeatureConfig(backbone=tiny_backbone, device="cpu", shift_distances=(2,), flips=True, tile_size=None)
    encoding = hr.Featurizer(config).encode(odd_image)
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((4, encoding.n_features)).astype(np.float32)
    bias = rng.standard_normal(4).astype(np.float32)
    expected = np.einsum("oc,chw->ohw", weight, encoding.features()) + bias[:, None, None]
    np.testing.assert_allclose(encoding.project(weight, bias), expected, atol=1e-4, rtol=1e-4)


def test_sample_and_channel_subset_equal_indexing(tiny_backbone, odd_image):
    config = hr.FeatureConfig(backbone=tiny_backbone, device="cpu", shift_distances=(3,), stride=7, tile_size=None)
    encoding = hr.Featurizer(config).encode(odd_image)
    features = encoding.features()
    rng = np.random.default_rng(4)
    rows, cols = rng.integers(0, 45, 200), rng.integers(0, 59, 200)
    np.testing.assert_allclose(encoding.sample(rows, cols), features[:, rows, cols].T, atol=1e-5)
    np.testing.assert_allclose(encoding.features(channels=[5, 0, 77]), features[[5, 0, 77]], atol=1e-6)
    np.testing.assert_allclose(encoding.features(channels=slice(10, 20)), features[10:20], atol=1e-6)
    with pytest.raises(hr.InputError, match="inside"):
        encoding.sample([45], [0])


def test_sample_gathers_only_used_tokens_with_the_same_values(tiny_backbone, odd_image):
    """The compact sampling matrix times the used tokens equals the full matrix times every token, bit for bit.

    Two tiles, so pixels in the overlap add up; pixels cluster in one corner, so most tokens are unused.
    Mutation killed: renumbering the used tokens out of order (wrong features, same shapes).
    """
    from napari_hrdv2.core.features.encoding import _sampling_matrix

    config = hr.FeatureConfig(backbone=tiny_backbone, device="cpu", shift_distances=(3,), tile_size=42, tile_overlap=14)
    encoding = hr.Featurizer(config).encode(odd_image)
    tile_maps = encoding.tiles[0]
    rng = np.random.default_rng(5)
    rows, cols = rng.integers(0, 10, 300), rng.integers(0, 12, 300)
    full = torch.sparse.mm(_sampling_matrix(tile_maps, rows, cols), tile_maps.token_rows())
    compact, used = _sampling_matrix(tile_maps, rows, cols, compact=True)
    assert used.size < 0.7 * tile_maps.token_rows().shape[0]
    torch.testing.assert_close(
        tile_maps.token_rows(used), tile_maps.token_rows()[torch.from_numpy(used)], rtol=0, atol=0
    )
    torch.testing.assert_close(torch.sparse.mm(compact, tile_maps.token_rows(used)), full, rtol=0, atol=0)
    assert len(encoding.tiles) > 1
    np.testing.assert_allclose(encoding.sample(rows, cols), encoding.features()[:, rows, cols].T, atol=1e-5)


def test_attention_equals_eager_attention(tiny_backbone_registers):
    """Our cheap CLS row (sdpa model + q/k hooks) equals transformers' eager attention probabilities."""
    from transformers import AutoModel

    image = np.random.default_rng(5).random((56, 70)).astype(np.float32)
    config = hr.FeatureConfig(
        backbone=tiny_backbone_registers, device="cpu", shifts="none", tile_size=None, dtype="float32"
    )  # the eager model below computes in float32
    encoding = hr.Featurizer(config).encode(image)
    eager = AutoModel.from_pretrained(tiny_backbone_registers, attn_implementation="eager").eval()
    backbone = hr.Featurizer(config).backbone
    rgb = torch.from_numpy(to_rgb01(image)).permute(2, 0, 1)
    pixels = (rgb - torch.tensor(backbone.mean).view(3, 1, 1)) / torch.tensor(backbone.std).view(3, 1, 1)
    with torch.no_grad():
        output = eager(pixel_values=pixels[None], output_attentions=True)
    cls_row = output.attentions[-1][0, :, 0, 1 + 4 :].reshape(2, 4, 5)  # 2 heads, 4x5 patches, 4 registers skipped
    expected = F.interpolate(cls_row[None], size=(56, 70), mode="bilinear", align_corners=False)[0]
    np.testing.assert_allclose(encoding.attention(), expected.numpy(), atol=1e-6)
    assert encoding.attention().shape == (2, 56, 70)


def test_transform_inverse_undoes_shift_and_flip_in_reverse_order():
    image = torch.arange(5 * 7, dtype=torch.float32).reshape(1, 5, 7)
    for transform in hr.make_transforms("moore", (1, 2), flips=True):
        assert torch.equal(transform.invert(transform.apply(image)), image)
    combined = hr.Transform((1, 2), "horizontal")
    upstream_order = torch.flip(torch.roll(combined.apply(image), (-1, -2), (-2, -1)), (-1,))
    assert not torch.equal(upstream_order, image)  # undoing the shift first is wrong


def test_rotations_invert_in_reverse_order_and_read_one_axis_each():
    """90/270-degree copies are W x H; every output axis of the inverse reads one axis of the copy."""
    image = torch.arange(5 * 7, dtype=torch.float32).reshape(1, 5, 7)
    rows, cols = np.meshgrid(np.arange(5), np.arange(7), indexing="ij")
    for transform in hr.make_transforms("moore", (1, 3), flips=True, rotations=True):
        copy = transform.apply(image)
        assert copy.shape[-2:] == ((7, 5) if transform.transposes else (5, 7))
        assert torch.equal(transform.invert(copy), image)
        # Label every pixel of the copy by its (row, col) and read the labels back through the inverse.
        copy_rows, copy_cols = np.meshgrid(*(np.arange(n) for n in copy.shape[-2:]), indexing="ij")
        read_rows = transform.invert(torch.from_numpy(copy_rows)).numpy()
        read_cols = transform.invert(torch.from_numpy(copy_cols)).numpy()
        index_rows, index_cols = transform.inverse_source_index(5, 0), transform.inverse_source_index(7, 1)
        if transform.transposes:  # output row r reads copy column index_rows[r]
            np.testing.assert_array_equal(read_cols, index_rows[rows])
            np.testing.assert_array_equal(read_rows, index_cols[cols])
        else:
            np.testing.assert_array_equal(read_rows, index_rows[rows])
            np.testing.assert_array_equal(read_cols, index_cols[cols])
    rotated_flip = hr.Transform((1, 2), "horizontal", 1)
    wrong_order = torch.roll(
        torch.rot90(torch.flip(rotated_flip.apply(image), (-1,)), -1, (-2, -1)), (-1, -2), (-2, -1)
    )
    assert not torch.equal(wrong_order, image)  # unflipping before unrotating is wrong


def test_rotated_encoding_samples_and_projects_its_features(tiny_backbone, odd_image):
    config = hr.FeatureConfig(
        backbone=tiny_backbone, device="cpu", shifts="none", rotations=True, flips=True, tile_size=None, batch_size=3
    )
    encoding = hr.Featurizer(config).encode(odd_image)
    assert encoding.n_transforms == 8 and encoding.tiles[0].maps.shape[2:] == (4, 5)
    features = encoding.features()
    rng = np.random.default_rng(9)
    rows, cols = rng.integers(0, 45, 100), rng.integers(0, 59, 100)
    np.testing.assert_allclose(encoding.sample(rows, cols), features[:, rows, cols].T, atol=1e-5)


def test_transform_set_sizes():
    assert len(hr.FeatureConfig(shifts="moore", shift_distances=(1, 2)).transforms) == 17
    assert len(hr.FeatureConfig(shifts="neumann", shift_distances=(3,)).transforms) == 5
    assert len(hr.FeatureConfig(shifts="neumann", shift_distances=(3,), flips=True).transforms) == 15
    assert hr.FeatureConfig(shifts="none").transforms == (hr.Transform(),)
    assert len(hr.FeatureConfig(shifts="neumann", shift_distances=(3,), rotations=True).transforms) == 20
    both = hr.FeatureConfig(shifts="none", flips=True, rotations=True).transforms
    assert len(both) == 8 and both[0] == hr.Transform()
    probe = torch.arange(12.0).reshape(3, 4)
    assert len({tuple(t.apply(probe).flatten().tolist()) for t in both}) == 8  # the 8 symmetries, no duplicate


def test_progress_and_cancel(tiny_config, two_textures):
    image, _ = two_textures
    steps = hr.Featurizer(tiny_config.replace(batch_size=2)).iter_encode(image)
    seen = []
    try:
        while True:
            seen.append(next(steps))
    except StopIteration as done:
        encoding = done.value
    assert isinstance(encoding, hr.Encoding)
    assert [p.done for p in seen] == [0, 2, 4, 5] and all(p.total == 5 for p in seen)

    cancel = threading.Event()
    calls = []

    def on_progress(update):
        calls.append(update.done)
        if update.done >= 1:
            cancel.set()

    with pytest.raises(hr.Cancelled):
        hr.Featurizer(tiny_config.replace(batch_size=1)).encode(image, progress=on_progress, cancel=cancel)
    assert calls == [0, 1]


def test_automatic_batch_size_is_one_on_the_cpu(tiny_config, two_textures):
    image, _ = two_textures
    assert tiny_config.batch_size is None  # auto: one copy per forward pass on the CPU
    assert [p.done for p in hr.Featurizer(tiny_config).iter_encode(image)] == [0, 1, 2, 3, 4, 5]
    assert (
        tiny_config.resolved_batch_size("cuda") == 4
        and tiny_config.replace(batch_size=3).resolved_batch_size("cpu") == 3
    )


def test_out_of_memory_halves_batch_and_retries(tiny_config, two_textures, monkeypatch):
    import napari_hrdv2.core.features.encoding as encoding_module

    image, _ = two_textures
    expected = hr.Featurizer(tiny_config).encode(image).features()
    real_forward = encoding_module.forward_tokens
    batch_sizes = []

    def flaky_forward(backbone, pixels, **kwargs):
        batch_sizes.append(pixels.shape[0])
        if pixels.shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return real_forward(backbone, pixels, **kwargs)

    monkeypatch.setattr(encoding_module, "forward_tokens", flaky_forward)
    featurizer = hr.Featurizer(tiny_config.replace(batch_size=4))
    np.testing.assert_allclose(featurizer.encode(image).features(), expected, atol=1e-6)
    assert batch_sizes[:3] == [4, 2, 1]


def test_float16_storage_halves_memory_and_rounds_like_float16(tiny_backbone, odd_image):
    """With float32 compute the default storage keeps float16 maps: half the bytes, features within float16
    rounding of float32 storage."""
    base = hr.FeatureConfig(backbone=tiny_backbone, device="cpu", shift_distances=(2,), tile_size=None, dtype="float32")
    assert base.storage_dtype == "auto"
    half = hr.Featurizer(base).encode(odd_image)
    full = hr.Featurizer(base.replace(storage_dtype="float32")).encode(odd_image)
    assert half.tiles[0].maps.dtype == torch.float16 and full.tiles[0].maps.dtype == torch.float32
    attention_bytes = half.tiles[0].attention.numel() * 4
    assert half.nbytes - attention_bytes == (full.nbytes - attention_bytes) // 2
    exact = full.features()
    # Each stored value is rounded to 11 significant bits; the output is a convex combination of stored values.
    scale = np.abs(np.concatenate([m.float().numpy().ravel() for m in full.lowres_maps])).max()
    np.testing.assert_allclose(half.features(), exact, atol=scale * 2**-11)
    np.testing.assert_array_equal(half.attention(), full.attention())  # attention stays float32
    weight = np.random.default_rng(7).standard_normal((3, half.n_features)).astype(np.float32)
    np.testing.assert_allclose(
        half.project(weight), np.einsum("oc,chw->ohw", weight, half.features()), atol=1e-4, rtol=1e-4
    )


@pytest.mark.parametrize(("storage", "bits"), [("float16", 11), ("bfloat16", 8)])
def test_16_bit_storage_rounds_within_the_unit_roundoff_of_its_format(tiny_backbone, odd_image, storage, bits):
    """float32 compute, 16-bit maps: features within scale * 2^-bits of float32 storage, where bits is the format's
    significand (11 for float16, 8 for bfloat16): rounding to nearest errs by at most 2^-bits relative per stored
    value, and each output pixel is a convex combination of stored values. The stored maps are the float32 maps
    rounded to nearest in that format, bit for bit (the format really is the one named)."""
    base = hr.FeatureConfig(backbone=tiny_backbone, device="cpu", shift_distances=(2,), tile_size=None, dtype="float32")
    rounded = hr.Featurizer(base.replace(storage_dtype=storage))
    encoding = rounded.encode(odd_image)
    full = hr.Featurizer(base.replace(storage_dtype="float32"), backbone=rounded.backbone).encode(odd_image)
    assert encoding.tiles[0].maps.dtype == getattr(torch, storage)
    for stored, exact in zip(encoding.lowres_maps, full.lowres_maps, strict=True):
        torch.testing.assert_close(stored, exact.to(stored.dtype), rtol=0, atol=0)
    scale = np.abs(np.concatenate([m.float().numpy().ravel() for m in full.lowres_maps])).max()
    error = np.abs(encoding.features() - full.features()).max()
    assert 0 < error <= scale * 2**-bits, (error / scale, 2**-bits)
    np.testing.assert_array_equal(encoding.attention(), full.attention())  # attention stays float32


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_16_bit_compute_keeps_its_tokens_and_resizes_them_in_float32(tiny_backbone, dtype):
    """bfloat16 / float16 compute (what dtype="auto" picks on bfloat16 CPUs / CUDA): auto storage keeps the
    backbone's 16-bit tokens bit for bit, the features are their float32 resize (float32 tolerance) and within
    one rounding of the format (2^-8 bfloat16, 2^-11 float16, relative) of a resize done in that format."""
    compute = getattr(torch, dtype)
    image = np.random.default_rng(2).random((30, 40)).astype(np.float32)
    config = hr.FeatureConfig(backbone=tiny_backbone, device="cpu", shifts="none", tile_size=None, dtype=dtype)
    featurizer = hr.Featurizer(config)
    assert featurizer.dtype == compute
    encoding = featurizer.encode(image)
    backbone = featurizer.backbone
    rgb = torch.from_numpy(to_rgb01(image)).permute(2, 0, 1)
    pixels = (rgb - torch.tensor(backbone.mean).view(3, 1, 1)) / torch.tensor(backbone.std).view(3, 1, 1)
    padded = pad_to_grid(pixels, patch_size=14, stride=14)
    with torch.no_grad():
        tokens, attention = forward_tokens(backbone, padded[None].to(compute))
    assert tokens.dtype == compute and encoding.tiles[0].maps.dtype == compute
    torch.testing.assert_close(encoding.tiles[0].maps[0], tokens[0], rtol=0, atol=0)
    size = padded.shape[-2:]
    expected = F.interpolate(tokens.float(), size=size, mode="bilinear", align_corners=False)[0, :, :30, :40]
    features = encoding.features()
    np.testing.assert_allclose(features, expected.numpy(), atol=1e-5)
    in_format = F.interpolate(tokens, size=size, mode="bilinear", align_corners=False)[0, :, :30, :40].float()
    bits = 8 if compute == torch.bfloat16 else 11
    np.testing.assert_allclose(in_format.numpy(), features, rtol=2**-bits, atol=1e-6)
    assert attention.dtype == torch.float32  # from 16-bit queries and keys, softmax in float32
    cls = F.interpolate(attention, size=size, mode="bilinear", align_corners=False)[0, :, :30, :40]
    np.testing.assert_allclose(encoding.attention(), cls.numpy(), atol=1e-6)


def test_storage_dtype_follows_a_16_bit_compute_dtype(tiny_backbone):
    image = np.random.default_rng(8).random((28, 42)).astype(np.float32)
    config = hr.FeatureConfig(backbone=tiny_backbone, device="cpu", dtype="bfloat16", shifts="none", tile_size=None)
    assert hr.Featurizer(config).encode(image).tiles[0].maps.dtype == torch.bfloat16
    with pytest.raises(hr.InputError, match="storage_dtype"):
        hr.FeatureConfig(storage_dtype="float8")


def test_encoding_memory_holds_low_resolution_maps_only(tiny_backbone):
    image = np.random.default_rng(6).random((140, 140)).astype(np.float32)
    config = hr.FeatureConfig(backbone=tiny_backbone, device="cpu", shift_distances=(2,), tile_size=None)
    encoding = hr.Featurizer(config).encode(image)
    assert encoding.tiles[0].maps.shape == (9, 128, 10, 10)
    assert encoding.nbytes < 9 * 130 * 10 * 10 * 4 + 1024  # not C x H x W
    assert "9 transforms" in repr(encoding)
