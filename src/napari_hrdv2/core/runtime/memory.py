"""Memory a run needs, estimated before it starts, so a too-large image is refused with the fix.

An :class:`~.encoding.Encoding` keeps, for every tile and transform, the low-resolution token maps
(``embed_dim`` channels in the storage dtype) and optionally the CLS attention (``num_heads``
float32 channels); encoding also keeps the scaled image (float32, one or three channels) and the
outputs computed from it are a few float32 planes of the image size. :func:`check_encoding_memory`
compares that with the memory this process can still get (``MemAvailable``, the address-space
limit ``RLIMIT_AS``, and the free memory of a CUDA device) and raises an :class:`InputError` that
says how much is needed and how to need less.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError

#: Extra float32 planes of the image size a run holds besides the encoding (scaling, outputs, temporaries).
_EXTRA_PLANES = 4
#: Leave this fraction of the available memory free.
_HEADROOM = 0.9


def available_host_bytes() -> int | None:
    """Memory this process can still allocate: min(MemAvailable, RLIMIT_AS - current size); None = unknown."""
    limits: list[int] = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                limits.append(int(line.split()[1]) * 1024)
                break
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft not in (resource.RLIM_INFINITY, -1):
            used = 0
            try:
                for line in Path("/proc/self/status").read_text().splitlines():
                    if line.startswith("VmSize:"):
                        used = int(line.split()[1]) * 1024
                        break
            except (OSError, ValueError, IndexError):
                pass
            limits.append(max(0, soft - used))
    except (ImportError, OSError, ValueError):  # pragma: no cover (Windows)
        pass
    if os.environ.get("NAPARI_HRDV2_MEMORY_LIMIT"):  # for tests and shared machines
        limits.append(int(float(os.environ["NAPARI_HRDV2_MEMORY_LIMIT"])))
    return min(limits) if limits else None


def available_device_bytes(device: object) -> int | None:
    """Free memory of a CUDA device (None for other devices)."""
    if getattr(device, "type", str(device)) != "cuda":
        return None
    try:
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    except Exception:  # noqa: BLE001  (no CUDA, or a driver error: do not block the run on the estimate)
        return None


def encoding_bytes(
    height: int,
    width: int,
    *,
    n_tokens: int,
    embed_dim: int,
    num_heads: int,
    storage_itemsize: int,
    with_attention: bool,
    channels: int = 3,
) -> tuple[int, int]:
    """(bytes on the compute device, bytes in host memory) of encoding one ``height x width`` image.

    ``n_tokens`` counts the low-resolution tokens of all tiles and transforms.
    """
    maps = n_tokens * embed_dim * storage_itemsize + (n_tokens * num_heads * 4 if with_attention else 0)
    host = height * width * 4 * (channels + _EXTRA_PLANES)
    return maps, host


def _gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.1f} GiB"


def check_encoding_memory(
    height: int,
    width: int,
    *,
    device_bytes: int,
    host_bytes: int,
    device: object,
    n_transforms: int,
    storage_itemsize: int = 2,
    n_channels: int | None = None,
) -> None:
    """Raise :class:`InputError` when encoding a ``height x width`` image cannot fit in memory.

    ``device_bytes`` and ``host_bytes`` come from :func:`encoding_bytes`; on the CPU both are host memory.
    ``n_channels``: the image's channels are encoded separately (``channel_mode="separate"``), the bytes
    count all of them and the message says so.
    """
    on_cuda = getattr(device, "type", str(device)) == "cuda"
    checks = [(host_bytes + (0 if on_cuda else device_bytes), available_host_bytes(), "memory")]
    if on_cuda:
        checks.append((device_bytes, available_device_bytes(device), "GPU memory"))
    for needed, available, what in checks:
        if available is not None and needed > _HEADROOM * available:
            separately = f" ({n_channels} channels encoded separately)" if n_channels else ""
            fewer = ", fewer channels (--channels)" if n_channels else ""
            raise InputError(
                f"Encoding this {height} x {width} image{separately} needs about {_gib(needed)} of {what} but about "
                f"{_gib(available)} is available. Need less{fewer}: fewer passes (--preset fast, or shifts='neumann'; now "
                f"{n_transforms}){', storage_dtype float16' if storage_itemsize > 2 else ''}, a smaller backbone, "
                "or split the image into parts (e.g. crops of a quarter of the size) and process them one at a time."
            )
