"""The structure of a transformers DINOv2 / DINOv3 model: its submodules by role.

Module names differ between transformers versions (``q_proj`` / ``query``,
``o_proj`` / ``output.dense``...): :func:`vit_parts` looks them up by role
with fallbacks, and everything else (loaders, checkpoint readers and the forward
pass in :mod:`.vit`) goes through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["BlockParts", "ViTParts", "block_parts", "vit_parts"]


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
