"""Splitting large images into overlapping tiles that blend without seams.

Each tile gets a separable weight window (linear ramps across the overlaps)
normalised so that the windows of all tiles sum to one at every pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tile:
    """A tile at ``(top, left)`` of size ``(height, width)`` and its blending weights."""

    top: int
    left: int
    height: int
    width: int
    row_weights: np.ndarray  # (height,) float32
    col_weights: np.ndarray  # (width,) float32

    @property
    def rows(self) -> slice:
        return slice(self.top, self.top + self.height)

    @property
    def cols(self) -> slice:
        return slice(self.left, self.left + self.width)


def _axis_spans(length: int, tile: int | None, overlap: int) -> list[tuple[int, int]]:
    if tile is None or length <= tile:
        return [(0, length)]
    count = math.ceil((length - overlap) / (tile - overlap))
    starts = np.round(np.linspace(0, length - tile, count)).astype(int)
    return [(int(s), int(s) + tile) for s in starts]


def _axis_weights(spans: list[tuple[int, int]], length: int) -> list[np.ndarray]:
    """Linear ramps over each overlap, normalised to a partition of unity."""
    raw = []
    for i, (start, stop) in enumerate(spans):
        position = np.arange(start, stop, dtype=np.float64) + 0.5
        weight = np.ones(stop - start)
        if i > 0:
            left_overlap = spans[i - 1][1] - start
            weight = np.minimum(weight, (position - start) / max(left_overlap, 1))
        if i < len(spans) - 1:
            right_overlap = stop - spans[i + 1][0]
            weight = np.minimum(weight, (stop - position) / max(right_overlap, 1))
        raw.append(weight)
    total = np.zeros(length)
    for (start, stop), weight in zip(spans, raw):
        total[start:stop] += weight
    return [(weight / total[start:stop]).astype(np.float32) for (start, stop), weight in zip(spans, raw)]


def plan_tiles(height: int, width: int, *, tile_size: int | None, overlap: int) -> list[Tile]:
    """Tiles covering an ``(height, width)`` image, row-major."""
    row_spans = _axis_spans(height, tile_size, overlap)
    col_spans = _axis_spans(width, tile_size, overlap)
    row_weights = _axis_weights(row_spans, height)
    col_weights = _axis_weights(col_spans, width)
    return [
        Tile(r0, c0, r1 - r0, c1 - c0, rw, cw)
        for (r0, r1), rw in zip(row_spans, row_weights)
        for (c0, c1), cw in zip(col_spans, col_weights)
    ]
