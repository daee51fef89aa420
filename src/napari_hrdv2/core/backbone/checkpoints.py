"""Checkpoint files of other layouts mapped onto transformers DINOv2 / DINOv3 models.

Layouts read (``.pth`` with ``torch.load(weights_only=True)`` or
``.safetensors``; no pickle code runs, timm is never imported):

- ``dinov2``: official torch.hub DINOv2 (``dinov2_vits14_pretrain.pth``,
  ``_reg4_``: ``register_tokens``; giant: ``mlp.w12`` / ``mlp.w3``) and timm's
  ``vit_*_patch14_dinov2`` / ``vit_*_patch14_reg4_dinov2`` (``reg_token``; the
  position table has no CLS row because timm folded the CLS position into
  ``cls_token``; giant: packed ``mlp.fc1``).
- ``dinov3``: official torch.hub DINOv3 (``storage_tokens``, fused ``qkv``
  with a ``bias_mask``, ``ls1/ls2.gamma``, SwiGLU ``w1/w2/w3``).
- ``timm-dinov3``: timm's ``vit_*_patch16_dinov3`` (``reg_token``,
  ``q_bias``/``v_bias``, ``gamma_1/gamma_2``, SwiGLU ``fc1_g/fc1_x``).
- ``transformers``: a transformers state dict saved as one file.

Every layout is first read into one canonical naming (:data:`ROLES`), the
architecture is inferred from the tensors, and each tensor is copied into the
transformers model's parameter of the same role (found with
:func:`.vit.vit_parts`, whatever this transformers version calls it). A
missing, unexpected or wrongly shaped tensor is an :class:`InputError`
naming the tensor as the file calls it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import InputError, WeightsNotFoundError

#: Prefixes of tensors that are not part of the backbone (heads of training checkpoints): skipped.
IGNORED_PREFIXES = ("head.", "dino_head.", "ibot_head.", "projectors.", "local_cls_norm.", "fc_norm.")

#: Published DINOv2 / DINOv3 depths by (family, embed dim, SwiGLU), to catch checkpoints that lost blocks.
PUBLISHED_DEPTHS: dict[tuple[str, int, bool], int] = {
    ("dinov2", 384, False): 12, ("dinov2", 768, False): 12, ("dinov2", 1024, False): 24, ("dinov2", 1536, True): 40,
    ("dinov3", 384, False): 12, ("dinov3", 384, True): 12, ("dinov3", 768, False): 12, ("dinov3", 1024, False): 24,
    ("dinov3", 1280, True): 32, ("dinov3", 4096, True): 40,
}  # fmt: skip

Split = tuple[int, int] | None  # (part, of): take chunk ``part`` of ``of`` along dim 0


@dataclass
class Canonical:
    """A checkpoint in canonical names, with where each tensor came from."""

    layout: str
    family: str  # "dinov2" or "dinov3"
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)  # canonical name -> name in the file
    block_names: dict[str, str] = field(default_factory=dict)  # canonical block role -> file suffix (for messages)
    rope_periods: torch.Tensor | None = None

    def add(self, name: str, value: torch.Tensor, origin: str) -> None:
        self.tensors[name] = value
        self.origin[name] = origin

    def file_name(self, name: str) -> str:
        """The file's name of a canonical tensor (also for tensors that are missing)."""
        if name in self.origin:
            return self.origin[name]
        match = re.fullmatch(r"blocks\.(\d+)\.(.+)", name)
        if match and match.group(2) in self.block_names:
            return f"blocks.{match.group(1)}.{self.block_names[match.group(2)]}"
        return name


# Block tables: file suffix (after "blocks.<i>.") -> [(canonical role, split)].
_NORMS = {f"{n}.{s}": [(f"{n}.{s}", None)] for n in ("norm1", "norm2") for s in ("weight", "bias")}
_QKV = {f"attn.qkv.{s}": [(f"{r}.{s}", (i, 3)) for i, r in enumerate("qkv")] for s in ("weight", "bias")}
_PROJ = {f"attn.proj.{s}": [(f"proj.{s}", None)] for s in ("weight", "bias")}
_PLAIN_MLP = {f"mlp.fc{n}.{s}": [(f"fc{n}.{s}", None)] for n in (1, 2) for s in ("weight", "bias")}
_OFFICIAL_LS = {"ls1.gamma": [("ls1", None)], "ls2.gamma": [("ls2", None)]}


def _swiglu(names: dict[str, str]) -> dict[str, list[tuple[str, Split]]]:
    return {f"mlp.{file}.{s}": [(f"{role}.{s}", None)] for file, role in names.items() for s in ("weight", "bias")}


BLOCK_TABLES: dict[str, dict[str, list[tuple[str, Split]]]] = {
    "dinov2": {
        **_NORMS, **_QKV, **_PROJ, **_PLAIN_MLP, **_OFFICIAL_LS,
        **{f"mlp.w12.{s}": [(f"gate.{s}", (0, 2)), (f"up.{s}", (1, 2))] for s in ("weight", "bias")},
        **_swiglu({"w3": "down"}),
    },
    "dinov3": {
        **_NORMS, **_QKV, **_PROJ, **_PLAIN_MLP, **_OFFICIAL_LS, "attn.qkv.bias_mask": [],
        **_swiglu({"w1": "gate", "w2": "up", "w3": "down"}),
    },
    "timm-dinov3": {
        **_NORMS, "attn.qkv.weight": _QKV["attn.qkv.weight"], "attn.q_bias": [("q.bias", None)],
        "attn.v_bias": [("v.bias", None)], "attn.k_bias": [], **_PROJ, **_PLAIN_MLP,
        "gamma_1": [("ls1", None)], "gamma_2": [("ls2", None)],
        **_swiglu({"fc1_g": "gate", "fc1_x": "up"}),
    },
}  # fmt: skip

TOP_LEVEL: dict[str, dict[str, str]] = {
    "dinov2": {"cls_token": "cls_token", "register_tokens": "registers", "reg_token": "registers",
               "pos_embed": "pos_embed", "patch_embed.proj.weight": "patch.weight",
               "patch_embed.proj.bias": "patch.bias", "norm.weight": "norm.weight", "norm.bias": "norm.bias",
               "mask_token": ""},
    "dinov3": {"cls_token": "cls_token", "storage_tokens": "registers", "patch_embed.proj.weight": "patch.weight",
               "patch_embed.proj.bias": "patch.bias", "norm.weight": "norm.weight", "norm.bias": "norm.bias",
               "mask_token": "", "rope_embed.periods": ""},
    "timm-dinov3": {"cls_token": "cls_token", "reg_token": "registers", "patch_embed.proj.weight": "patch.weight",
                    "patch_embed.proj.bias": "patch.bias", "norm.weight": "norm.weight", "norm.bias": "norm.bias"},
}  # fmt: skip

# transformers names (4.x and 5.x) -> canonical
_TRANSFORMERS_TOP = {
    r"embeddings\.cls_token": "cls_token", r"embeddings\.register_tokens": "registers",
    r"embeddings\.position_embeddings": "pos_embed", r"embeddings\.mask_token": "",
    r"embeddings\.patch_embeddings(?:\.projection)?\.(weight|bias)": r"patch.\1",
    r"(?:layernorm|norm)\.(weight|bias)": r"norm.\1",
}  # fmt: skip
_TRANSFORMERS_BLOCK = {
    r"(norm[12])\.(weight|bias)": r"\1.\2",
    r"attention\.(?:attention\.)?(?:q_proj|query)\.(weight|bias)": r"q.\1",
    r"attention\.(?:attention\.)?(?:k_proj|key)\.(weight|bias)": r"k.\1",
    r"attention\.(?:attention\.)?(?:v_proj|value)\.(weight|bias)": r"v.\1",
    r"attention\.(?:o_proj|output\.dense)\.(weight|bias)": r"proj.\1",
    r"layer_scale([12])\.lambda1": r"ls\1",
    r"mlp\.(fc[12])\.(weight|bias)": r"\1.\2",
    r"mlp\.gate_proj\.(weight|bias)": r"gate.\1", r"mlp\.up_proj\.(weight|bias)": r"up.\1",
    r"mlp\.down_proj\.(weight|bias)": r"down.\1",
}  # fmt: skip


# ---------------------------------------------------------------- reading

#: Weight dtypes read (anything else, e.g. int8 quantised weights, would be cast silently and give wrong features).
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_weight_tensor(name: str, value: torch.Tensor) -> None:
    """Refuse a weight tensor that is not float (:data:`FLOAT_DTYPES`) or holds NaN / infinite values.

    Raises
    ------
    InputError
        Naming the tensor as the file calls it (``name``) and what to use instead.
    """
    if value.dtype not in FLOAT_DTYPES:
        raise InputError(
            f"Tensor '{name}' has dtype {str(value.dtype).removeprefix('torch.')}: napari-hrdv2 reads float weights "
            "(float32, float16, bfloat16); quantised or integer checkpoints are not supported. Use the original "
            "float weights."
        )
    if not bool(torch.isfinite(value).all()):
        raise InputError(
            f"Tensor '{name}' holds NaN or infinite values: the weights are damaged. Download or copy them again."
        )


def unreadable_weights_message(path: Path, err: BaseException) -> str:
    """One line for a weights file that cannot be read: a partial download in the Hugging Face cache says so."""
    detail = f"{type(err).__name__}: {str(err)[:200]}"
    resolved = str(path.resolve()) if path.exists() else str(path)
    cached = re.search(r"models--([^/\\]+?)--([^/\\]+)", f"{path}/{resolved}")
    if cached:
        repo = f"{cached.group(1)}/{cached.group(2)}"
        return (
            f"'{path}' in the Hugging Face cache is truncated or damaged ({detail}): most likely a partial "
            f"download. Download it again with `hf download {repo} --force-download`."
        )
    return (
        f"Could not read '{path}' ({detail}): the file is truncated or damaged (an interrupted copy or download?). "
        "Copy or download it again."
    )


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A flat {name: tensor} dict from a ``.pth`` (weights only) or ``.safetensors`` file."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        if path.suffix == ".safetensors" or "models--" in str(path.resolve()):
            raise WeightsNotFoundError(unreadable_weights_message(path, err)) from err
        raise WeightsNotFoundError(
            f"Could not read '{path}' as a PyTorch state dict ({type(err).__name__}: {str(err)[:200]})."
        ) from err
    for wrapper in ("model", "state_dict", "teacher"):
        if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsNotFoundError(f"'{path}' does not hold a flat state dict of tensors.")
    return {re.sub(r"^(module\.|backbone\.|teacher\.backbone\.)", "", str(k)): v for k, v in state.items()}


def detect_layout(state: dict[str, torch.Tensor]) -> str:
    """``"dinov2"``, ``"dinov3"``, ``"timm-dinov3"`` or ``"transformers"`` (see the module docstring)."""
    keys = set(state)
    if any(k.startswith(("embeddings.", "dinov2.", "dinov2_with_registers.", "model.layer.")) for k in keys):
        return "transformers"
    if "storage_tokens" in keys or any(k.endswith("attn.qkv.bias_mask") for k in keys):
        return "dinov3"
    if any(k.endswith(("gamma_1", "attn.q_bias", "mlp.fc1_g.weight")) for k in keys):
        return "timm-dinov3"
    if "pos_embed" in keys or any(k.startswith("blocks.") for k in keys):
        return "dinov2"
    raise InputError(
        "This file is not a DINOv2 or DINOv3 checkpoint (no cls_token, pos_embed or blocks.* tensors); "
        f"first tensors: {sorted(keys)[:5]}."
    )


def _split(value: torch.Tensor, split: Split, name: str) -> torch.Tensor:
    if split is None:
        return value
    part, of = split
    if value.shape[0] % of:
        raise InputError(f"Tensor '{name}' of shape {tuple(value.shape)} cannot be split into {of} equal parts.")
    return value.chunk(of, dim=0)[part]


def to_canonical(state: dict[str, torch.Tensor], layout: str | None = None) -> Canonical:
    """Rename (and split) a checkpoint into canonical names; unknown tensors raise :class:`InputError`."""
    layout = layout or detect_layout(state)
    if layout == "transformers":
        return _transformers_to_canonical(state)
    family = "dinov2" if layout == "dinov2" else "dinov3"
    out = Canonical(layout=layout, family=family)
    table, top = BLOCK_TABLES[layout], TOP_LEVEL[layout]
    for suffix, targets in table.items():
        for role, _ in targets:
            out.block_names.setdefault(role, suffix)
    masks: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith(IGNORED_PREFIXES):
            continue
        if key in top:
            if key == "rope_embed.periods":
                out.rope_periods = value
            elif top[key]:
                out.add(top[key], value, key)
            continue
        match = re.fullmatch(r"blocks\.(?:\d+\.)?(\d+)\.(.+)", key)  # official giant/chunked: blocks.<chunk>.<i>
        if not match or match.group(2) not in table:
            raise InputError(f"Unexpected tensor '{key}' in a {layout} checkpoint: the file is not a plain backbone.")
        block, suffix = int(match.group(1)), match.group(2)
        if suffix == "attn.qkv.bias_mask":
            masks[f"blocks.{block}"] = value
        for role, split in table[suffix]:
            out.add(f"blocks.{block}.{role}", _split(value, split, key), key)
    if layout == "dinov2" and "pos_embed" in out.tensors:
        table_rows = out.tensors["pos_embed"].shape[1]
        if math.isqrt(table_rows) ** 2 == table_rows:  # timm no_embed_class: the CLS position lives in cls_token
            pos = out.tensors["pos_embed"]
            out.tensors["pos_embed"] = torch.cat([torch.zeros_like(pos[:, :1]), pos], dim=1)
    _packed_swiglu_to_gate_up(out)
    for block, mask in masks.items():  # DINOv3: the key bias is masked to zero (transformers has none)
        k_mask = mask.chunk(3)[1]
        if not bool(k_mask.any()):
            out.tensors.pop(f"{block}.k.bias", None)
    return out


def _packed_swiglu_to_gate_up(out: Canonical) -> None:
    """timm's DINOv2 giant packs SwiGLU's gate and up projections into ``mlp.fc1`` (twice fc2's input width)."""
    for name in [n for n in out.tensors if n.endswith(".fc1.weight")]:
        block = name.removesuffix(".fc1.weight")
        fc2 = out.tensors.get(f"{block}.fc2.weight")
        fc1 = out.tensors[name]
        if fc2 is not None and fc1.ndim == fc2.ndim == 2 and fc1.shape[0] == 2 * fc2.shape[1]:
            for suffix in ("weight", "bias"):
                if f"{block}.fc1.{suffix}" in out.tensors:
                    origin = out.origin.pop(f"{block}.fc1.{suffix}")
                    gate, up = out.tensors.pop(f"{block}.fc1.{suffix}").chunk(2, dim=0)
                    out.add(f"{block}.gate.{suffix}", gate, origin)
                    out.add(f"{block}.up.{suffix}", up, origin)
                if f"{block}.fc2.{suffix}" in out.tensors:
                    out.add(
                        f"{block}.down.{suffix}",
                        out.tensors.pop(f"{block}.fc2.{suffix}"),
                        out.origin.pop(f"{block}.fc2.{suffix}"),
                    )


def _transformers_to_canonical(state: dict[str, torch.Tensor]) -> Canonical:
    state = {re.sub(r"^(dinov2|dinov2_with_registers|model(?=\.embeddings))\.", "", k): v for k, v in state.items()}
    family = "dinov2" if "embeddings.position_embeddings" in state else "dinov3"
    out = Canonical(layout="transformers", family=family)
    for key, value in state.items():
        if key.startswith(IGNORED_PREFIXES) or key.startswith(("classifier.", "rope_embeddings.")):
            continue
        name = None
        for pattern, replacement in _TRANSFORMERS_TOP.items():
            if re.fullmatch(pattern, key):
                name = re.sub(pattern, replacement, key)
                break
        if name is None and (match := re.fullmatch(r"(?:encoder|model)\.layer\.(\d+)\.(.+)", key)):
            for pattern, replacement in _TRANSFORMERS_BLOCK.items():
                if re.fullmatch(pattern, match.group(2)):
                    name = f"blocks.{match.group(1)}." + re.sub(pattern, replacement, match.group(2))
                    break
        if name is None:
            raise InputError(f"Unexpected tensor '{key}' in a transformers checkpoint: not part of a DINO backbone.")
        if name:
            out.add(name, value, key)
    if family == "dinov3":  # DINOv3's plain MLP is called up_proj / down_proj in transformers
        for name in list(out.tensors):
            block = name.rsplit(".", 2)[0]
            if re.fullmatch(r"blocks\.\d+\.up\.(weight|bias)", name) and f"{block}.gate.weight" not in out.tensors:
                out.add(name.replace(".up.", ".fc1."), out.tensors.pop(name), out.origin.pop(name))
            elif re.fullmatch(r"blocks\.\d+\.down\.(weight|bias)", name) and f"{block}.gate.weight" not in out.tensors:
                out.add(name.replace(".down.", ".fc2."), out.tensors.pop(name), out.origin.pop(name))
    return out


# ---------------------------------------------------------------- architecture


@dataclass(frozen=True)
class Architecture:
    """What a checkpoint's tensors say about its model."""

    family: str
    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int
    num_registers: int
    mlp_hidden: int
    swiglu: bool
    position_grid: int  # DINOv2 learned table side (0 for RoPE)
    query_bias: bool
    key_bias: bool
    value_bias: bool
    rope_theta: float = 100.0


def _require(canonical: Canonical, name: str) -> torch.Tensor:
    if name not in canonical.tensors:
        raise InputError(f"The checkpoint has no tensor '{canonical.file_name(name)}': the file is incomplete.")
    return canonical.tensors[name]


def infer_architecture(canonical: Canonical, *, heads: int | None = None) -> Architecture:
    """Architecture from tensor shapes; blocks must be complete and numbered 0..depth-1."""
    cls = _require(canonical, "cls_token")
    embed_dim = int(cls.shape[-1])
    patch = _require(canonical, "patch.weight")
    if patch.ndim != 4 or patch.shape[-1] != patch.shape[-2]:
        raise InputError(
            f"Tensor '{canonical.file_name('patch.weight')}' of shape {tuple(patch.shape)} is not a square patch convolution."
        )
    blocks = sorted({int(m.group(1)) for n in canonical.tensors if (m := re.match(r"blocks\.(\d+)\.", n))})
    if not blocks:
        raise InputError("The checkpoint has no transformer blocks (blocks.0.* tensors).")
    depth = blocks[-1] + 1
    swiglu = f"blocks.{blocks[0]}.gate.weight" in canonical.tensors
    expected = ["norm1.weight", "norm1.bias", "q.weight", "k.weight", "v.weight", "proj.weight", "ls1",
                "norm2.weight", "norm2.bias", "ls2"]  # fmt: skip
    expected += ["gate.weight", "up.weight", "down.weight"] if swiglu else ["fc1.weight", "fc2.weight"]
    for block in range(depth):
        for role in expected:
            _require(canonical, f"blocks.{block}.{role}")
    published = PUBLISHED_DEPTHS.get((canonical.family, embed_dim, swiglu))
    if published is not None and depth != published:
        missing = ", ".join(f"blocks.{i}.*" for i in range(depth, published))
        raise InputError(
            f"The checkpoint has {depth} blocks, but every published {canonical.family.upper()} model of width "
            f"{embed_dim} has {published}: {missing or 'extra blocks'} {'are' if missing else ''} missing. "
            "The file is truncated or not what its name says."
        )
    mlp_hidden = int(_require(canonical, "blocks.0.gate.weight" if swiglu else "blocks.0.fc1.weight").shape[0])
    num_registers = int(canonical.tensors["registers"].shape[1]) if "registers" in canonical.tensors else 0
    grid = 0
    if canonical.family == "dinov2":
        rows = int(_require(canonical, "pos_embed").shape[1]) - 1
        grid = math.isqrt(rows)
        if grid * grid != rows:
            raise InputError(f"Tensor '{canonical.file_name('pos_embed')}' has {rows + 1} rows: not 1 + a square grid.")
    if heads is None:
        head_dim = 64
        if canonical.rope_periods is not None:
            head_dim = 4 * int(canonical.rope_periods.numel())
        elif canonical.family == "dinov3" and embed_dim == 4096:
            head_dim = 128
        heads = max(1, embed_dim // head_dim)
    if embed_dim % heads:
        raise InputError(f"Width {embed_dim} is not divisible into {heads} attention heads.")
    theta = 100.0
    periods = canonical.rope_periods
    if periods is not None and periods.numel() >= 2:
        theta = round(float(periods[1].double() ** periods.numel()), 3)  # periods[k] = theta ** (k / n_periods)
    return Architecture(
        family=canonical.family, embed_dim=embed_dim, depth=depth, num_heads=heads, patch_size=int(patch.shape[-1]),
        num_registers=num_registers, mlp_hidden=mlp_hidden, swiglu=swiglu, position_grid=grid,
        query_bias="blocks.0.q.bias" in canonical.tensors, key_bias="blocks.0.k.bias" in canonical.tensors,
        value_bias="blocks.0.v.bias" in canonical.tensors, rope_theta=theta,
    )  # fmt: skip


def empty_model(arch: Architecture) -> torch.nn.Module:
    """A transformers model of this architecture (random init, to be filled)."""
    if arch.family == "dinov3":
        from transformers import DINOv3ViTConfig, DINOv3ViTModel

        config = DINOv3ViTConfig(
            patch_size=arch.patch_size, hidden_size=arch.embed_dim, intermediate_size=arch.mlp_hidden,
            num_hidden_layers=arch.depth, num_attention_heads=arch.num_heads, num_register_tokens=arch.num_registers,
            use_gated_mlp=arch.swiglu, query_bias=arch.query_bias, key_bias=arch.key_bias,
            value_bias=arch.value_bias, layer_norm_eps=1e-5, rope_theta=arch.rope_theta, layerscale_value=1.0,
            attn_implementation="sdpa",
        )  # fmt: skip
        return DINOv3ViTModel(config)
    from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    mlp_ratio = arch.mlp_hidden / arch.embed_dim
    if (
        arch.swiglu
    ):  # transformers shrinks ratio * dim to 2/3 rounded up to 8; the official giant: 4096 = 2/3 * 4 * 1536
        mlp_ratio = next(
            (r for r in (4.0, arch.mlp_hidden * 1.5 / arch.embed_dim)
             if (int(int(arch.embed_dim * r) * 2 / 3) + 7) // 8 * 8 == arch.mlp_hidden), mlp_ratio,
        )  # fmt: skip
    if abs(mlp_ratio - round(mlp_ratio)) > 1e-6:
        raise InputError(
            f"The MLP width {arch.mlp_hidden} is not a whole multiple of the width {arch.embed_dim}: not a DINOv2 block."
        )
    common = dict(
        hidden_size=arch.embed_dim, num_hidden_layers=arch.depth, num_attention_heads=arch.num_heads,
        mlp_ratio=int(round(mlp_ratio)), patch_size=arch.patch_size, image_size=arch.position_grid * arch.patch_size,
        use_swiglu_ffn=arch.swiglu, layerscale_value=1.0, layer_norm_eps=1e-6, qkv_bias=arch.query_bias,
        attn_implementation="sdpa",
    )  # fmt: skip
    if arch.num_registers:
        return Dinov2WithRegistersModel(Dinov2WithRegistersConfig(num_register_tokens=arch.num_registers, **common))
    return Dinov2Model(Dinov2Config(**common))


def _targets(model: torch.nn.Module, arch: Architecture) -> dict[str, torch.nn.Parameter]:
    """Canonical name -> the model's parameter with that role."""
    from .structure import vit_parts

    parts = vit_parts(model)
    embeddings = parts.embeddings
    out: dict[str, torch.nn.Parameter] = {
        "cls_token": embeddings.cls_token,
        "patch.weight": parts.patch_projection.weight,
        "patch.bias": parts.patch_projection.bias,
        "norm.weight": parts.final_norm.weight,
        "norm.bias": parts.final_norm.bias,
    }
    if arch.num_registers:
        out["registers"] = embeddings.register_tokens
    if arch.family == "dinov2":
        out["pos_embed"] = embeddings.position_embeddings
    for i, block in enumerate(parts.blocks):
        prefix = f"blocks.{i}."
        for role, module in (("norm1", block.norm1), ("q", block.query), ("k", block.key), ("v", block.value),
                             ("proj", block.output), ("norm2", block.norm2)):  # fmt: skip
            for suffix in ("weight", "bias"):
                if getattr(module, suffix, None) is not None:
                    out[f"{prefix}{role}.{suffix}"] = getattr(module, suffix)
        out[prefix + "ls1"], out[prefix + "ls2"] = block.layer_scale1, block.layer_scale2
        mlp = block.mlp
        names = {"gate": "gate_proj", "up": "up_proj", "down": "down_proj"} if arch.swiglu else (
            {"fc1": "fc1", "fc2": "fc2"} if hasattr(mlp, "fc1") else {"fc1": "up_proj", "fc2": "down_proj"})  # fmt: skip
        for role, attribute in names.items():
            linear = getattr(mlp, attribute, None)
            if linear is None:
                raise RuntimeError(f"This transformers version has no mlp.{attribute}; napari-hrdv2 cannot map {role}.")
            for suffix in ("weight", "bias"):
                if getattr(linear, suffix, None) is not None:
                    out[f"{prefix}{role}.{suffix}"] = getattr(linear, suffix)
    return out


def load_into_model(canonical: Canonical, *, heads: int | None = None) -> tuple[torch.nn.Module, Architecture]:
    """Build the transformers model a canonical checkpoint describes and copy every tensor into it."""
    arch = infer_architecture(canonical, heads=heads)
    model = empty_model(arch)
    targets = _targets(model, arch)
    unexpected = sorted(set(canonical.tensors) - set(targets))
    if unexpected:
        names = [canonical.file_name(n) for n in unexpected[:4]]
        raise InputError(
            f"Unexpected tensor(s) {names}{' ...' if len(unexpected) > 4 else ''} for the architecture inferred from "
            f"the checkpoint ({_describe(arch)})."
        )
    missing = [n for n in targets if n not in canonical.tensors]
    if missing:
        names = [canonical.file_name(n) for n in missing[:4]]
        raise InputError(
            f"The checkpoint lacks tensor(s) {names}{' ...' if len(missing) > 4 else ''} that a {_describe(arch)} needs."
        )
    with torch.no_grad():
        for name, parameter in targets.items():
            value = canonical.tensors[name]
            if value.numel() != parameter.numel() or (value.ndim == parameter.ndim and value.shape != parameter.shape):
                raise InputError(
                    f"Tensor '{canonical.file_name(name)}' has shape {tuple(value.shape)}, but a {_describe(arch)} "
                    f"needs {tuple(parameter.shape)} there."
                )
            check_weight_tensor(canonical.file_name(name), value)
            parameter.copy_(value.reshape(parameter.shape).to(parameter.dtype))
    return model, arch


def _describe(arch: Architecture) -> str:
    mlp = f"SwiGLU {arch.mlp_hidden}" if arch.swiglu else f"MLP {arch.mlp_hidden}"
    return (
        f"{arch.family.upper()} ViT of width {arch.embed_dim}, {arch.depth} blocks, {arch.num_heads} heads, "
        f"patch {arch.patch_size}, {arch.num_registers} registers, {mlp}"
    )
