"""An independent, minimal ViT forward written from timm-layout tensors (float64), for checking the loaders.

It reads the tensors by their timm names and follows the published architecture directly: patch
convolution, CLS / register tokens, learned positions or RoPE, blocks with fused qkv, layer scale and
(Swi)GLU MLPs, final norm. It shares no code with napari_hrdv2's mapping onto transformers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def random_timm_tensors(
    *, dim: int = 128, depth: int = 2, patch: int = 14, grid: int = 4, registers: int = 0, dinov3: bool = False,
    swiglu_packed: bool = False, seed: int = 0,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """Random tensors named like timm's vit_*_dinov2 (learned positions) or vit_*_dinov3 (RoPE, q/v bias)."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.1, offset=0.0):
        return torch.randn(*shape, generator=gen) * scale + offset

    hidden = 2 * dim
    t = {
        "cls_token": rand(1, 1, dim, scale=0.5),
        "patch_embed.proj.weight": rand(dim, 3, patch, patch, scale=0.05),
        "patch_embed.proj.bias": rand(dim),
        "norm.weight": rand(dim, offset=1.0),
        "norm.bias": rand(dim),
    }
    if registers:
        t["reg_token"] = rand(1, registers, dim, scale=0.5)
    if not dinov3:  # timm's reg4 DINOv2 has no CLS row (no_embed_class); the plain one has
        t["pos_embed"] = rand(1, grid * grid + (0 if registers else 1), dim, scale=0.3)
    for i in range(depth):
        b = f"blocks.{i}."
        t[b + "norm1.weight"], t[b + "norm1.bias"] = rand(dim, offset=1.0), rand(dim)
        t[b + "attn.qkv.weight"] = rand(3 * dim, dim)
        if dinov3:
            t[b + "attn.q_bias"], t[b + "attn.v_bias"] = rand(dim), rand(dim)
        else:
            t[b + "attn.qkv.bias"] = rand(3 * dim)
        t[b + "attn.proj.weight"], t[b + "attn.proj.bias"] = rand(dim, dim), rand(dim)
        t[b + ("gamma_1" if dinov3 else "ls1.gamma")] = rand(dim, offset=0.5)
        t[b + ("gamma_2" if dinov3 else "ls2.gamma")] = rand(dim, offset=0.5)
        t[b + "norm2.weight"], t[b + "norm2.bias"] = rand(dim, offset=1.0), rand(dim)
        width = 2 * hidden if swiglu_packed else hidden
        t[b + "mlp.fc1.weight"], t[b + "mlp.fc1.bias"] = rand(width, dim), rand(width)
        t[b + "mlp.fc2.weight"], t[b + "mlp.fc2.bias"] = rand(dim, hidden), rand(dim)
    return t


def _rope(grid: tuple[int, int], *, patch: int, stride: int, head_dim: int, theta: float):
    """cos, sin (N, head_dim): token centres over the padded side in [-1, 1], periods theta^(2k / (d/2))."""
    axes = [
        (torch.arange(n, dtype=torch.float64) * stride + patch / 2) / (patch + (n - 1) * stride) * 2 - 1 for n in grid
    ]
    yy, xx = torch.meshgrid(*axes, indexing="ij")
    periods = theta ** (2 * torch.arange(head_dim // 4, dtype=torch.float64) / (head_dim // 2))
    angles = 2 * math.pi * torch.cat([yy.reshape(-1, 1) / periods, xx.reshape(-1, 1) / periods], dim=1)
    angles = angles.repeat(1, 2)
    return angles.cos(), angles.sin()


def _rotate(x, cos, sin):
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


def timm_vit_forward(
    t: dict[str, torch.Tensor], pixels: torch.Tensor, *, patch: int, heads: int, eps: float, stride: int | None = None,
    theta: float = 100.0,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Final-norm patch tokens (B, C, gh, gw) and the last block's CLS attention (B, heads, gh, gw), float64."""
    t = {k: v.double() for k, v in t.items()}
    stride = stride or patch
    x = F.conv2d(pixels.double(), t["patch_embed.proj.weight"], t["patch_embed.proj.bias"], stride=stride)
    batch, dim, gh, gw = x.shape
    x = x.flatten(2).transpose(1, 2)
    cls = t["cls_token"].expand(batch, -1, -1)
    if "pos_embed" in t:
        pos = t["pos_embed"]
        if pos.shape[1] == gh * gw + 1:
            cls, pos = cls + pos[:, :1], pos[:, 1:]
        x = x + pos
    prefix = [cls] + ([t["reg_token"].expand(batch, -1, -1)] if "reg_token" in t else [])
    n_prefix = sum(p.shape[1] for p in prefix)
    x = torch.cat(prefix + [x], dim=1)
    head_dim = dim // heads
    rope = None if "pos_embed" in t else _rope((gh, gw), patch=patch, stride=stride, head_dim=head_dim, theta=theta)
    depth = 1 + max(int(k.split(".")[1]) for k in t if k.startswith("blocks."))
    for i in range(depth):
        b = f"blocks.{i}."
        h = F.layer_norm(x, (dim,), t[b + "norm1.weight"], t[b + "norm1.bias"], eps)
        if b + "attn.q_bias" in t:
            bias = torch.cat([t[b + "attn.q_bias"], torch.zeros(dim, dtype=torch.float64), t[b + "attn.v_bias"]])
        else:
            bias = t[b + "attn.qkv.bias"]
        q, k, v = (h @ t[b + "attn.qkv.weight"].T + bias).reshape(batch, -1, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
        if rope is not None:
            q = torch.cat([q[:, :, :n_prefix], _rotate(q[:, :, n_prefix:], *rope)], dim=2)
            k = torch.cat([k[:, :, :n_prefix], _rotate(k[:, :, n_prefix:], *rope)], dim=2)
        weights = (q @ k.transpose(-1, -2) / math.sqrt(head_dim)).softmax(-1)
        out = (weights @ v).transpose(1, 2).reshape(batch, -1, dim) @ t[b + "attn.proj.weight"].T + t[
            b + "attn.proj.bias"
        ]
        x = x + t[b + ("gamma_1" if b + "gamma_1" in t else "ls1.gamma")] * out
        h = F.layer_norm(x, (dim,), t[b + "norm2.weight"], t[b + "norm2.bias"], eps)
        h = h @ t[b + "mlp.fc1.weight"].T + t[b + "mlp.fc1.bias"]
        if h.shape[-1] == 2 * t[b + "mlp.fc2.weight"].shape[1]:  # packed SwiGLU: silu(first half) * second half
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = F.gelu(h)
        h = h @ t[b + "mlp.fc2.weight"].T + t[b + "mlp.fc2.bias"]
        x = x + t[b + ("gamma_2" if b + "gamma_2" in t else "ls2.gamma")] * h
    x = F.layer_norm(x, (dim,), t["norm.weight"], t["norm.bias"], eps)
    tokens = x[:, n_prefix:].transpose(1, 2).reshape(batch, dim, gh, gw)
    attention = weights[:, :, 0, n_prefix:].reshape(batch, heads, gh, gw)
    return tokens, attention
