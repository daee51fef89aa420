"""Device and dtype resolution (``"auto"`` = CUDA, then MPS, then CPU)."""

from __future__ import annotations

import torch

from .errors import InputError

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

#: Accepted values of ``FeatureConfig.dtype`` and ``FeatureConfig.storage_dtype``.
DTYPE_OPTIONS = ("auto", *_DTYPES)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Return the torch device for ``device`` (``"auto"``, ``"cpu"``, ``"cuda[:i]"``, ``"mps"``)."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise InputError(f"Unknown device {device!r}: use 'auto', 'cpu', 'cuda', 'cuda:1' or 'mps'.") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError(
            f"Device {device!r} was requested but this PyTorch has no usable CUDA "
            f"(torch {torch.__version__}). Use device='cpu' or install a CUDA build of PyTorch."
        )
    return resolved


def _named_dtype(value: str, option: str) -> torch.dtype:
    try:
        return _DTYPES[value]
    except KeyError:
        raise InputError(f"Unknown {option} {value!r}: use one of {', '.join(map(repr, DTYPE_OPTIONS))}.") from None


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``"auto"`` gives float16 on CUDA and float32 elsewhere."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return _named_dtype(dtype, "dtype")


def resolve_storage_dtype(storage_dtype: str | torch.dtype, compute_dtype: torch.dtype) -> torch.dtype:
    """``"auto"`` keeps a 16-bit compute dtype and stores float32 results as float16."""
    if isinstance(storage_dtype, torch.dtype):
        return storage_dtype
    if storage_dtype == "auto":
        return compute_dtype if compute_dtype in (torch.float16, torch.bfloat16) else torch.float16
    return _named_dtype(storage_dtype, "storage_dtype")


def is_out_of_memory(error: BaseException) -> bool:
    """True for CUDA/MPS out-of-memory errors (which are worth a retry with a smaller batch)."""
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(error, oom):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()
