"""DINOv2 backbones: a registry of presets and one loader for every weight source.

``load_backbone`` accepts a preset name (``"dinov2_vits14"``, ``"small"``,
``"dinov2_vits14_reg"``...), any Hugging Face id of the DINOv2 families
(``"facebook/dinov2-base"``), a local folder written by ``save_pretrained``, or
a local torch.hub-format ``.pth`` state dict (the official
``dinov2_vits14_pretrain.pth`` layout, with or without registers), whose
architecture is inferred from its tensors. No pickle code is executed
(``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import InputError, WeightsNotFoundError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    """Facts about one published DINOv2 checkpoint."""

    name: str
    hf_id: str
    embed_dim: int
    depth: int
    num_heads: int
    num_registers: int = 0
    patch_size: int = 14

    @property
    def official_filename(self) -> str:
        """File name of the official torch.hub checkpoint, e.g. ``dinov2_vits14_pretrain.pth``."""
        reg = "_reg4" if self.num_registers else ""
        return f"{self.name.removesuffix('_reg')}{reg}_pretrain.pth"


_SIZES = {
    "s": ("small", 384, 12, 6),
    "b": ("base", 768, 12, 12),
    "l": ("large", 1024, 24, 16),
    "g": ("giant", 1536, 40, 24),
}

BACKBONES: dict[str, BackboneSpec] = {}
for _letter, (_word, _dim, _depth, _heads) in _SIZES.items():
    BACKBONES[f"dinov2_vit{_letter}14"] = BackboneSpec(
        f"dinov2_vit{_letter}14", f"facebook/dinov2-{_word}", _dim, _depth, _heads
    )
    BACKBONES[f"dinov2_vit{_letter}14_reg"] = BackboneSpec(
        f"dinov2_vit{_letter}14_reg", f"facebook/dinov2-with-registers-{_word}", _dim, _depth, _heads, num_registers=4
    )

_ALIASES: dict[str, str] = {}
for _spec in BACKBONES.values():
    _word = _spec.hf_id.rsplit("-", 1)[-1]
    _ALIASES[_spec.hf_id.lower()] = _spec.name
    _ALIASES[_spec.hf_id.split("/")[1].lower()] = _spec.name
    _ALIASES[(f"{_word}_reg" if _spec.num_registers else _word)] = _spec.name


def backbone_names() -> list[str]:
    """Preset names, smallest first."""
    return list(BACKBONES)


def find_spec(name: str) -> BackboneSpec | None:
    """The preset for a name, alias or Hugging Face id, or ``None``."""
    key = name.strip()
    if key in BACKBONES:
        return BACKBONES[key]
    alias = _ALIASES.get(key.lower())
    return BACKBONES[alias] if alias else None


@dataclass(frozen=True)
class Backbone:
    """A loaded DINOv2 model plus the facts the feature engine needs."""

    model: torch.nn.Module
    source: str
    patch_size: int
    num_registers: int
    embed_dim: int
    num_heads: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_sha256(path: Path, expected: str | None) -> None:
    if expected is None:
        return
    actual = sha256_of(path)
    if actual.lower() != expected.strip().lower():
        raise WeightsNotFoundError(
            f"Checksum mismatch for {path}: expected sha256 {expected}, got {actual}. "
            "The file is corrupt or not the one you meant; download it again."
        )


def _missing_weights_message(source: str, spec: BackboneSpec | None, reason: str) -> str:
    spec = spec or find_spec(source)
    lines = [f"Could not load backbone weights '{source}' ({reason})."]
    hf_id = spec.hf_id if spec else source
    lines.append(
        f"On a computer with internet access run `hf download {hf_id}` (or start napari-hrdv2 "
        "there once), then copy the Hugging Face cache (~/.cache/huggingface/hub) or the downloaded folder here "
        "and pass the folder's path as the backbone (command line: --backbone FOLDER; napari: 'Select weights...' "
        "in the HR-Dv2 Features dock)."
    )
    if spec:
        lines.append(
            f"Alternatively download the official checkpoint {spec.official_filename} from "
            "https://dl.fbaipublicfiles.com/dinov2/ and pass the path of that .pth file as the backbone."
        )
    return " ".join(lines)


_CACHE: dict[tuple[str, str, str, str | None], Backbone] = {}
_CACHE_LOCK = threading.Lock()


def load_backbone(
    source: str,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    sha256: str | None = None,
    cache: bool = True,
) -> Backbone:
    """Load a DINOv2 backbone from a preset, Hugging Face id, folder or ``.pth`` file.

    Loaded models are cached per (source, device, dtype), so widgets and
    scripts that encode many images load the weights once.

    Raises
    ------
    WeightsNotFoundError
        When the weights are neither local nor downloadable, with instructions.
    InputError
        When ``source`` is not a DINOv2 model.
    """
    device = torch.device(device)
    key = (str(source), str(device), str(dtype), sha256)
    with _CACHE_LOCK:
        if cache and key in _CACHE:
            return _CACHE[key]
        backbone = _load_uncached(str(source), sha256=sha256)
        backbone.model.to(device=device, dtype=dtype)
        if cache:
            _CACHE[key] = backbone
        return backbone


def clear_backbone_cache() -> None:
    """Forget cached models (frees their memory once nothing else holds them)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def _load_uncached(source: str, *, sha256: str | None) -> Backbone:
    path = Path(source).expanduser()
    if path.is_dir():
        weights = next((path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).exists()), None)
        if weights is not None:
            _check_sha256(weights, sha256)
        return _from_pretrained(str(path), source=source)
    if path.is_file():
        _check_sha256(path, sha256)
        return _from_state_dict_file(path)
    if path.suffix in {".pth", ".pt", ".safetensors", ".bin"} or os.sep in source and not _looks_like_hub_id(source):
        raise WeightsNotFoundError(f"Backbone weights file or folder '{source}' does not exist. Check the path.")
    spec = find_spec(source)
    hub_id = spec.hf_id if spec else source
    if not _looks_like_hub_id(hub_id):
        raise InputError(
            f"Unknown backbone '{source}'. Use a preset ({', '.join(backbone_names())}), a Hugging Face id such as "
            "'facebook/dinov2-small', a folder written by save_pretrained, or a .pth checkpoint file."
        )
    folder = _download(hub_id, spec)
    return _load_uncached(str(folder), sha256=sha256) if sha256 else _from_pretrained(str(folder), source=source)


def _looks_like_hub_id(text: str) -> bool:
    return re.fullmatch(r"[\w.-]+/[\w.-]+", text) is not None


def _download(hub_id: str, spec: BackboneSpec | None) -> Path:
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(
            hub_id, allow_patterns=["config.json", "model.safetensors"], local_files_only=_offline()
        )
    except Exception as err:  # the hub raises many types for "no network", "not cached", "no such repo"
        reason = "offline (HF_HUB_OFFLINE is set) and not in the local cache" if _offline() else type(err).__name__
        raise WeightsNotFoundError(_missing_weights_message(hub_id, spec, reason)) from err
    if not (Path(folder) / "config.json").exists():
        raise WeightsNotFoundError(_missing_weights_message(hub_id, spec, "the download holds no config.json"))
    return Path(folder)


def _from_pretrained(folder: str, *, source: str) -> Backbone:
    from transformers import AutoConfig, AutoModel

    try:
        config = AutoConfig.from_pretrained(folder)
    except Exception as err:
        raise WeightsNotFoundError(f"'{folder}' is not a readable Hugging Face model folder: {err}") from err
    if config.model_type not in ("dinov2", "dinov2_with_registers"):
        raise InputError(f"'{source}' is a {config.model_type!r} model; napari-hrdv2 needs a DINOv2 model.")
    try:
        model = AutoModel.from_pretrained(folder, attn_implementation="sdpa")
    except Exception as err:
        raise WeightsNotFoundError(f"Could not read the weights in '{folder}': {err}") from err
    return _wrap(model, source)


def _wrap(model: torch.nn.Module, source: str) -> Backbone:
    model.eval()
    model.requires_grad_(False)
    config = model.config
    return Backbone(
        model=model,
        source=source,
        patch_size=int(config.patch_size),
        num_registers=int(getattr(config, "num_register_tokens", 0) or 0),
        embed_dim=int(config.hidden_size),
        num_heads=int(config.num_attention_heads),
    )


# ---------------------------------------------------------------- official .pth


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeightsNotFoundError(f"Could not read '{path}' as a PyTorch state dict: {err}") from err
    for wrapper in ("model", "state_dict", "teacher"):
        if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsNotFoundError(f"'{path}' does not hold a flat state dict of tensors.")
    return {re.sub(r"^(module\.|backbone\.)", "", k): v for k, v in state.items()}


def official_to_transformers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an official DINOv2 (torch.hub) state dict to transformers' names."""
    out: dict[str, torch.Tensor] = {}
    simple = {
        "cls_token": "embeddings.cls_token",
        "pos_embed": "embeddings.position_embeddings",
        "register_tokens": "embeddings.register_tokens",
        "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
        "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
        "norm.weight": "layernorm.weight",
        "norm.bias": "layernorm.bias",
    }
    block_parts = {
        "norm1": "norm1", "norm2": "norm2", "attn.proj": "attention.o_proj", "ls1.gamma": "layer_scale1.lambda1",
        "ls2.gamma": "layer_scale2.lambda1", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2", "mlp.w3": "mlp.down_proj",
    }  # fmt: skip
    for key, value in state.items():
        if key in simple:
            out[simple[key]] = value
            continue
        if key == "mask_token":
            out["embeddings.mask_token"] = value.reshape(1, -1)
            continue
        match = re.fullmatch(r"blocks\.(?:\d+\.)?(\d+)\.(.+)", key)
        if not match:
            continue  # heads, dino/ibot projection heads etc. are not part of the backbone
        prefix, rest = f"encoder.layer.{match.group(1)}.", match.group(2)
        if rest.startswith("attn.qkv."):
            suffix = rest.rsplit(".", 1)[1]
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                out[f"{prefix}attention.{name}.{suffix}"] = part
        elif rest.startswith("mlp.w12."):
            suffix = rest.rsplit(".", 1)[1]
            gate, up = value.chunk(2, dim=0)
            out[f"{prefix}mlp.gate_proj.{suffix}"] = gate
            out[f"{prefix}mlp.up_proj.{suffix}"] = up
        else:
            stem, _, suffix = rest.rpartition(".")
            stem_key = rest if rest in block_parts else stem
            if stem_key not in block_parts:
                continue
            out[prefix + block_parts[stem_key] + ("" if rest in block_parts else "." + suffix)] = value
    return out


def _from_state_dict_file(path: Path) -> Backbone:
    state = _read_state_dict(path)
    if "pos_embed" in state or any(k.startswith("blocks.") for k in state):
        state = official_to_transformers(state)
    state = {k.removeprefix("dinov2.").removeprefix("dinov2_with_registers."): v for k, v in state.items()}
    if "embeddings.position_embeddings" not in state:
        raise InputError(f"'{path}' is not a DINOv2 checkpoint (no position embeddings found).")
    model = _model_from_state_dict(state, path)
    return _wrap(model, str(path))


def _model_from_state_dict(state: dict[str, torch.Tensor], path: Path) -> torch.nn.Module:
    from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    embed_dim = state["embeddings.cls_token"].shape[-1]
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"encoder\.layer\.(\d+)\.", k)))
    patch_size = state["embeddings.patch_embeddings.projection.weight"].shape[-1]
    grid = round((state["embeddings.position_embeddings"].shape[1] - 1) ** 0.5)
    swiglu = "encoder.layer.0.mlp.gate_proj.weight" in state
    hidden = state["encoder.layer.0.mlp." + ("gate_proj" if swiglu else "fc1") + ".weight"].shape[0]
    mlp_ratio = hidden / embed_dim
    if swiglu:  # transformers shrinks 4x to 2/3 rounded to 8; the official giant has 4096 = 2/3 * 4 * 1536
        mlp_ratio = 4.0 if (int(embed_dim * 4 * 2 / 3) + 7) // 8 * 8 == hidden else hidden * 1.5 / embed_dim
    if abs(mlp_ratio - round(mlp_ratio)) > 1e-6:
        raise InputError(f"'{path}' has an MLP width {hidden} that is not a whole multiple of its dim {embed_dim}.")
    mlp_ratio = int(round(mlp_ratio))
    common = dict(
        hidden_size=embed_dim, num_hidden_layers=depth, num_attention_heads=max(1, embed_dim // 64),
        mlp_ratio=mlp_ratio, patch_size=patch_size, image_size=grid * patch_size, use_swiglu_ffn=swiglu,
        layerscale_value=1.0, layer_norm_eps=1e-6, attn_implementation="sdpa",
    )  # fmt: skip
    num_registers = state["embeddings.register_tokens"].shape[1] if "embeddings.register_tokens" in state else 0
    if num_registers:
        model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(num_register_tokens=num_registers, **common))
    else:
        model = Dinov2Model(Dinov2Config(**common))
    state.setdefault("embeddings.mask_token", torch.zeros(1, embed_dim))
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if "mask_token" not in k]
    if missing:
        raise InputError(
            f"'{path}' does not fit a DINOv2 architecture inferred from its tensors "
            f"(dim {embed_dim}, depth {depth}); missing {missing[:4]}{'...' if len(missing) > 4 else ''}."
        )
    return model
