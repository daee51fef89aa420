"""Known answers of the memory estimate of one encoding (core.memory)."""

from __future__ import annotations

from pathlib import Path

import pytest

from napari_hrdv2.core.runtime.memory import available_host_bytes, encoding_bytes


def test_encoding_bytes_has_known_answers():
    """1000 tokens of 384 float16 channels = 768 000 bytes; attention adds 4 bytes per token and head; the host holds
    the float32 image (3 channels) and 4 more float32 planes of the image size."""
    common = dict(n_tokens=1000, embed_dim=384, num_heads=6, storage_itemsize=2)
    assert encoding_bytes(10, 20, **common, with_attention=False) == (768_000, 10 * 20 * 4 * 7)
    assert encoding_bytes(10, 20, **common, with_attention=True) == (768_000 + 24_000, 5600)
    assert encoding_bytes(10, 20, **common, with_attention=False, channels=1) == (768_000, 10 * 20 * 4 * 5)


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads Linux's /proc")
def test_available_host_bytes_subtracts_the_process_size_from_an_address_space_limit(monkeypatch):
    """Under an address-space limit (``ulimit -v``) of the process's current size + 64 MiB, about 64 MiB can still
    be allocated, not the whole limit (the process already uses the rest).

    Mutation killed: ``/proc/self/status`` misread (the current size taken as 0).
    """
    import resource

    def vm_size() -> int:
        line = next(s for s in Path("/proc/self/status").read_text().splitlines() if s.startswith("VmSize:"))
        return int(line.split()[1]) * 1024

    headroom = 64 * 2**20
    limit = vm_size() + headroom
    monkeypatch.delenv("NAPARI_HRDV2_MEMORY_LIMIT", raising=False)
    monkeypatch.setattr(resource, "getrlimit", lambda which: (limit, resource.RLIM_INFINITY))
    available = available_host_bytes()
    assert available is not None
    assert 0 <= available <= headroom  # the process may have grown a little between the two reads
    assert available >= min(headroom // 2, _mem_available())


def _mem_available() -> int:
    line = next(s for s in Path("/proc/meminfo").read_text().splitlines() if s.startswith("MemAvailable:"))
    return int(line.split()[1]) * 1024
