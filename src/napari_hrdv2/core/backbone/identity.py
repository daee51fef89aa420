"""Which backbone weights a model was trained with, and whether loading a backbone would download it.

A trained model records the *family* of its backbone (:func:`backbone_family_of`: DINOv2, DINOv2 with
registers, DINOv3) and a *fingerprint* of its backbone's weights: a few values of every parameter
tensor, taken at fixed positions (:func:`backbone_fingerprint`). Two backbones with the same width
but other weights (``dinov2_vits14`` and ``dinov2_vits14_reg``, or two fine-tunes) give features of
the same shape, so a model applied to the wrong one predicts silently wrong labels; comparing
fingerprints (:func:`same_weights`) catches that. The fingerprint does not depend on the file
format (Hugging Face folder or official ``.pth``) and tolerates the rounding of float16/bfloat16
loading; :func:`fingerprint_hash` is a short hash of it for messages.

:func:`download_needed` tells, without downloading, whether loading a backbone name would fetch it
from the Hugging Face Hub (the CLI then asks for ``--allow-download``; the GUI can ask the user).
"""

from __future__ import annotations

import hashlib
import re
import threading
import weakref
from pathlib import Path
from typing import Any

import numpy as np

#: Values taken from every parameter tensor.
_VALUES_PER_TENSOR = 4
#: Relative tolerance of :func:`same_weights` (bfloat16 keeps ~3 significant digits).
_RTOL = 2e-2

_FINGERPRINTS: weakref.WeakKeyDictionary[Any, np.ndarray] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def backbone_fingerprint(model: Any) -> np.ndarray:
    """(n,) float32 values of the model's parameters at fixed positions (cached per model object).

    ``model`` is a torch module (``Backbone.model``).
    """
    with _LOCK:
        if model in _FINGERPRINTS:
            return _FINGERPRINTS[model]
    import torch

    values = []
    with torch.no_grad():
        for _, parameter in sorted(model.named_parameters(), key=lambda item: item[0]):
            flat = parameter.detach().reshape(-1)
            if flat.numel() == 0:
                continue
            index = torch.linspace(0, flat.numel() - 1, _VALUES_PER_TENSOR, device=flat.device).round().long()
            values.append(flat[index].float().cpu())
    fingerprint = torch.cat(values).numpy().astype(np.float32) if values else np.zeros(0, np.float32)
    with _LOCK:
        _FINGERPRINTS[model] = fingerprint
    return fingerprint


def fingerprint_hash(fingerprint: np.ndarray) -> str:
    """A short hash of a fingerprint (rounded to 2 significant digits, so float16 loading gives the same)."""
    values = np.asarray(fingerprint, dtype=np.float64)
    rounded = np.array([float(f"{v:.2g}") for v in values], dtype=np.float64)
    return hashlib.sha256(rounded.tobytes()).hexdigest()[:12]


def same_weights(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    """True when two fingerprints come from the same weights (or one is unknown)."""
    if a is None or b is None:
        return True
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    if a.shape != b.shape:
        return False
    return bool(np.all(np.abs(a - b) <= _RTOL * np.maximum(np.abs(a), np.abs(b)) + 1e-6))


def backbone_family_of(backbone: Any) -> str:
    """The family of a loaded backbone: ``"dinov2"``, ``"dinov2_reg"`` or ``"dinov3"`` (keys of ``registry.FAMILIES``).

    Derived from the loaded model (its architecture and register tokens), not from its name, so a
    folder, a ``.pth`` file and a preset of one family agree.
    """
    family = str(getattr(backbone, "family", "dinov2") or "dinov2")
    if family == "dinov2" and int(getattr(backbone, "num_registers", 0) or 0) > 0:
        return "dinov2_reg"
    return family


def family_title(family: str | None) -> str:
    """A family's name for messages (``"dinov2_reg"`` -> ``"DINOv2 with registers"``)."""
    from .registry import FAMILIES

    if family is None:
        return "unknown"
    known = FAMILIES.get(family)
    return known.name if known is not None else family


def _looks_like_hub_id(text: str) -> bool:
    """``owner/name``; neither part starts with '.' or '-' (so ``./x.pth`` and ``../x`` are paths, not ids)."""
    return re.fullmatch(r"(?![.-])[\w.-]+/(?![.-])[\w.-]+", text) is not None


def download_needed(source: str) -> str | None:
    """The Hugging Face repository loading ``source`` would download, or None if it is on this computer.

    ``source`` is a backbone name as in ``FeatureConfig.backbone``: a local folder or file (never a
    download), a preset or a Hugging Face id (a download unless the Hugging Face cache holds it).
    Looks only at local files; never touches the network.
    """
    from .loading import find_spec, looks_like_path

    source = str(source)
    spec = find_spec(source)
    preset = spec is not None and not looks_like_path(source)  # as load_backbone: presets win over same-named folders
    try:
        if not preset and Path(source).expanduser().exists():
            return None
    except OSError:  # e.g. a name too long for the file system: loading it gives the clear error
        return None
    hub_id = spec.hf_id if preset else source
    if not _looks_like_hub_id(hub_id):
        return None  # not a hub id: loading gives a clear "not found" error without any download
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(hub_id, "config.json")
    except Exception:  # noqa: BLE001  (an unreadable cache counts as "not cached")
        cached = None
    return None if isinstance(cached, str) and Path(cached).exists() else hub_id
