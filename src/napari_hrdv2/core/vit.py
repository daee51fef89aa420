"""Patch tokens and last-block CLS attention from a transformers DINOv2 model.

The model keeps its default (sdpa) attention for speed. The CLS attention row
of the last block is recomputed from that block's query and key projections,
captured with forward hooks: one query row against all keys, which is cheap,
and no monkey-patching of the model.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .backbones import Backbone


def _last_attention_module(model: torch.nn.Module) -> torch.nn.Module:
    return model.encoder.layer[-1].attention


def _position_embeddings(backbone: Backbone, grid: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
    """Patch position embeddings bicubically interpolated to a token grid: (1, gh * gw, C)."""
    table = backbone.model.embeddings.position_embeddings[:, 1:]
    side = math.isqrt(table.shape[1])
    if (side, side) == grid:
        return table.to(dtype)
    table = table.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    table = F.interpolate(table, size=grid, mode="bicubic", align_corners=False)
    return table.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1).to(dtype)


def _strided_embeddings(backbone: Backbone, pixels: torch.Tensor, stride: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Token sequence [CLS, registers, patches] for overlapping patches with ``stride``."""
    embeddings = backbone.model.embeddings
    projection = embeddings.patch_embeddings.projection
    patches = F.conv2d(pixels.to(projection.weight.dtype), projection.weight, projection.bias, stride=stride)
    batch, _, grid_h, grid_w = patches.shape
    tokens = patches.flatten(2).transpose(1, 2) + _position_embeddings(backbone, (grid_h, grid_w), patches.dtype)
    cls = embeddings.cls_token.expand(batch, -1, -1) + embeddings.position_embeddings[:, :1].to(patches.dtype)
    parts = [cls]
    if backbone.num_registers:
        parts.append(embeddings.register_tokens.expand(batch, -1, -1))
    parts.append(tokens)
    return torch.cat(parts, dim=1), (grid_h, grid_w)


def token_grid(height: int, width: int, *, patch_size: int, stride: int) -> tuple[int, int]:
    """Token grid of a padded image whose sides satisfy ``(side - P) % stride == 0``."""
    return (height - patch_size) // stride + 1, (width - patch_size) // stride + 1


def forward_tokens(
    backbone: Backbone, pixels: torch.Tensor, *, stride: int | None = None, with_attention: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run the backbone on normalised, padded pixels.

    Parameters
    ----------
    pixels : (B, 3, Hp, Wp) tensor
        ImageNet-normalised images; ``(Hp - P) % stride == 0`` and likewise for Wp.
    stride : int or None
        Patch-embedding stride; ``None`` or the patch size runs the model as is.

    Returns
    -------
    tokens : (B, C, gh, gw) tensor
        Last-layer patch tokens after the final layer norm (CLS and registers dropped).
    attention : (B, heads, gh, gw) float32 tensor or None
        Softmax attention of the last block's CLS query over all tokens, patch columns.
    """
    patch = backbone.patch_size
    stride = stride or patch
    captured: dict[str, torch.Tensor] = {}
    handles = []
    if with_attention:
        attention = _last_attention_module(backbone.model)
        handles.append(attention.q_proj.register_forward_hook(lambda m, i, o: captured.__setitem__("q", o[:, 0])))
        handles.append(attention.k_proj.register_forward_hook(lambda m, i, o: captured.__setitem__("k", o)))
    try:
        if stride == patch:
            grid = token_grid(pixels.shape[-2], pixels.shape[-1], patch_size=patch, stride=patch)
            sequence = backbone.model(pixel_values=pixels).last_hidden_state
        else:
            embedded, grid = _strided_embeddings(backbone, pixels, stride)
            hidden = backbone.model.encoder(embedded).last_hidden_state
            sequence = backbone.model.layernorm(hidden)
    finally:
        for handle in handles:
            handle.remove()
    first_patch = 1 + backbone.num_registers
    batch, _, channels = sequence.shape
    tokens = sequence[:, first_patch:].transpose(1, 2).reshape(batch, channels, *grid)
    if not with_attention:
        return tokens, None
    heads = backbone.num_heads
    query = captured["q"].float().reshape(batch, heads, -1)  # (B, heads, d)
    keys = captured["k"].float().reshape(batch, -1, heads, query.shape[-1])  # (B, N, heads, d)
    scores = torch.einsum("bhd,bnhd->bhn", query, keys) * query.shape[-1] ** -0.5
    cls_attention = scores.softmax(dim=-1)[:, :, first_patch:].reshape(batch, heads, *grid)
    return tokens, cls_attention
