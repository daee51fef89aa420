"""Known answers of the memory estimate of one encoding (core.memory)."""

from __future__ import annotations

from napari_hrdv2.core.runtime.memory import encoding_bytes


def test_encoding_bytes_has_known_answers():
    """1000 tokens of 384 float16 channels = 768 000 bytes; attention adds 4 bytes per token and head; the host holds
    the float32 image (3 channels) and 4 more float32 planes of the image size."""
    common = dict(n_tokens=1000, embed_dim=384, num_heads=6, storage_itemsize=2)
    assert encoding_bytes(10, 20, **common, with_attention=False) == (768_000, 10 * 20 * 4 * 7)
    assert encoding_bytes(10, 20, **common, with_attention=True) == (768_000 + 24_000, 5600)
    assert encoding_bytes(10, 20, **common, with_attention=False, channels=1) == (768_000, 10 * 20 * 4 * 5)
