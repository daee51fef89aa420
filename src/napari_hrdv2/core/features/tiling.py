"""Splitting large images into overlapping tiles that blend without seams, cut where they cost least.

:func:`plan_tiles` is the one planner of every path (in-memory encoding, tile-by-tile streaming, the
*View*, the batch runners). Among the plans whose tiles fit the memory bound ``tile_size`` it picks the
one with the fewest estimated backbone FLOPs (:func:`forward_flops`: linear layers grow with the
tokens of a tile, attention with their square), keeping at least ``overlap`` pixels between
neighbours, all tiles of an axis the same size, that size a whole patch grid (no padding) and the
starts of inner tiles on the stride grid. Every transform of HR-Dv2 encodes every tile, so the
transforms multiply all plans alike and do not change the choice.

Each tile gets a separable weight window (linear ramps across the overlaps) normalised so that the
windows of all tiles sum to one at every pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: How many tile counts above the fewest that fit the bound are priced per axis.
_EXTRA_COUNTS = 12
#: The fixed cost of one tile, in tokens of linear-layer work: small tiles run below the FLOP rate of
#: large ones (smaller matrices, per-tile reconstruction and Python work). Fitted on a 2-core CPU, random
#: ViT-S/14 in float32: 9 forwards of 406-px tiles took 0.73x the time of 9 of 518 px where FLOPs alone
#: say 0.53x, and 4 of 560 px 0.55x (FLOPs 0.50x).
TILE_OVERHEAD_TOKENS = 1024


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


def grid_tokens(side: int, *, patch_size: int, stride: int) -> int:
    """Tokens along one side of ``side`` pixels (padded up to the patch grid, as the encoder pads it)."""
    if side <= patch_size:
        return 1
    return 1 + -(-(side - patch_size) // stride)


def forward_flops(tokens: int, *, embed_dim: int, depth: int, patch_size: int) -> float:
    """Estimated FLOPs of one ViT forward over ``tokens`` patch tokens (plus the class token).

    Per block: the linear layers (qkv, projection, 4x MLP) ``24 * n * d^2``, attention
    (``Q K^T`` and ``A V``) ``4 * n^2 * d``; plus the patch embedding ``6 * n * P^2 * d`` and the
    fixed cost of a tile, :data:`TILE_OVERHEAD_TOKENS` tokens of linear work.
    """
    n = tokens + 1
    d = float(embed_dim)
    linear = 24.0 * d * d
    return depth * (linear * (n + TILE_OVERHEAD_TOKENS) + 4.0 * n * n * d) + 6.0 * tokens * patch_size * patch_size * d


def _axis_starts(length: int, side: int, count: int, overlap: int, stride: int) -> list[int] | None:
    """Starts of ``count`` tiles of ``side`` covering ``length``, inner starts on the stride grid.

    None when some neighbours would overlap by less than ``overlap``.
    """
    if count == 1:
        return [0] if side >= length else None
    ideal = np.linspace(0, length - side, count)
    starts = [0, *(int(round(s / stride)) * stride for s in ideal[1:-1]), length - side]
    gaps = np.diff(starts)
    if (gaps <= 0).any() or (gaps > side - overlap).any():
        return None
    return starts


def _axis_options(
    length: int, bound: int | None, overlap: int, patch_size: int, stride: int
) -> list[tuple[int, int, list[int]]]:
    """The candidate cuts of one axis: per tile count, ``(count, side, starts)`` with the smallest side that fits."""
    options = [(1, length, [0])] if bound is None or length <= bound else []
    if bound is None:
        return options
    top = patch_size + max(0, (bound - patch_size) // stride) * stride  # the largest whole grid under the bound
    if top > overlap:
        fewest = max(2, math.ceil((length - overlap) / (top - overlap)))
        for count in range(fewest, fewest + _EXTRA_COUNTS + 1):
            need = (length + (count - 1) * overlap) / count
            side = patch_size + max(0, math.ceil((need - patch_size) / stride)) * stride
            starts = None
            while side <= top and side < length and starts is None:
                starts = _axis_starts(length, side, count, overlap, stride)
                side += 0 if starts is not None else stride
            if 2 * overlap >= side:
                break  # more tiles only get worse: the overlaps of a tile would meet
            if starts is not None:
                options.append((count, side, starts))
    if not options:  # no whole grid fits (a bound barely above the overlap): an even split of tiles of the bound
        count = max(2, math.ceil((length - overlap) / max(1, bound - overlap)))
        options.append((count, bound, [int(s) for s in np.round(np.linspace(0, length - bound, count))]))
    return options


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


def plan_cost(
    tiles: list[Tile], *, patch_size: int = 14, stride: int | None = None, embed_dim: int = 384, depth: int = 12
) -> float:
    """Estimated FLOPs of one forward per tile of ``tiles`` (the :func:`plan_tiles` cost model)."""
    step = int(stride or patch_size)
    grid = dict(patch_size=patch_size, stride=step)
    return sum(
        forward_flops(
            grid_tokens(t.height, **grid) * grid_tokens(t.width, **grid),
            embed_dim=embed_dim,
            depth=depth,
            patch_size=patch_size,
        )
        for t in tiles
    )


def plan_tiles(
    height: int,
    width: int,
    *,
    tile_size: int | None,
    overlap: int,
    patch_size: int = 14,
    stride: int | None = None,
    embed_dim: int = 384,
    depth: int = 12,
) -> list[Tile]:
    """The cheapest tiles covering an ``(height, width)`` image, row-major.

    Parameters
    ----------
    height, width : int
        Image size in pixels.
    tile_size : int or None
        Upper bound on a tile side in pixels (the memory bound); None = the whole image in one tile.
    overlap : int
        Least overlap of neighbouring tiles in pixels (blended with linear ramps).
    patch_size, stride : int
        The backbone's patch grid (``stride`` None = ``patch_size``): tiles of more than one per axis
        are whole grids (``patch_size + k * stride`` pixels), inner tiles start on multiples of ``stride``
        and the last one ends at the image border.
    embed_dim, depth : int
        Width and number of blocks of the backbone, for the cost model (:func:`forward_flops`).

    Returns
    -------
    list of Tile
        Among the plans with tiles of at most ``tile_size`` per side, evenly sized per axis and
        overlapping by at least ``overlap``, the one of least estimated cost (ties: fewer tiles,
        then fewer rows). An image that fits the bound (both sides) is one tile, exactly as
        untiled. The weights of all tiles sum to one at every pixel.
    """
    step = int(stride or patch_size)
    grid = dict(patch_size=patch_size, stride=step)
    if tile_size is None or max(height, width) <= tile_size:  # fits: never cut (no seams), as untiled
        return [Tile(0, 0, height, width, np.ones(height, np.float32), np.ones(width, np.float32))]
    rows = _axis_options(height, tile_size, overlap, patch_size, step)
    cols = _axis_options(width, tile_size, overlap, patch_size, step)

    def cost(row: tuple[int, int, list[int]], col: tuple[int, int, list[int]]) -> tuple[float, int, int]:
        tokens = grid_tokens(row[1], **grid) * grid_tokens(col[1], **grid)
        flops = forward_flops(tokens, embed_dim=embed_dim, depth=depth, patch_size=patch_size)
        return (row[0] * col[0] * flops, row[0] * col[0], row[0])

    best_row, best_col = min(((r, c) for r in rows for c in cols), key=lambda rc: cost(*rc))
    row_spans = [(s, s + best_row[1]) for s in best_row[2]]
    col_spans = [(s, s + best_col[1]) for s in best_col[2]]
    row_weights = _axis_weights(row_spans, height)
    col_weights = _axis_weights(col_spans, width)
    return [
        Tile(r0, c0, r1 - r0, c1 - c0, rw, cw)
        for (r0, r1), rw in zip(row_spans, row_weights)
        for (c0, c1), cw in zip(col_spans, col_weights)
    ]
