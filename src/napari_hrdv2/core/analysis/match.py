"""Patch matching between two images: optimal one-to-one assignment on cosine similarity of HR features.

Each image is cut into a grid of patches (the backbone's patch size); a patch is described by
the HR feature at its centre pixel (``Encoding.sample``, exact). The smaller image's patches
are assigned one-to-one to the larger image's by :func:`scipy.optimize.linear_sum_assignment`
maximising the total cosine similarity. With ``refine=True`` each match is then moved, within
half a patch around the larger image's patch centre, to the pixel whose HR feature is most
similar to the smaller image's patch feature (sub-patch positions from the HR features).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..features.sources import is_encoding, sample_at, source_shape

#: Column names of a match table (and of the CLI's CSV header).
MATCH_COLUMNS = ("row_a", "col_a", "row_b", "col_b", "score")
#: Default patch side when an encoding does not say (DINOv2: 14).
DEFAULT_PATCH_SIZE = 14
#: Most patches per image; beyond it the grid step grows (the assignment is cubic in the patch count).
MAX_PATCHES = 4096
#: Matches refined per block (bounds the sampled window features in memory).
_REFINE_BLOCK = 32


def patch_size_of(encoding: Any) -> int:
    """The backbone patch size of an encoding: its ``patch_size`` attribute, else the backbone preset's, else
    the ``patch_size`` of a ``save_pretrained`` folder's config.json, else 14."""
    size = getattr(encoding, "patch_size", None)
    if size:
        return int(size)
    config = getattr(encoding, "config", None)
    if config is None:
        return DEFAULT_PATCH_SIZE
    try:
        from ..backbone.registry import find_spec

        spec = find_spec(str(config.backbone))
        if spec is not None:
            return int(spec.patch_size)
    except ImportError:  # pragma: no cover
        pass
    settings = Path(str(config.backbone)).expanduser() / "config.json"
    try:
        return int(json.loads(settings.read_text()).get("patch_size", DEFAULT_PATCH_SIZE))
    except (OSError, ValueError, TypeError):
        return DEFAULT_PATCH_SIZE


def patch_centres(height: int, width: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column pixel coordinates (N,) of the centres of a ``step``-pixel patch grid, row-major."""
    rows = np.arange(max(1, height // step)) * step + (step - 1) // 2
    cols = np.arange(max(1, width // step)) * step + (step - 1) // 2
    grid_rows, grid_cols = np.meshgrid(rows[rows < height], cols[cols < width], indexing="ij")
    return grid_rows.ravel(), grid_cols.ravel()


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def match_patches(
    enc_a: Any,
    enc_b: Any,
    top_k: int | None = None,
    *,
    refine: bool = False,
    patch_size: int | None = None,
    max_patches: int = MAX_PATCHES,
) -> np.ndarray:
    """Optimal one-to-one matches of the patches of two images.

    Parameters
    ----------
    enc_a, enc_b : Encoding or (C, H, W) arrays of the same feature width
    top_k : int or None
        Keep the ``top_k`` best matches (all when None).
    refine : bool
        Move each match's position in the larger image (``b`` if the images are equal in size) to
        the most similar pixel within half a patch (HR refinement).
    patch_size : int or None
        Patch grid side in pixels (default: the backbone's patch size).
    max_patches : int
        If an image has more patches, the grid step is enlarged so it has at most this many.

    Returns
    -------
    (M, 5) float64 array, rows ``(row_a, col_a, row_b, col_b, score)`` in pixel coordinates of
    each image, sorted by decreasing cosine similarity ``score``; M = the smaller patch count
    (or ``top_k``).
    """
    from scipy.optimize import linear_sum_assignment

    for name, enc in (("enc_a", enc_a), ("enc_b", enc_b)):
        if not is_encoding(enc) and np.asarray(enc).ndim != 3:
            raise InputError(f"{name} must be an Encoding or (C, H, W) features, got shape {np.asarray(enc).shape}.")
    width_a = enc_a.n_features if is_encoding(enc_a) else np.asarray(enc_a).shape[0]
    width_b = enc_b.n_features if is_encoding(enc_b) else np.asarray(enc_b).shape[0]
    if width_a != width_b:
        raise InputError(f"The two images have {width_a}- and {width_b}-channel features: use one backbone.")
    if top_k is not None and top_k < 1:
        raise InputError(f"top_k must be a positive number of matches, got {top_k}.")
    step = int(patch_size or patch_size_of(enc_a))
    shapes = (source_shape(enc_a), source_shape(enc_b))
    while max((h // step) * (w // step) for h, w in shapes) > max_patches:
        step += max(1, step // 2)
    rows_a, cols_a = patch_centres(*shapes[0], step)
    rows_b, cols_b = patch_centres(*shapes[1], step)
    vectors_a = sample_at(enc_a, rows_a, cols_a)
    vectors_b = sample_at(enc_b, rows_b, cols_b)
    similarity = _unit(vectors_a.astype(np.float64)) @ _unit(vectors_b.astype(np.float64)).T
    a_is_query = rows_a.size <= rows_b.size  # the smaller image's patches are assigned to the larger's
    if a_is_query:
        query, target = linear_sum_assignment(similarity, maximize=True)
        index_a, index_b = query, target
    else:
        query, target = linear_sum_assignment(similarity.T, maximize=True)
        index_a, index_b = target, query
    matches = np.stack(
        [rows_a[index_a], cols_a[index_a], rows_b[index_b], cols_b[index_b], similarity[index_a, index_b]], axis=1
    ).astype(np.float64)
    matches = matches[np.argsort(-matches[:, 4], kind="stable")]
    if top_k is not None:
        matches = matches[:top_k]
    if refine and len(matches):
        if a_is_query:
            matches = _refine(matches, vectors_a[_lookup(rows_a, cols_a, matches[:, 0], matches[:, 1])], enc_b, 2, step)
        else:
            matches = _refine(matches, vectors_b[_lookup(rows_b, cols_b, matches[:, 2], matches[:, 3])], enc_a, 0, step)
        matches = matches[np.argsort(-matches[:, 4], kind="stable")]
    return matches


def _lookup(rows: np.ndarray, cols: np.ndarray, want_rows: np.ndarray, want_cols: np.ndarray) -> np.ndarray:
    """Indices into (rows, cols) of the given positions (all present)."""
    position = {(int(r), int(c)): i for i, (r, c) in enumerate(zip(rows, cols))}
    return np.array([position[(int(r), int(c))] for r, c in zip(want_rows, want_cols)], dtype=np.int64)


def _refine(matches: np.ndarray, queries: np.ndarray, target: Any, column: int, step: int) -> np.ndarray:
    """Move ``matches[:, column:column+2]`` to the target pixel within half a patch most similar to ``queries``."""
    height, width = source_shape(target)
    radius = step
    offsets = np.arange(-radius, radius + 1)
    d_rows, d_cols = (a.ravel() for a in np.meshgrid(offsets, offsets, indexing="ij"))
    refined = matches.copy()
    unit_queries = _unit(queries.astype(np.float64))
    for start in range(0, len(matches), _REFINE_BLOCK):
        block = slice(start, min(start + _REFINE_BLOCK, len(matches)))
        rows = matches[block, column].astype(np.int64)[:, None] + d_rows[None, :]
        cols = matches[block, column + 1].astype(np.int64)[:, None] + d_cols[None, :]
        rows, cols = np.clip(rows, 0, height - 1), np.clip(cols, 0, width - 1)
        window = _unit(sample_at(target, rows.ravel(), cols.ravel()).astype(np.float64))
        scores = np.einsum("mwc,mc->mw", window.reshape(rows.shape[0], rows.shape[1], -1), unit_queries[block])
        best = scores.argmax(axis=1)
        picked = np.arange(rows.shape[0])
        refined[block, column] = rows[picked, best]
        refined[block, column + 1] = cols[picked, best]
        refined[block, 4] = scores[picked, best]
    return refined


def matches_to_csv_text(matches: np.ndarray) -> str:
    """CSV text with the header ``row_a,col_a,row_b,col_b,score`` (integer pixels, score to 6 decimals)."""
    lines = [",".join(MATCH_COLUMNS)]
    for row_a, col_a, row_b, col_b, score in np.asarray(matches).reshape(-1, 5):
        lines.append(f"{int(row_a)},{int(col_a)},{int(row_b)},{int(col_b)},{score:.6f}")
    return "\n".join(lines) + "\n"


def read_matches_csv(path: str | Path) -> np.ndarray:
    """Read a match table written by :func:`matches_to_csv_text`: (M, 5) float64."""
    path = Path(path)
    text = path.read_text().splitlines()
    if not text or text[0].strip() != ",".join(MATCH_COLUMNS):
        raise InputError(f"'{path.name}' is not a match table (header {','.join(MATCH_COLUMNS)}).")
    rows = [[float(v) for v in line.split(",")] for line in text[1:] if line.strip()]
    return np.array(rows, dtype=np.float64).reshape(-1, 5)


def side_by_side(image_a: np.ndarray, image_b: np.ndarray, *, gap: int = 8) -> tuple[np.ndarray, int]:
    """Both images as one uint8 RGB canvas, A left and B right; returns (canvas, column offset of B)."""
    from ..features.preprocess import to_rgb01

    rgb_a = np.round(to_rgb01(image_a, normalize="percentile") * 255).astype(np.uint8)
    rgb_b = np.round(to_rgb01(image_b, normalize="percentile") * 255).astype(np.uint8)
    height = max(rgb_a.shape[0], rgb_b.shape[0])
    offset = rgb_a.shape[1] + gap
    canvas = np.zeros((height, offset + rgb_b.shape[1], 3), dtype=np.uint8)
    canvas[: rgb_a.shape[0], : rgb_a.shape[1]] = rgb_a
    canvas[: rgb_b.shape[0], offset:] = rgb_b
    return canvas, offset


def draw_matches(image_a: np.ndarray, image_b: np.ndarray, matches: np.ndarray, *, max_lines: int = 100) -> np.ndarray:
    """(H, W_a + gap + W_b, 3) uint8: the two images side by side with the best ``max_lines`` matches drawn.

    Lines are coloured from red (lowest score drawn) to green (highest).
    """
    from skimage.draw import disk, line

    canvas, offset = side_by_side(image_a, image_b)
    shown = np.asarray(matches).reshape(-1, 5)[:max_lines]
    if not len(shown):
        return canvas
    scores = shown[:, 4]
    span = max(float(scores.max() - scores.min()), 1e-12)
    for row_a, col_a, row_b, col_b, score in shown:
        t = (score - scores.min()) / span
        colour = np.array([255 * (1 - t), 255 * t, 60], dtype=np.uint8)
        rr, cc = line(int(row_a), int(col_a), int(row_b), int(col_b) + offset)
        canvas[rr, cc] = colour
        for centre in ((row_a, col_a), (row_b, col_b + offset)):
            rr, cc = disk(centre, 2, shape=canvas.shape[:2])
            canvas[rr, cc] = colour
    return canvas
