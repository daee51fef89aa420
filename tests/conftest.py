"""Shared fixtures: random-init DINOv2 models saved with save_pretrained (no network, no real weights)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _save_model(path: Path, *, registers: int = 0, hidden: int = 128, layers: int = 2, heads: int = 2) -> Path:
    import torch
    from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    torch.manual_seed(0)
    common = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, mlp_ratio=2,
                  patch_size=14, image_size=224)  # fmt: skip
    if registers:
        model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(num_register_tokens=registers, **common))
    else:
        model = Dinov2Model(Dinov2Config(**common))
    # Random init leaves the final layer norm at identity and layer scale at 1: perturb them so tests see them.
    with torch.no_grad():
        model.layernorm.weight.uniform_(0.5, 1.5)
        model.layernorm.bias.normal_(0, 0.1)
        model.embeddings.cls_token.normal_(0, 0.5)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> str:
    """Folder of a tiny random DINOv2 (128 dims, 2 heads of 64, 2 layers, patch 14)."""
    return str(_save_model(tmp_path_factory.mktemp("models") / "tiny-dinov2"))


@pytest.fixture(scope="session")
def tiny_backbone_registers(tmp_path_factory) -> str:
    """Like ``tiny_backbone`` but with 4 register tokens."""
    return str(_save_model(tmp_path_factory.mktemp("models") / "tiny-dinov2-reg", registers=4))


@pytest.fixture(scope="session")
def tiny_config(tiny_backbone):
    import napari_hrdv2 as hr

    return hr.FeatureConfig(
        backbone=tiny_backbone, device="cpu", shifts="neumann", shift_distances=(3,), tile_size=None
    )


def two_texture_image(size: int = 112, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Left half smooth and dark, right half noisy and bright: (image uint8, truth labels {1, 2})."""
    rng = np.random.default_rng(seed)
    image = np.zeros((size, size), dtype=np.float32)
    half = size // 2
    image[:, :half] = 60 + 5 * rng.standard_normal((size, half))
    stripes = (np.arange(size - half) // 3 % 2) * 80
    image[:, half:] = 150 + stripes[None, :] + 25 * rng.standard_normal((size, size - half))
    truth = np.ones((size, size), dtype=np.uint8)
    truth[:, half:] = 2
    return np.clip(image, 0, 255).astype(np.uint8), truth


@pytest.fixture
def two_textures():
    return two_texture_image()
