"""DINOv2 / DINOv3 backbones: a registry of presets and one loader for every weight source.

``load_backbone`` accepts

- a preset name (``"dinov2_vits14"``, ``"small"``, ``"dinov2_vits14_reg"``,
  ``"dinov3_vits16"``, ``"dinov3_vitl16_sat493m"``...). Presets always win: a
  folder called ``small`` in the working directory is loaded as ``./small``;
- any Hugging Face id of the DINOv2 / DINOv3 families
  (``"facebook/dinov3-vitb16-pretrain-lvd1689m"``) or of timm's DINO weights
  (``"timm/vit_small_patch14_reg4_dinov2.lvd142m"``);
- a local folder written by ``save_pretrained``, or a timm folder
  (``config.json`` with ``architecture`` + ``model.safetensors``);
- a checkpoint file: official torch.hub DINOv2 / DINOv3 ``.pth``, timm
  ``.safetensors``, or a transformers state dict (:mod:`.checkpoints`).

Files are untrusted: ``torch.load(weights_only=True)`` or safetensors only,
``trust_remote_code`` is never enabled, and a folder whose ``config.json``
names another model type or custom code (``auto_map``) is refused before
transformers reads it. A checkpoint with missing, unexpected or wrongly shaped
tensors is refused with the tensor's name.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..errors import InputError, WeightsNotFoundError
from ..files.checksums import file_sha256
from ..files.paths import check_path

if TYPE_CHECKING:
    from .structure import ViTParts
from .registry import (  # noqa: F401  (re-exported: the registry is torch-free for the CLI)
    BACKBONES,
    DINOV3_ACCESS,
    FAMILIES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MODEL_TYPES,
    SATELLITE_MEAN,
    SATELLITE_STD,
    BackboneFamily,
    BackboneSpec,
    backbone_family,
    backbone_names,
    find_spec,
)


@dataclass(frozen=True)
class Backbone:
    """A loaded DINOv2 / DINOv3 model plus the facts the feature engine needs.

    The model is only read while encoding (no hooks, no state), so one
    Backbone can serve several threads at once.
    """

    model: torch.nn.Module
    source: str
    patch_size: int
    num_registers: int
    embed_dim: int
    num_heads: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    family: str = "dinov2"
    #: The model's submodules by role (blocks, norms, projections), resolved once on creation.
    parts: ViTParts = field(init=False, repr=False, compare=False)
    #: Other runtimes' forms of the forward pass made for this model, by setting (:func:`.onnx_forward.onnx_forward`).
    compiled: dict = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        from .structure import vit_parts

        object.__setattr__(self, "parts", vit_parts(self.model))

    @property
    def depth(self) -> int:
        """Number of transformer blocks."""
        return len(self.parts.blocks)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


def hub_offline() -> bool:
    """True when the Hugging Face Hub is switched off (``HF_HUB_OFFLINE``): nothing may be downloaded."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _check_sha256(path: Path, expected: str | None) -> None:
    if expected is None:
        return
    actual = file_sha256(path)
    if actual.lower() != expected.strip().lower():
        raise WeightsNotFoundError(
            f"Checksum mismatch for {path}: expected sha256 {expected}, got {actual}. "
            "The file is corrupt or not the one you meant; download it again."
        )


def _missing_weights_message(source: str, spec: BackboneSpec | None, reason: str) -> str:
    spec = spec or find_spec(source)
    lines = [f"Could not load backbone weights '{source}' ({reason})."]
    hf_id = spec.hf_id if spec else source
    if spec is not None and spec.gated or "dinov3" in source.lower():
        lines.append(DINOV3_ACCESS)
    lines.append(
        f"On a computer with internet access run `hf download {hf_id}` (or start napari-hrdv2 "
        "there once), then copy the Hugging Face cache (~/.cache/huggingface/hub) or the downloaded folder here "
        "and pass the folder's path as the backbone (command line: --backbone FOLDER; napari: 'Select weights...' "
        "in the HR-Dv2 Features dock)."
    )
    if spec and spec.family != "dinov3":
        lines.append(
            f"Alternatively download the official checkpoint {spec.official_filename} from "
            "https://dl.fbaipublicfiles.com/dinov2/ and pass the path of that .pth file as the backbone."
        )
    elif spec:
        lines.append(f"The official checkpoint {spec.official_filename} also works: pass the path of the .pth file.")
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
    """Load a DINOv2 / DINOv3 backbone from a preset, Hugging Face id, folder or checkpoint file.

    Loaded models are cached per (source, device, dtype), so widgets and
    scripts that encode many images load the weights once. A cached model may
    be used by several threads at once.

    Raises
    ------
    WeightsNotFoundError
        When the weights are neither local nor downloadable, with instructions.
    InputError
        When ``source`` is not a DINOv2 / DINOv3 model or its tensors do not fit one.
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


WEIGHT_SUFFIXES = (".pth", ".pt", ".safetensors", ".bin")


def looks_like_path(text: str) -> bool:
    """Whether ``text`` is written as a path (absolute, ``./``, ``~``, a weights suffix, a Windows drive)."""
    return (
        text.startswith(("/", "./", "../", "~", ".\\", "..\\"))
        or text.lower().endswith(WEIGHT_SUFFIXES)
        or os.path.isabs(text)
        or "\\" in text
        or text.count("/") > 1
    )


def _load_uncached(source: str, *, sha256: str | None) -> Backbone:
    spec = find_spec(source)
    if spec is not None and not looks_like_path(source):  # presets win over same-named folders
        folder = _download(spec.hf_id, spec)
        return _from_folder(folder, source=source, sha256=sha256, spec=spec)
    path = check_path(Path(source).expanduser(), "backbone")
    if path.is_dir():
        return _from_folder(path, source=source, sha256=sha256, spec=spec)
    if path.is_file():
        _check_sha256(path, sha256)
        return _from_checkpoint_file(path)
    if looks_like_path(source) and not _looks_like_hub_id(source):
        raise WeightsNotFoundError(
            f"Backbone weights file or folder '{source}' does not exist. Check the path.{relative_path_hint(source)}"
        )
    if not _looks_like_hub_id(source):
        close = difflib.get_close_matches(source, backbone_names(), n=3)
        suggestion = f" Did you mean {' or '.join(repr(name) for name in close)}?" if close else ""
        raise InputError(
            f"Unknown backbone '{source}'.{suggestion}{relative_path_hint(source)} Otherwise use a preset (listed by "
            "`napari-hrdv2 features --help`), a Hugging Face id such as 'facebook/dinov2-small', a folder written by "
            "save_pretrained, or a .pth / .safetensors checkpoint file."
        )
    folder = _download(source, None)
    return _from_folder(folder, source=source, sha256=sha256, spec=None)


def _download_failure(err: BaseException) -> str:
    """Why a Hugging Face download failed, in words (the hub's exception names mean little to a user)."""
    if hub_offline():
        return "offline (HF_HUB_OFFLINE is set) and not in the local cache"
    name = type(err).__name__
    if name in ("GatedRepoError",):
        return "the repository is gated: accept its licence on huggingface.co and log in with `hf auth login`"
    if name in ("RepositoryNotFoundError", "RevisionNotFoundError"):
        return "no such repository on huggingface.co"
    return (
        "the download failed: huggingface.co could not be reached (no network, a proxy or a firewall) and the "
        "weights are not in the local Hugging Face cache"
    )


def _looks_like_hub_id(text: str) -> bool:
    """``owner/name``; neither part starts with '.' or '-' (so ``./x.pth`` and ``../x`` are paths, not ids)."""
    return re.fullmatch(r"(?![.-])[\w.-]+/(?![.-])[\w.-]+", text) is not None


def relative_path_hint(source: str) -> str:
    """For a relative backbone path that is not here: where it was looked for, and how to say where it is.

    A model or basis records its backbone as it was named when it was made; a relative name (``tiny``,
    ``weights/vits14.pth``) only means something in the folder it was made in.
    """
    if os.path.isabs(os.path.expanduser(source)):
        return ""
    return (
        " If it is the backbone a model or PCA basis was made with in another folder, say where those weights are "
        "(segment: --backbone-path PATH; pca apply: --backbone PATH; Python: load_backbone(PATH)); relative paths "
        f"are looked up in the current folder ('{Path.cwd()}')."
    )


def _download(hub_id: str, spec: BackboneSpec | None) -> Path:
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(
            hub_id,
            allow_patterns=["config.json", "model.safetensors", "preprocessor_config.json"],
            local_files_only=hub_offline(),
        )
    except Exception as err:  # the hub raises many types for "no network", "not cached", "no such repo", "gated"
        raise WeightsNotFoundError(_missing_weights_message(hub_id, spec, _download_failure(err))) from err
    if not (Path(folder) / "config.json").exists():
        raise WeightsNotFoundError(_missing_weights_message(hub_id, spec, "the download holds no config.json"))
    return Path(folder)


# ---------------------------------------------------------------- folders


def read_folder_config(folder: Path) -> dict:
    """The folder's ``config.json`` as a dict, checked before transformers reads it.

    Refuses custom code (``auto_map``) and model types other than DINOv2 / DINOv3,
    so transformers never asks to trust or runs code from the folder.
    """
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise WeightsNotFoundError(
            f"'{folder}' has no config.json: it is not a model folder (save_pretrained or timm). "
            "Pass a checkpoint file (.pth / .safetensors) or the folder that holds config.json."
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise WeightsNotFoundError(f"'{config_path}' is not readable JSON: {err}") from err
    if not isinstance(config, dict):
        raise InputError(f"'{config_path}' does not hold a JSON object.")
    if "auto_map" in config:
        raise InputError(
            f"'{folder}' asks to run its own Python code (config.json has 'auto_map'); napari-hrdv2 never runs code "
            "from model folders. Use the official DINOv2 / DINOv3 weights (a preset, their Hugging Face id, or the "
            ".pth checkpoint)."
        )
    model_type = config.get("model_type")
    if model_type is None and "architecture" in config:
        return config  # a timm folder
    if model_type not in MODEL_TYPES:
        raise InputError(
            f"'{folder}' holds a {model_type!r} model; napari-hrdv2 needs a DINOv2 or DINOv3 model "
            f"(model_type one of {sorted(MODEL_TYPES)}, or a timm DINOv2/DINOv3 folder)."
        )
    return config


def _folder_weights(folder: Path) -> Path | None:
    return next((folder / n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).exists()), None)


def _folder_mean_std(folder: Path, spec: BackboneSpec | None) -> tuple[tuple, tuple]:
    """Normalisation from preprocessor_config.json, else the preset's, else ImageNet."""
    mean, std = (spec.mean, spec.std) if spec else (IMAGENET_MEAN, IMAGENET_STD)
    processor = folder / "preprocessor_config.json"
    if processor.is_file():
        try:
            data = json.loads(processor.read_text(encoding="utf-8"))
            mean, std = _checked_mean_std(data.get("image_mean", mean), data.get("image_std", std), processor)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            pass
    return tuple(mean), tuple(std)


def _checked_mean_std(mean, std, where) -> tuple[tuple, tuple]:
    try:
        mean_t, std_t = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    except (TypeError, ValueError):
        raise InputError(f"{where}: mean/std must be three numbers each, got {mean!r} / {std!r}.") from None
    if len(mean_t) != 3 or len(std_t) != 3 or min(std_t) <= 0:
        raise InputError(f"{where}: mean/std must be three numbers each (std > 0), got {mean!r} / {std!r}.")
    return mean_t, std_t


def _from_folder(folder: Path, *, source: str, sha256: str | None, spec: BackboneSpec | None) -> Backbone:
    config = read_folder_config(folder)
    weights = _folder_weights(folder)
    if weights is None:
        raise WeightsNotFoundError(f"'{folder}' has a config.json but no model.safetensors / pytorch_model.bin.")
    _check_sha256(weights, sha256)
    if "model_type" not in config:
        return _from_timm_folder(folder, config, weights, source=source)
    check_folder_weights(folder, config, weights)
    family = MODEL_TYPES[config["model_type"]]
    from transformers import Dinov2Model, Dinov2WithRegistersModel

    if family == "dinov3":
        from transformers import DINOv3ViTModel as model_class
    else:
        model_class = Dinov2WithRegistersModel if config["model_type"] == "dinov2_with_registers" else Dinov2Model
    try:
        with _quiet_transformers():
            model, info = model_class.from_pretrained(
                str(folder), attn_implementation="sdpa", trust_remote_code=False, output_loading_info=True
            )
    except Exception as err:
        if "ignore_mismatched_sizes" in str(err) or "size mismatch" in str(err):
            raise InputError(
                f"The weights in '{folder}' do not fit its config.json (tensors of other sizes): the two files come "
                "from different models. Download or copy the whole folder again."
            ) from None
        raise WeightsNotFoundError(f"Could not read the weights in '{folder}': {str(err)[:300]}") from err
    missing = [k for k in info.get("missing_keys", []) if "mask_token" not in k]
    mismatched = info.get("mismatched_keys", [])
    if missing or mismatched:
        detail = f"missing tensor(s) {sorted(missing)[:4]}" if missing else f"wrongly shaped {mismatched[:2]}"
        raise InputError(f"The weights in '{folder}' do not fit its config.json: {detail}.")
    mean, std = _folder_mean_std(folder, spec)
    return _wrap(model, source, family="dinov3" if family == "dinov3" else "dinov2", mean=mean, std=std)


class _quiet_transformers:  # noqa: N801  (a context manager used like a function)
    """Silence transformers' loading reports (30-line tables) while a folder is read; errors still raise."""

    def __enter__(self) -> None:
        from transformers.utils import logging as hf_logging

        self._level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()

    def __exit__(self, *exc: object) -> None:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity(self._level)


def check_folder_weights(folder: Path, config: dict, weights: Path) -> None:
    """Every tensor of a transformers folder's weights file is float and finite, and fits ``config.json``'s size.

    transformers would cast integer tensors silently and load NaN as is, so the file is read here first.

    Raises
    ------
    WeightsNotFoundError
        The file cannot be read (truncated: a partial download in the Hugging Face cache says so).
    InputError
        A tensor of another dtype, with NaN / infinite values, or a width / depth other than ``config.json``'s.
    """
    from .checkpoints import check_weight_tensor, read_state_dict, unreadable_weights_message

    try:
        if weights.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(weights), framework="pt") as handle:
                state = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        else:
            state = read_state_dict(weights)
    except WeightsNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001  (safetensors raises its own types for truncated files)
        raise WeightsNotFoundError(unreadable_weights_message(weights, err)) from err
    layers = {int(m.group(1)) for key in state if (m := re.search(r"(?:^|\.)layer\.(\d+)\.", key))}
    cls = next((value for key, value in state.items() if key.endswith("embeddings.cls_token")), None)
    width = int(cls.shape[-1]) if cls is not None and cls.ndim else None
    depth = max(layers) + 1 if layers else None
    wanted = (config.get("hidden_size"), config.get("num_hidden_layers"))
    if None not in (width, depth, *wanted) and (width, depth) != wanted:
        raise InputError(
            f"The weights in '{folder}' do not fit its config.json: config.json describes width {wanted[0]} with "
            f"{wanted[1]} blocks, {weights.name} holds width {width} with {depth} blocks. The two files come from "
            "different models: download or copy the whole folder again."
        )
    for key, value in state.items():
        try:
            check_weight_tensor(key, value)
        except InputError as err:
            raise InputError(f"'{weights}': {err}") from None


def _from_timm_folder(folder: Path, config: dict, weights: Path, *, source: str) -> Backbone:
    from .checkpoints import read_state_dict

    architecture = str(config.get("architecture", ""))
    if "dinov2" not in architecture and "dinov3" not in architecture:
        raise InputError(
            f"'{folder}' is a timm {architecture!r} model; napari-hrdv2 reads timm's DINOv2 / DINOv3 ViTs "
            "(vit_*_patch14_dinov2, vit_*_patch14_reg4_dinov2, vit_*_patch16_dinov3)."
        )
    pretrained = config.get("pretrained_cfg") or {}
    mean, std = _checked_mean_std(
        pretrained.get("mean", IMAGENET_MEAN), pretrained.get("std", IMAGENET_STD), folder / "config.json"
    )
    heads = _timm_heads(architecture)
    return _from_state_dict(read_state_dict(weights), source, mean=mean, std=std, heads=heads)


def _timm_heads(architecture: str) -> int | None:
    """Heads of a timm DINO architecture name (all have 64-dim heads except the 7B)."""
    return 32 if "_7b_" in architecture else None


# ---------------------------------------------------------------- checkpoint files


def refuse_napari_hrdv2_file(path: Path) -> None:
    """Raise :class:`InputError` when ``path`` is one of our own model or PCA basis files given as a backbone."""
    meta: dict = {}
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as handle:
            meta = handle.metadata() or {}
    except Exception:  # noqa: BLE001  (not safetensors: read_state_dict gives the error)
        pass
    ours = str(meta.get("format", "")).startswith("napari-hrdv2") or "hrdv2_pca" in meta
    if ours or path.suffix.lower() == ".hrdv2":
        what = "PCA basis" if "hrdv2_pca" in meta else "segmentation model"
        raise InputError(
            f"'{path}' is a napari-hrdv2 {what} file, not backbone weights. Pass it as the model (--model) or "
            "basis, and as the backbone the DINOv2 / DINOv3 weights it was made with (a preset, a Hugging Face id, "
            "a folder or a .pth / .safetensors checkpoint)."
        )


def _from_checkpoint_file(path: Path) -> Backbone:
    from .checkpoints import read_state_dict

    refuse_napari_hrdv2_file(path)
    mean, std = (SATELLITE_MEAN, SATELLITE_STD) if "sat493m" in path.name.lower() else (IMAGENET_MEAN, IMAGENET_STD)
    return _from_state_dict(read_state_dict(path), str(path), mean=mean, std=std)


def _from_state_dict(state: dict[str, torch.Tensor], source: str, *, mean, std, heads: int | None = None) -> Backbone:
    from .checkpoints import load_into_model, to_canonical

    try:
        model, arch = load_into_model(to_canonical(state), heads=heads)
    except InputError as err:
        raise InputError(f"'{source}': {err}") from None
    except (IndexError, ValueError, RuntimeError) as err:  # tensors of impossible ranks in a crafted file
        raise InputError(f"'{source}' has tensors of impossible shapes for a ViT: {str(err)[:200]}") from err
    return _wrap(model, source, family=arch.family, mean=mean, std=std)


def _wrap(model: torch.nn.Module, source: str, *, family: str, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Backbone:
    model.eval()
    model.requires_grad_(False)
    config = model.config
    patch = config.patch_size
    return Backbone(
        model=model,
        source=source,
        patch_size=int(patch[0] if isinstance(patch, (list, tuple)) else patch),
        num_registers=int(getattr(config, "num_register_tokens", 0) or 0),
        embed_dim=int(config.hidden_size),
        num_heads=int(config.num_attention_heads),
        mean=tuple(mean),
        std=tuple(std),
        family=family,
    )
