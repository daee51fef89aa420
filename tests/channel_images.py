"""Multichannel test images with known answers (``channel_mode="separate"`` tests)."""

from __future__ import annotations

import numpy as np

from conftest import two_texture_image


def five_channel_image(size: int = 112, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 5) uint16 whose two classes differ only in channel 4; channels 0-3 are the same noise everywhere."""
    rng = np.random.default_rng(seed)
    texture, truth = two_texture_image(size, seed)
    image = (rng.random((size, size, 5)) * 3000).astype(np.uint16)
    image[..., 4] = texture.astype(np.uint16) * 10
    return image, truth


def strokes(truth: np.ndarray) -> np.ndarray:
    size = truth.shape[1]
    labels = np.zeros(truth.shape, dtype=np.uint8)
    labels[10:-10, size // 4 : size // 4 + 3] = 1
    labels[10:-10, 3 * size // 4 : 3 * size // 4 + 3] = 2
    return labels


def mirrored(image: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Channel 4 (and the truth) mirrored left-right, channels 0-3 shuffled: position and noise tell nothing."""
    other = image.copy()
    other[..., 4] = image[:, ::-1, 4]
    shuffled = np.random.default_rng(5).permutation(image[..., :4].reshape(-1, 4))
    other[..., :4] = shuffled.reshape(image.shape[:2] + (4,))
    return other, truth[:, ::-1]
