"""The forward engine on every family: equal to transformers, RoPE with any stride, facets, layers, threads."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import napari_hrdv2 as hr
from napari_hrdv2.core.backbone.loading import load_backbone
from napari_hrdv2.core.backbone.vit import forward_tokens, rope_cos_sin
from napari_hrdv2.core.features.preprocess import to_rgb01
from references import reference_hrdv2


def _pixels(backbone, image):
    rgb = torch.from_numpy(to_rgb01(image)).permute(2, 0, 1)
    return (rgb - torch.tensor(backbone.mean).view(3, 1, 1)) / torch.tensor(backbone.std).view(3, 1, 1)


def test_dinov3_forward_and_rope_equal_transformers(tiny_dinov3):
    backbone = load_backbone(tiny_dinov3)
    assert (backbone.family, backbone.patch_size, backbone.num_registers) == ("dinov3", 16, 4)
    pixels = torch.randn(2, 3, 48, 80, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        tokens, _ = forward_tokens(backbone, pixels)
        expected = backbone.model(pixel_values=pixels).last_hidden_state[:, 5:]
        cos, sin = backbone.model.rope_embeddings(pixels)
    mine = rope_cos_sin(backbone.parts.rope_inv_freq, (3, 5), patch_size=16, stride=16, dtype=torch.float32)
    assert torch.equal(mine[0], cos) and torch.equal(mine[1], sin)  # bit for bit at stride == patch
    torch.testing.assert_close(tokens.flatten(2).transpose(1, 2), expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("fixture", ["tiny_dinov3", "tiny_backbone_registers"])
def test_cls_attention_equals_eager_attention(fixture, request):
    from transformers import AutoModel

    folder = request.getfixturevalue(fixture)
    backbone = load_backbone(folder)
    assert backbone.model.config._attn_implementation == "sdpa"  # the model itself is never switched to eager
    eager = AutoModel.from_pretrained(folder, attn_implementation="eager").eval()
    patch = backbone.patch_size
    pixels = torch.randn(1, 3, 3 * patch, 4 * patch, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        _, attention = forward_tokens(backbone, pixels)
        output = eager(pixel_values=pixels, output_attentions=True)
    expected = output.attentions[-1][0, :, 0, 5:].reshape(2, 3, 4)
    torch.testing.assert_close(attention[0], expected, atol=1e-5, rtol=0)


FAMILY_OPTIONS = [
    dict(shifts="neumann", shift_distances=(3,), flips=True),
    dict(shifts="neumann", shift_distances=(2,), stride=8),  # stride < patch: RoPE / positions on the real grid
    dict(shifts="neumann", shift_distances=(1,), stride=5, resize="nearest"),
]


@pytest.mark.parametrize("fixture", ["tiny_backbone_registers", "tiny_dinov3"])
@pytest.mark.parametrize("options", FAMILY_OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_features_and_attention_equal_reference_loop_per_family(fixture, options, request):
    folder = request.getfixturevalue(fixture)
    image = (np.random.default_rng(11).random((33, 41)) * 1000).astype(np.uint16)  # not multiples of 14 or 16
    config = hr.FeatureConfig(backbone=folder, device="cpu", tile_size=None, storage_dtype="float32", **options)
    featurizer = hr.Featurizer(config)
    encoding = featurizer.encode(image)
    assert encoding.features().shape == (128, 33, 41)
    np.testing.assert_allclose(encoding.features(), reference_hrdv2(featurizer, image), atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(encoding.attention(), reference_hrdv2(featurizer, image, attention=True), atol=1e-6)


@pytest.mark.parametrize("fixture", ["tiny_backbone", "tiny_dinov3"])
def test_facets_and_layers_are_the_blocks_projections_and_outputs(fixture, request):
    """key/query/value = the chosen block's projections of its normalised input; layer=i = block i's output + final norm."""
    folder = request.getfixturevalue(fixture)
    backbone = load_backbone(folder)
    model = backbone.model
    patch = backbone.patch_size
    pixels = torch.randn(1, 3, 2 * patch, 3 * patch, generator=torch.Generator().manual_seed(4))
    captured = {}
    blocks = backbone.parts.blocks
    handles = [
        getattr(blocks[index], role).register_forward_hook(
            lambda m, i, o, key=(index, role): captured.__setitem__(key, o[0, -6:].T.reshape(-1, 2, 3))
        )
        for index in (0, 1)
        for role in ("key", "query", "value")
    ]
    try:
        with torch.no_grad():
            output = model(pixel_values=pixels, output_hidden_states=True)
    finally:
        for handle in handles:
            handle.remove()
    final_norm = backbone.parts.final_norm
    with torch.no_grad():
        for facet in ("key", "query", "value"):
            for layer in (0, None, -2):
                tokens, _ = forward_tokens(backbone, pixels, facet=facet, layer=layer, with_attention=False)
                index = 1 if layer is None else layer % 2
                torch.testing.assert_close(tokens[0], captured[(index, facet)], atol=1e-5, rtol=1e-5)
        tokens, _ = forward_tokens(backbone, pixels, layer=0, with_attention=False)
        expected = final_norm(output.hidden_states[1])[0, -6:].T.reshape(-1, 2, 3)
        torch.testing.assert_close(tokens[0], expected, atol=1e-5, rtol=1e-5)
        with pytest.raises(ValueError, match="outside"):
            forward_tokens(backbone, pixels, layer=2)


def test_key_facet_encoding_is_linear_compatible_and_recorded(tiny_dinov3):
    image = np.random.default_rng(5).random((40, 50)).astype(np.float32)
    config = hr.FeatureConfig(backbone=tiny_dinov3, device="cpu", tile_size=None, shift_distances=(2,), facet="key")
    encoding = hr.Featurizer(config).encode(image)
    weight = np.random.default_rng(6).standard_normal((3, 128)).astype(np.float32)
    np.testing.assert_allclose(
        encoding.project(weight), np.einsum("oc,chw->ohw", weight, encoding.features()), atol=1e-4
    )
    assert hr.FeatureConfig.from_dict(config.to_dict()) == config
    assert config.feature_signature()["facet"] == "key"
    assert config.replace(layer=-2).feature_signature() != config.feature_signature()
    with pytest.raises(hr.InputError, match="facet"):
        hr.FeatureConfig(facet="keys")
    with pytest.raises(hr.InputError, match="layer=5 is outside this backbone's 2 blocks"):
        hr.Featurizer(config.replace(layer=5)).encode(image)


def test_model_trained_on_another_facet_is_refused(tiny_backbone):
    from conftest import two_texture_image

    image, truth = two_texture_image(56)
    labels = np.zeros(truth.shape, dtype=np.uint8)
    labels[5:-5, 10:13], labels[5:-5, 40:43] = 1, 2
    config = hr.FeatureConfig(backbone=tiny_backbone, device="cpu", shifts="none", tile_size=None)
    segmenter = hr.LinearSegmenter().fit(hr.Featurizer(config).encode(image), labels)
    keys = hr.Featurizer(config.replace(facet="key")).encode(image)
    with pytest.raises(hr.InputError, match="facet: model 'token' vs image 'key'"):
        segmenter.predict(keys)


def test_concurrent_encodes_on_one_backbone_equal_serial_ones(tiny_backbone):
    """Two threads encoding with one loaded model (two widgets at once) must not mix their attention maps."""
    backbone = load_backbone(tiny_backbone)
    config = hr.FeatureConfig(backbone=tiny_backbone, device="cpu", shifts="neumann", shift_distances=(2,),
                              tile_size=None, storage_dtype="float32")  # fmt: skip
    rng = np.random.default_rng(7)
    images = [rng.random((70, 84)).astype(np.float32), rng.random((70, 84)).astype(np.float32) ** 3]
    serial = [hr.Featurizer(config, backbone=backbone).encode(image) for image in images]
    results: dict[int, list] = {0: [], 1: []}
    barrier = threading.Barrier(2)

    def work(k: int) -> None:
        featurizer = hr.Featurizer(config, backbone=backbone)  # one featurizer each: only the model is shared
        barrier.wait()
        for _ in range(6):
            results[k].append(featurizer.encode(images[k]))

    threads = [threading.Thread(target=work, args=(k,)) for k in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for k in (0, 1):
        assert len(results[k]) == 6
        for encoding in results[k]:
            np.testing.assert_allclose(
                encoding.tiles[0].attention.numpy(), serial[k].tiles[0].attention.numpy(), atol=1e-6
            )
            np.testing.assert_allclose(encoding.tiles[0].maps.numpy(), serial[k].tiles[0].maps.numpy(), atol=1e-5)


def test_patch_16_padding_and_token_centres(tiny_dinov3):
    """Sides that are not multiples of 16 are padded, then cropped; with stride == patch the resize equals
    F.interpolate(align_corners=False) to the padded size, i.e. token (i, j) sits at pixel 16 i + 7.5."""
    image = np.random.default_rng(8).random((35, 50)).astype(np.float32)
    config = hr.FeatureConfig(
        backbone=tiny_dinov3, device="cpu", shifts="none", tile_size=None, dtype="float32", storage_dtype="float32"
    )
    featurizer = hr.Featurizer(config)
    backbone = featurizer.backbone
    from napari_hrdv2.core.features.encoding import pad_to_grid

    padded = pad_to_grid(_pixels(backbone, image), patch_size=16, stride=16)
    assert padded.shape[-2:] == (48, 64)
    with torch.no_grad():
        tokens, _ = forward_tokens(backbone, padded[None])
    expected = F.interpolate(tokens, size=(48, 64), mode="bilinear", align_corners=False)[0, :, :35, :50]
    np.testing.assert_allclose(featurizer.encode(image).features(), expected.numpy(), atol=1e-5)
