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

The model's submodules are found by role in :mod:`.structure` (:func:`vit_parts`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ..config import FACETS, Facet

if TYPE_CHECKING:
    from .loading import Backbone

__all__ = ["FACETS", "Facet", "forward_cls", "forward_tokens", "grid_positions", "rope_cos_sin", "token_grid"]


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


def grid_positions(backbone: Backbone, grid: tuple[int, int], *, stride: int) -> tuple[torch.Tensor, ...]:
    """The position tensors of a token grid, as the forward pass adds them (they depend on the grid only).

    DINOv2: ``(positions,)``, the learned table interpolated to the grid, CLS first, (1, 1 + gh * gw, C)
    in the model's dtype (transformers' own interpolation when ``stride == P``); DINOv3: the RoPE
    ``(cos, sin)`` of :func:`rope_cos_sin`. Computing them outside the forward pass lets an exported graph
    (:mod:`.onnx_forward`) take them as inputs, so it stays exact at every image size.
    """
    parts = backbone.parts
    dtype = parts.patch_projection.weight.dtype
    if parts.rope_inv_freq is not None:
        return rope_cos_sin(parts.rope_inv_freq, grid, patch_size=backbone.patch_size, stride=stride, dtype=dtype)
    embeddings = parts.embeddings
    if stride == backbone.patch_size:
        shape_only = torch.empty(1, 1 + grid[0] * grid[1], backbone.embed_dim, dtype=dtype)
        table = embeddings.interpolate_pos_encoding(shape_only, grid[0] * stride, grid[1] * stride)
        return (table.to(dtype),)
    cls = embeddings.position_embeddings[:, :1].to(dtype)
    return (torch.cat([cls, _position_table(backbone, grid, dtype)], dim=1),)


def _embed(
    backbone: Backbone, pixels: torch.Tensor, stride: int, positions: tuple[torch.Tensor, ...] | None = None
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Token sequence [CLS, registers, patches] of (B, 3, Hp, Wp) pixels, and the patch grid.

    ``positions``: the DINOv2 position table of :func:`grid_positions`, or None to compute it here.
    """
    parts = backbone.parts
    patch = backbone.patch_size
    grid = token_grid(pixels.shape[-2], pixels.shape[-1], patch_size=patch, stride=stride)
    embeddings = parts.embeddings
    projection = parts.patch_projection
    pixels = pixels.to(projection.weight.dtype)
    if parts.rope_inv_freq is None and stride == patch and positions is None:
        return embeddings(pixels), grid  # transformers' own embedding (position interpolation included)
    patches = F.conv2d(pixels, projection.weight, projection.bias, stride=stride).flatten(2).transpose(1, 2)
    batch = patches.shape[0]
    cls = embeddings.cls_token.expand(batch, -1, -1)
    if parts.rope_inv_freq is None:  # DINOv2: learned positions; CLS keeps its own
        if positions is None:
            patches = patches + _position_table(backbone, grid, patches.dtype)
            cls = cls + embeddings.position_embeddings[:, :1].to(patches.dtype)
        else:
            table = positions[0].to(patches.dtype)
            patches, cls = patches + table[:, 1:], cls + table[:, :1]
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


def _run_blocks(
    backbone: Backbone,
    pixels: torch.Tensor,
    *,
    stride: int,
    n_blocks: int,
    positions: tuple[torch.Tensor, ...] | None = None,
) -> tuple[torch.Tensor, tuple[int, int], dict]:
    """Hidden tokens (B, N, C) after the first ``n_blocks`` blocks, the patch grid and the block options (RoPE)."""
    parts = backbone.parts
    hidden, grid = _embed(backbone, pixels, stride, positions)
    options: dict = {}
    if parts.rope_inv_freq is not None:
        if positions is None:
            positions = rope_cos_sin(
                parts.rope_inv_freq, grid, patch_size=backbone.patch_size, stride=stride, dtype=hidden.dtype
            )
        options["position_embeddings"] = tuple(t.to(hidden.dtype) for t in positions)
    for block in parts.blocks[:n_blocks]:
        hidden = block.layer(hidden, **options)
        if isinstance(hidden, tuple):  # transformers 4.x blocks return tuples
            hidden = hidden[0]
    return hidden, grid, options


def forward_cls(backbone: Backbone, pixels: torch.Tensor) -> torch.Tensor:
    """The CLS token (B, C) of normalised, padded pixels (B, 3, Hp, Wp) after all blocks and the final norm.

    The sides of ``pixels`` are multiples of the patch size; the CLS token leaves the same final layer
    norm as the patch tokens of :func:`forward_tokens`, so the two compare.
    """
    hidden, _, _ = _run_blocks(backbone, pixels, stride=backbone.patch_size, n_blocks=len(backbone.parts.blocks))
    return backbone.parts.final_norm(hidden[:, :1])[:, 0]


def forward_tokens(
    backbone: Backbone,
    pixels: torch.Tensor,
    *,
    stride: int | None = None,
    with_attention: bool = True,
    facet: Facet = "token",
    layer: int | None = None,
    positions: tuple[torch.Tensor, ...] | None = None,
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
    positions : tuple of tensors or None
        The grid's position tensors (:func:`grid_positions`); ``None`` = computed here.

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
    hidden, grid, options = _run_blocks(backbone, pixels, stride=stride, n_blocks=index, positions=positions)
    cos_sin = options.get("position_embeddings")
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
