"""Tests written AFTER the held-out mutation sample (seed 4242, commit 4cf8f11) was scored, for three of its
non-equivalent survivors (benchmarks/README.md, mutation section). A later sample must use another seed."""

from __future__ import annotations

import socket

import pytest

from napari_hrdv2.core.backbone.loading import hub_offline
from napari_hrdv2.core.errors import InputError
from napari_hrdv2.core.files.paths import check_input_file
from napari_hrdv2.core.segmentation.heads import segmenter_class


def test_hub_is_online_when_hf_hub_offline_is_unset_or_false(monkeypatch):
    """Mutation killed: ``hub_offline`` 5 (``.get("HF_HUB_OFFLINE")`` without default raises when unset)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert hub_offline() is False
    monkeypatch.setenv("HF_HUB_OFFLINE", " TRUE ")
    assert hub_offline() is True
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert hub_offline() is False


def test_unknown_head_lists_the_heads():
    """Mutation killed: ``segmenter_class`` 4 (the heads joined with ``XX, XX``)."""
    with pytest.raises(InputError) as caught:
        segmenter_class("forest")
    assert str(caught.value) == "head must be one of linear, mlp, got 'forest'."


def test_a_socket_is_not_an_input_file(tmp_path):
    """Mutation killed: ``check_input_file`` 36 (a socket called ``A SOCKET``)."""
    path = tmp_path / "s"
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(path))
        with pytest.raises(InputError) as caught:
            check_input_file(path, "image")
    finally:
        server.close()
    assert str(caught.value) == (
        f"image '{path}' is a socket, not a regular file; save the data to a file and give that."
    )
