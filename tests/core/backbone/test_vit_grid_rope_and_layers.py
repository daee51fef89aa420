"""The ViT forward on a tiny random-init backbone: token grids of any stride, RoPE coordinates with exact
values, layer choice (negative, out of range), outputs without attention, the CLS token and shapes."""

from __future__ import annotations

import math

import pytest
import torch

from napari_hrdv2.core.backbone import vit
from napari_hrdv2.core.backbone.loading import load_backbone
from napari_hrdv2.core.backbone.vit import forward_cls, forward_tokens, rope_cos_sin, token_grid


def test_token_grid_of_any_stride():
    assert token_grid(14, 14, patch_size=14, stride=14) == (1, 1)
    assert token_grid(28, 42, patch_size=14, stride=14) == (2, 3)
    assert token_grid(28, 42, patch_size=14, stride=7) == (3, 5)
    assert token_grid(32, 16, patch_size=16, stride=4) == (5, 1)


def test_rope_coordinates_are_token_centres_over_the_side():
    inv_freq = torch.tensor([1.0, 0.5])
    cos, sin = rope_cos_sin(inv_freq, (2, 3), patch_size=16, stride=16, dtype=torch.float32)
    assert cos.shape == sin.shape == (6, 8) and cos.dtype == torch.float32
    # stride == patch: coordinate (i + 0.5) / n mapped to [-1, 1]; angle 2 pi * coord * inv_freq
    rows = [2 * (i + 0.5) / 2 - 1 for i in range(2)]
    cols = [2 * (j + 0.5) / 3 - 1 for j in range(3)]
    for t, (r, c) in enumerate((r, c) for r in rows for c in cols):
        angles = [2 * math.pi * r * f for f in (1.0, 0.5)] + [2 * math.pi * c * f for f in (1.0, 0.5)]
        expected = torch.tensor(angles * 2)
        torch.testing.assert_close(cos[t], torch.cos(expected), atol=1e-6, rtol=0)
        torch.testing.assert_close(sin[t], torch.sin(expected), atol=1e-6, rtol=0)
    # stride 8 over a padded side of 16 + 8 = 24: centres 8 and 16, coordinates -1/3 and 1/3
    cos, sin = rope_cos_sin(torch.tensor([1.0]), (2, 1), patch_size=16, stride=8, dtype=torch.float64)
    assert cos.dtype == torch.float64
    torch.testing.assert_close(sin[:, 0], torch.sin(torch.tensor([-2 * math.pi / 3, 2 * math.pi / 3])).double())
    assert torch.equal(vit._rotate_half(torch.tensor([1.0, 2.0, 3.0, 4.0])), torch.tensor([-3.0, -4.0, 1.0, 2.0]))


@pytest.fixture(scope="module")
def backbone(tiny_backbone):
    return load_backbone(tiny_backbone, device="cpu", dtype=torch.float32)


def test_layers_strides_and_attention_of_the_forward(backbone):
    pixels = torch.randn(2, 3, 28, 42, generator=torch.Generator().manual_seed(0))
    tokens, attention = forward_tokens(backbone, pixels)
    assert tokens.shape == (2, backbone.embed_dim, 2, 3) and attention.shape == (2, backbone.num_heads, 2, 3)
    assert (
        attention.dtype == torch.float32 and bool((attention > 0).all()) and bool((attention.sum((-1, -2)) < 1).all())
    )
    same, none = forward_tokens(backbone, pixels, with_attention=False, stride=14, layer=backbone.depth - 1)
    assert none is None and torch.equal(same, tokens)
    first, _ = forward_tokens(backbone, pixels, layer=0, with_attention=False)
    negative, _ = forward_tokens(backbone, pixels, layer=-backbone.depth, with_attention=False)
    assert torch.equal(first, negative) and not torch.allclose(first, tokens)
    depth = backbone.depth
    with pytest.raises(ValueError) as caught:
        forward_tokens(backbone, pixels, layer=depth)
    assert str(caught.value) == f"layer={depth} is outside this backbone's {depth} blocks (0..{depth - 1})."
    with pytest.raises(ValueError, match=f"layer={-depth - 1} is outside"):
        forward_tokens(backbone, pixels, layer=-depth - 1)
    dense, dense_attention = forward_tokens(backbone, pixels, stride=7)
    assert dense.shape[-2:] == (3, 5) and dense_attention.shape[-2:] == (3, 5)
    keys, _ = forward_tokens(backbone, pixels, facet="key", with_attention=False)
    assert keys.shape == tokens.shape and not torch.allclose(keys, tokens)
    cls = forward_cls(backbone, pixels)
    assert cls.shape == (2, backbone.embed_dim)
    single = forward_cls(backbone, pixels[:1])
    torch.testing.assert_close(single[0], cls[0], atol=1e-5, rtol=1e-5)
