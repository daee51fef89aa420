"""Patch tokens, facets and CLS attention from a transformers DINOv2 / DINOv3 model.

The forward pass is run block by block over the transformers modules (each
block keeps its default, sdpa, attention). The block whose output is read is
opened up: its normalised input is projected to queries, keys and values here,
which gives the ``key`` / ``query`` / ``value`` facets and the CLS attention row
(one query against all keys, cheap) without forward hooks. Nothing is written
into the model while it runs, so any number of threads may encode with one
loaded model at once.

Overlapping patches (``stride < patch``) are embedded here: learned position
tables (DINOv2) are interpolated to the real token grid, and RoPE coordinates
(DINOv3) are computed for the real token centres, ``(i * stride + P / 2) / H``
of the padded image, which equals transformers' grid when ``stride == P``.

Module names differ between transformers versions (``q_proj`` / ``query``,
``o_proj`` / ``output.dense``...): :func:`vit_parts` looks them up by role
with fallbacks, and everything else (loaders included) goes through it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ..config import FACETS, Facet

if TYPE_CHECKING:
    from .loading import Backbone

__all__ = ["FACETS", "Facet", "BlockParts", "ViTParts", "vit_parts", "forward_tokens", "rope_cos_sin", "token_grid"]


# ---------------------------------------------------------------- module lookup


def _find(module: torch.nn.Module, paths: Sequence[str], what: str) -> torch.nn.Module:
    for path in paths:
        found: torch.nn.Module | None = module
        for name in path.split("."):
            found = getattr(found, name, None) if found is not None else None
        if isinstance(found, torch.nn.Module):
            return found
    raise RuntimeError(
        f"This transformers version names the {what} differently (looked for {list(paths)} in "
        f"{type(module).__name__}); napari-hrdv2 does not know its layout."
    )


@dataclass(frozen=True)
class BlockParts:
    """The submodules of one transformer block, by role."""

    layer: torch.nn.Module
    norm1: torch.nn.Module
    query: torch.nn.Linear
    key: torch.nn.Linear
    value: torch.nn.Linear
    output: torch.nn.Linear
    layer_scale1: torch.nn.Parameter
    norm2: torch.nn.Module
    mlp: torch.nn.Module
    layer_scale2: torch.nn.Parameter


@dataclass(frozen=True)
class ViTParts:
    """The submodules of a transformers DINOv2 / DINOv3 model, by role."""

    embeddings: torch.nn.Module
    patch_projection: torch.nn.Conv2d
    blocks: tuple[BlockParts, ...]
    final_norm: torch.nn.Module
    rope_inv_freq: torch.Tensor | None  # (head_dim / 4,) for RoPE models, None for learned positions


def _layer_scale(module: torch.nn.Module) -> torch.nn.Parameter:
    for name in ("lambda1", "gamma", "weight"):
        value = getattr(module, name, None)
        if isinstance(value, torch.nn.Parameter):
            return value
    raise RuntimeError(f"Unknown layer scale layout {type(module).__name__}.")


def block_parts(layer: torch.nn.Module) -> BlockParts:
    """The roles of one transformers ViT block (transformers 4.x and 5.x names)."""
    attention = _find(layer, ("attention",), "attention")
    return BlockParts(
        layer=layer,
        norm1=_find(layer, ("norm1", "layernorm_before"), "first norm"),
        query=_find(attention, ("q_proj", "attention.query", "query"), "query projection"),  # type: ignore[arg-type]
        key=_find(attention, ("k_proj", "attention.key", "key"), "key projection"),  # type: ignore[arg-type]
        value=_find(attention, ("v_proj", "attention.value", "value"), "value projection"),  # type: ignore[arg-type]
        output=_find(attention, ("o_proj", "output.dense", "proj"), "attention output"),  # type: ignore[arg-type]
        layer_scale1=_layer_scale(_find(layer, ("layer_scale1", "ls1"), "layer scale")),
        norm2=_find(layer, ("norm2", "layernorm_after"), "second norm"),
        mlp=_find(layer, ("mlp",), "MLP"),
        layer_scale2=_layer_scale(_find(layer, ("layer_scale2", "ls2"), "layer scale")),
    )


def vit_parts(model: torch.nn.Module) -> ViTParts:
    """Resolve the roles of a transformers DINOv2 / DINOv3 model once (cached on the Backbone)."""
    embeddings = _find(model, ("embeddings",), "embeddings")
    projection = _find(embeddings, ("patch_embeddings.projection", "patch_embeddings"), "patch projection")
    layers = _find(model, ("encoder.layer", "model.layer", "layer"), "block list")
    rope = getattr(model, "rope_embeddings", None)
    inv_freq = getattr(rope, "inv_freq", None) if rope is not None else None
    return ViTParts(
        embeddings=embeddings,
        patch_projection=projection,  # type: ignore[arg-type]
        blocks=tuple(block_parts(layer) for layer in layers),  # type: ignore[union-attr]
        final_norm=_find(model, ("layernorm", "norm"), "final norm"),
        rope_inv_freq=inv_freq,
    )


# ---------------------------------------------------------------- embeddings


def token_grid(height: int, width: int, *, patch_size: int, stride: int) -> tuple[int, int]:
    """Token grid of a padded image whose sides satisfy ``(side - P) % stride == 0``."""
    return (height - patch_size) // stride + 1, (width - patch_size) // stride + 1


def _position_table(backbone: Backbone, grid: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
    """Learned patch position embeddings, bicubically interpolated to a token grid: (1, gh * gw, C)."""
    table = backbone.parts.embeddings.position_embeddings[:, 1:]
    side = math.isqrt(table.shape[1])
    if (side, side) == grid:
        return table.to(dtype)
    table = table.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    table = F.interpolate(table, size=grid, mode="bicubic", align_corners=False)
    return table.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1).to(dtype)


def rope_cos_sin(
    inv_freq: torch.Tensor, grid: tuple[int, int], *, patch_size: int, stride: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """DINOv3 rotary embedding of a token grid with any stride: two (gh * gw, head_dim) tensors.

    Token ``i`` is centred at ``i * stride + P / 2`` in a padded side of
    ``P + (n - 1) * stride`` pixels; its coordinate is that centre over the
    side, mapped to [-1, 1] (transformers' ``(i + 0.5) / n`` when stride == P,
    bit for bit: both are the correctly rounded float32 of the same ratio).
    """
    axes = []
    for n in grid:
        side = float(patch_size + (n - 1) * stride)
        centres = torch.arange(n, dtype=torch.float32, device=inv_freq.device) * stride + patch_size / 2
        axes.append(centres / side)
    coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).flatten(0, 1)
    coords = 2.0 * coords - 1.0
    angles = 2 * math.pi * coords[:, :, None] * inv_freq.float()[None, None, :]
    angles = angles.flatten(1, 2).tile(2)
    return torch.cos(angles).to(dtype), torch.sin(angles).to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _embed(backbone: Backbone, pixels: torch.Tensor, stride: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Token sequence [CLS, registers, patches] of (B, 3, Hp, Wp) pixels, and the patch grid."""
    parts = backbone.parts
    patch = backbone.patch_size
    grid = token_grid(pixels.shape[-2], pixels.shape[-1], patch_size=patch, stride=stride)
    embeddings = parts.embeddings
    projection = parts.patch_projection
    pixels = pixels.to(projection.weight.dtype)
    if parts.rope_inv_freq is None and stride == patch:
        return embeddings(pixels), grid  # transformers' own embedding (position interpolation included)
    patches = F.conv2d(pixels, projection.weight, projection.bias, stride=stride).flatten(2).transpose(1, 2)
    batch = patches.shape[0]
    cls = embeddings.cls_token.expand(batch, -1, -1)
    if parts.rope_inv_freq is None:  # DINOv2: learned positions; CLS keeps its own
        patches = patches + _position_table(backbone, grid, patches.dtype)
        cls = cls + embeddings.position_embeddings[:, :1].to(patches.dtype)
    pieces = [cls]
    if backbone.num_registers:
        pieces.append(embeddings.register_tokens.expand(batch, -1, -1))
    pieces.append(patches)
    return torch.cat(pieces, dim=1), grid


# ---------------------------------------------------------------- forward


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, C) -> (B, heads, N, C / heads)."""
    batch, tokens, channels = x.shape
    return x.view(batch, tokens, heads, channels // heads).transpose(1, 2)


def forward_tokens(
    backbone: Backbone,
    pixels: torch.Tensor,
    *,
    stride: int | None = None,
    with_attention: bool = True,
    facet: Facet = "token",
    layer: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run the backbone on normalised, padded pixels.

    Parameters
    ----------
    pixels : (B, 3, Hp, Wp) tensor
        Normalised images; ``(Hp - P) % stride == 0`` and likewise for Wp.
    stride : int or None
        Patch-embedding stride; ``None`` = the patch size.
    facet : {"token", "key", "query", "value"}
        ``"token"``: the block's output tokens after the model's final norm;
        otherwise that block's key / query / value projections of its
        normalised input (before RoPE, so a shifted image gives shifted maps).
    layer : int or None
        Block to read (0-based, negative from the end); ``None`` = the last.

    Returns
    -------
    tokens : (B, C, gh, gw) tensor
        Patch columns of the chosen facet (CLS and registers dropped).
    attention : (B, heads, gh, gw) float32 tensor or None
        Softmax attention of the chosen block's CLS query over all tokens
        (keys with RoPE applied for DINOv3), patch columns.
    """
    parts = backbone.parts
    patch = backbone.patch_size
    stride = stride or patch
    depth = len(parts.blocks)
    index = depth - 1 if layer is None else int(layer)
    if not -depth <= index < depth:
        raise ValueError(f"layer={layer} is outside this backbone's {depth} blocks (0..{depth - 1}).")
    index %= depth
    hidden, grid = _embed(backbone, pixels, stride)
    options: dict = {}
    cos_sin = None
    if parts.rope_inv_freq is not None:
        cos_sin = rope_cos_sin(parts.rope_inv_freq, grid, patch_size=patch, stride=stride, dtype=hidden.dtype)
        options["position_embeddings"] = cos_sin
    for block in parts.blocks[:index]:
        hidden = block.layer(hidden, **options)
        if isinstance(hidden, tuple):  # transformers 4.x blocks return tuples
            hidden = hidden[0]
    block = parts.blocks[index]
    first_patch = 1 + backbone.num_registers
    normed = block.norm1(hidden) if facet != "token" or with_attention else None
    if facet == "token":
        out = block.layer(hidden, **options)
        out = parts.final_norm(out[0] if isinstance(out, tuple) else out)
    else:
        projection = {"key": block.key, "query": block.query, "value": block.value}[facet]
        out = projection(normed[:, first_patch:])
    batch = pixels.shape[0]
    if facet == "token":
        out = out[:, first_patch:]
    tokens = out.transpose(1, 2).reshape(batch, out.shape[-1], *grid)
    if not with_attention:
        return tokens, None
    heads = backbone.num_heads
    query = _heads(block.query(normed[:, :1]), heads).float()  # (B, heads, 1, d); CLS gets no RoPE
    keys = _heads(block.key(normed), heads).float()  # (B, heads, N, d)
    if cos_sin is not None:
        cos, sin = (t.float() for t in cos_sin)
        patch_keys = keys[:, :, first_patch:]
        keys = torch.cat([keys[:, :, :first_patch], patch_keys * cos + _rotate_half(patch_keys) * sin], dim=2)
    scores = (query @ keys.transpose(-1, -2))[:, :, 0] * query.shape[-1] ** -0.5  # (B, heads, N)
    cls_attention = scores.softmax(dim=-1)[:, :, first_patch:].reshape(batch, heads, *grid)
    return tokens, cls_attention
