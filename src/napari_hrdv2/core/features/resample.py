"""Separable resampling of token grids to pixels, fused with the inverse transforms.

For one axis, the HR-Dv2 pipeline "resize the token grid to pixels, crop the
padding, unflip, unshift, weight by the tile's blending window" maps a token
axis of length ``n_tokens`` to a pixel axis of length ``n_pixels`` and is a
fixed sparse matrix with at most two non-zeros per pixel. :class:`AxisTaps`
stores it as two (index, weight) pairs (:meth:`AxisTaps.dense` gives the
matrix itself), so the whole per-transform reconstruction is two small matrix
products and nothing is ever resized at full size and then permuted.

Token ``i`` of a grid with stride ``s`` and patch size ``P`` is centred at
pixel ``i * s + (P - 1) / 2``. With ``s == P`` this is exactly
``torch.nn.functional.interpolate(..., align_corners=False)`` to the padded
size, followed by a crop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import RESIZE_OPTIONS, Resize


@dataclass(frozen=True)
class AxisTaps:
    """Pixel ``p`` of an axis = ``weight0[p] * token[index0[p]] + weight1[p] * token[index1[p]]``.

    Arrays have shape (n_pixels,). For nearest resizing ``weight1`` is zero.
    """

    index0: np.ndarray
    index1: np.ndarray
    weight0: np.ndarray
    weight1: np.ndarray

    def __len__(self) -> int:
        return len(self.index0)

    def take(self, positions: np.ndarray) -> AxisTaps:
        """The taps of the given pixel positions (used to permute or to sample)."""
        return AxisTaps(
            self.index0[positions], self.index1[positions], self.weight0[positions], self.weight1[positions]
        )

    def scaled(self, factor: np.ndarray) -> AxisTaps:
        """Taps with both weights multiplied by ``factor`` of shape (n_pixels,)."""
        return AxisTaps(self.index0, self.index1, self.weight0 * factor, self.weight1 * factor)

    def dense(self, n_tokens: int) -> np.ndarray:
        """The axis map as a dense (n_tokens, n_pixels) float32 matrix: ``pixels = tokens @ matrix``."""
        matrix = np.zeros((n_tokens, len(self)), dtype=np.float32)
        pixels = np.arange(len(self))
        np.add.at(matrix, (self.index0, pixels), self.weight0)
        np.add.at(matrix, (self.index1, pixels), self.weight1)
        return matrix

    def key(self) -> bytes:
        """Hashable identity, used to group transforms that share this axis map."""
        return b"".join(a.tobytes() for a in (self.index0, self.index1, self.weight0, self.weight1))


def token_axis_taps(
    n_pixels: int, n_tokens: int, *, stride: int, patch_size: int, resize: Resize = "bilinear"
) -> AxisTaps:
    """Taps from a token axis to the first ``n_pixels`` pixels of its (padded) image.

    Bilinear clamps at the first and last token centre like
    ``interpolate(align_corners=False)``; nearest picks ``floor(u + 0.5)`` like
    ``mode="nearest-exact"``.
    """
    coords = (np.arange(n_pixels, dtype=np.float64) - (patch_size - 1) / 2.0) / stride
    if resize == "nearest":
        index = np.clip(np.floor(coords + 0.5), 0, n_tokens - 1).astype(np.int64)
        ones = np.ones(n_pixels, dtype=np.float32)
        return AxisTaps(index, index, ones, np.zeros(n_pixels, dtype=np.float32))
    if resize != "bilinear":
        raise ValueError(f"resize={resize!r} is not one of {RESIZE_OPTIONS}")
    coords = np.clip(coords, 0.0, n_tokens - 1)
    index0 = np.floor(coords).astype(np.int64)
    index1 = np.minimum(index0 + 1, n_tokens - 1)
    frac = (coords - index0).astype(np.float32)
    return AxisTaps(index0, index1, (1.0 - frac).astype(np.float32), frac)
