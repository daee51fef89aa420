"""The HR-Dv2 feature engine: ``Featurizer.encode(image) -> Encoding``.

An :class:`Encoding` keeps only the low-resolution per-transform token maps
``(K, C, h, w)`` of every tile. Resizing, unflipping, unshifting, averaging
and tile blending are linear, so any linear map of the high-resolution
features (a classifier, a PCA projection) is applied to the token maps first
and only its ``n_out`` output channels are brought to full resolution
(:meth:`Encoding.project`); training pixels are read exactly from a few taps
(:meth:`Encoding.sample`). Full ``(C, H, W)`` maps are produced only on request.

Definition (for one tile; tiles are blended with :mod:`.tiling` windows)::

    F = 1/K * sum_k  T_k^-1( resize( features( pad( T_k(x) ) ) )[:H, :W] )
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..backbone.identity import backbone_family_of, backbone_fingerprint
from ..backbone.loading import Backbone, load_backbone
from ..backbone.onnx_forward import onnx_forward, require_runtime
from ..backbone.vit import forward_tokens, token_grid
from ..config import FeatureConfig
from ..errors import InputError
from ..progress import Progress, run_steps, within
from ..runtime.devices import choose_dtype, empty_cache, is_out_of_memory, resolve_device, resolve_storage_dtype
from ..runtime.memory import check_encoding_memory, encoding_bytes
from ..runtime.threads import interactive_threads, restore_usual_threads
from ..transforms import Transform
from .channels import ChannelEncoding
from .preprocess import scale_channels, scale_intensities, validate_image
from .resample import AxisTaps, token_axis_taps
from .sources import cosine_similarity_to_pixel
from .tiling import Tile, plan_tiles

#: Budget (in float32 elements, 256 MB) of the temporary buffers of one channel block during reconstruction.
#: Few large blocks matter on a busy CPU: every torch op is a parallel region whose threads wait for each
#: other, so 13 blocks of 31 channels made features() of a 518x518 tile ~4x slower than one block there.
_BLOCK_ELEMENTS = 1 << 26
#: Size (in float32 elements) of the feature blocks read by :meth:`Encoding.feature_norm`.
_NORM_BLOCK_ELEMENTS = 1 << 25


def padded_size(length: int, *, patch_size: int, stride: int) -> int:
    """Smallest side >= ``length`` that a patch grid with ``stride`` covers exactly."""
    if length <= patch_size:
        return patch_size
    return patch_size + -(-(length - patch_size) // stride) * stride


def pad_to_grid(pixels: torch.Tensor, *, patch_size: int, stride: int) -> torch.Tensor:
    """Pad (..., H, W) at the bottom/right by reflection (replication if too small)."""
    height, width = pixels.shape[-2:]
    pad_h = padded_size(height, patch_size=patch_size, stride=stride) - height
    pad_w = padded_size(width, patch_size=patch_size, stride=stride) - width
    if not (pad_h or pad_w):
        return pixels
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    batched = pixels if pixels.ndim == 4 else pixels.unsqueeze(0)
    padded = F.pad(batched, (0, pad_w, 0, pad_h), mode=mode)
    return padded if pixels.ndim == 4 else padded.squeeze(0)


@dataclass
class TileMaps:
    """Low-resolution maps of one tile and the fused resize/inverse-transform taps."""

    tile: Tile
    maps: torch.Tensor  # (K, C, h, w), storage dtype
    attention: torch.Tensor | None  # (K, heads, h, w) float32
    row_taps: list[AxisTaps]  # per transform, length tile.height, weights include 1/K and blending
    col_taps: list[AxisTaps]  # per transform, length tile.width, weights include blending
    _plan: ReconstructionPlan | None = field(default=None, repr=False)

    def token_rows(self, tokens: np.ndarray | None = None) -> torch.Tensor:
        """The maps as a (K * h * w, C) float32 matrix, one token per row (for sparse sampling).

        ``tokens`` (M,) ascending int: only those rows (flat indices ``k * h * w + row * w + col``), (M, C);
        gathered per map before the conversion to float32, so a few labelled pixels do not convert the whole tile.
        """
        n_transforms, channels, grid_h, grid_w = self.maps.shape
        if tokens is None:
            return self.maps.permute(0, 2, 3, 1).reshape(-1, channels).float()
        per_map = grid_h * grid_w
        flat = self.maps.view(n_transforms, channels, per_map)
        bounds = np.searchsorted(tokens, np.arange(n_transforms + 1) * per_map)  # tokens ascending: one run per map
        parts = [
            flat[k].index_select(1, torch.as_tensor(tokens[start:stop] - k * per_map, device=self.maps.device)).T
            for k, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:]))
            if stop > start
        ]
        if not parts:
            return torch.empty((0, channels), dtype=torch.float32, device=self.maps.device)
        return torch.cat(parts).float()

    def reconstruction_plan(self) -> ReconstructionPlan:
        """Column operators and row taps of the reconstruction, built once per tile (:class:`ReconstructionPlan`).

        Transforms are grouped by identical row taps. Both phases are sparse products
        that read only the taps: a group's column phase has ``2 * n_members`` non-zeros per
        output column, the row phase ``2 * n_groups`` per output row, where the dense
        operators of the same maps had ``n_members * w`` and ``n_groups * h`` (``w / 2`` and
        ``h / 2`` times more operations: 18x on a 37-token grid).
        """
        if self._plan is None:
            # Sparse CSR kernels exist on the CPU and CUDA; MPS multiplies on the CPU (:func:`_sparse_times_dense`).
            device = self.maps.device if self.maps.device.type != "mps" else torch.device("cpu")
            grid_h, grid_w = self.maps.shape[2:]
            by_key: dict[bytes, tuple[AxisTaps, list[int]]] = {}
            for k, rows in enumerate(self.row_taps):
                by_key.setdefault(rows.key(), (rows, []))[1].append(k)
            n_groups = len(by_key)
            groups = []
            for _, members in by_key.values():
                columns = np.concatenate([self.col_taps[k].dense(grid_w) for k in members])  # (n * w, width)
                with warnings.catch_warnings():  # torch flags sparse CSR as beta; it is exact and tested here
                    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
                    matrix = torch.from_numpy(np.ascontiguousarray(columns.T)).to_sparse_csr()
                groups.append((members, matrix.to(device)))
            # Token row t of group g is intermediate row t * n_groups + g: one output row's taps lie close together.
            row_index = np.concatenate(
                [
                    np.stack([rows.index0, rows.index1], axis=1) * n_groups + g
                    for g, (rows, _) in enumerate(by_key.values())
                ],
                axis=1,
            )
            row_weight = np.concatenate(
                [np.stack([rows.weight0, rows.weight1], axis=1) for rows, _ in by_key.values()], axis=1
            ).astype(np.float32)
            used = row_weight.any(axis=0)  # nearest resizing: the second tap of every group has weight 0
            used[0] = True
            row_index, row_weight = row_index[:, used], row_weight[:, used]
            order = np.argsort(row_index, axis=1, kind="stable")  # ascending columns in every sparse row
            self._plan = ReconstructionPlan(
                groups,
                torch.from_numpy(np.take_along_axis(row_index, order, axis=1).astype(np.int32)).to(device),
                torch.from_numpy(np.take_along_axis(row_weight, order, axis=1)).to(device),
            )
        return self._plan


@dataclass(frozen=True)
class ReconstructionPlan:
    """How one tile's low-resolution maps become full-resolution maps (see :meth:`TileMaps.reconstruction_plan`).

    Attributes
    ----------
    groups : list of (member transforms, column matrix)
        Transforms with identical row taps; the column matrix, sparse CSR ``(tile.width, n_members * w)``,
        holds the members' column taps side by side, so the group's column phase in transposed form is
        ``matrix @ maps``, where ``maps`` ``(n_members * w, C * h)`` holds each member's token columns as
        rows: ``(tile.width, C * h)``.
    row_index : (tile.height, n_taps) int32 tensor
        Output row ``p`` sums the rows ``row_index[p]`` (ascending) of the column-phase result of one
        channel laid out as ``h * n_groups`` rows of ``tile.width`` pixels (row ``t * n_groups + g``
        holds token row ``t`` of group ``g``), ...
    row_weight : (tile.height, n_taps) float32 tensor
        ... weighted by ``row_weight[p]`` (the resize weights, including ``1 / K`` and the tile blending).
    """

    groups: list[tuple[list[int], torch.Tensor]]
    row_index: torch.Tensor
    row_weight: torch.Tensor

    def row_phase(self, n_channels: int, rows_per_channel: int) -> torch.Tensor:
        """The row phase of ``n_channels`` channels as a sparse CSR matrix.

        Returns
        -------
        (n_channels * tile.height, n_channels * rows_per_channel) sparse CSR float32 tensor: block
        diagonal, one copy of the row taps per channel; its product with the column-phase result
        viewed as ``(n_channels * rows_per_channel, tile.width)`` is the tile's ``(C, H, W)`` output.
        """
        height, n_taps = self.row_index.shape
        device = self.row_index.device
        first_rows = torch.arange(n_channels, dtype=torch.int32, device=device)[:, None, None] * rows_per_channel
        columns = (first_rows + self.row_index).reshape(-1)
        values = self.row_weight.expand(n_channels, -1, -1).reshape(-1)
        starts = torch.arange(0, columns.numel() + 1, n_taps, dtype=torch.int32, device=device)
        with warnings.catch_warnings():  # torch flags sparse CSR as beta; it is exact and tested here
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            return torch.sparse_csr_tensor(
                starts,
                columns,
                values,
                size=(n_channels * height, n_channels * rows_per_channel),
                check_invariants=False,
            )


def _empty_float32(shape: tuple[int, ...], device: torch.device, *, zero: bool = False) -> torch.Tensor:
    """A float32 buffer; on the CPU allocated by numpy, which asks the kernel for transparent huge pages.

    A fresh 400 MB buffer from torch is faulted in 4 KiB page by page on first write: on a 2-core machine
    that took 3x as long as numpy's allocation (``madvise(MADV_HUGEPAGE)``, 2 MiB pages) plus the same write.
    """
    if device.type == "cpu":
        return torch.from_numpy((np.zeros if zero else np.empty)(shape, dtype=np.float32))
    return (torch.zeros if zero else torch.empty)(shape, dtype=torch.float32, device=device)


def _sparse_times_dense(matrix: torch.Tensor, dense: torch.Tensor, out: torch.Tensor) -> None:
    """``out = matrix @ dense`` (sparse CSR times dense), written into the contiguous 2D ``out``.

    Where the device has no kernel for it (MPS; any build whose sparse CSR ``addmm`` raises), the
    product is taken on the CPU and copied back: slower, never wrong.
    """
    if dense.device.type != "mps":
        try:
            torch.addmm(out, matrix, dense, beta=0, out=out)
            return
        except (RuntimeError, NotImplementedError):
            if dense.device.type == "cpu":
                raise
    out.copy_(torch.sparse.mm(matrix.cpu(), dense.cpu()).to(out.device))


def fused_taps(
    tile: Tile, transforms: Sequence[Transform], grid: tuple[int, int], *, patch_size: int, stride: int, resize: str
) -> tuple[list[AxisTaps], list[AxisTaps]]:
    """Per transform, the row and column taps that read a tile's token map back to its pixels, undone and weighted.

    Each transform's taps are the tile's resize taps (two tokens per pixel and axis, :mod:`.resample`) read
    through the transform's inverse (:meth:`~..transforms.Transform.inverse_source_index`), with the tile's
    blending weights and ``1 / K`` folded into the row weights: summing ``rows[k] @ map_k @ cols[k].T`` over
    the ``K`` transforms gives the tile's HR-Dv2 average exactly.

    Returns
    -------
    rows, cols : lists of K :class:`AxisTaps`
        Over the tile's ``height`` rows and ``width`` columns.
    """
    base_rows = token_axis_taps(tile.height, grid[0], stride=stride, patch_size=patch_size, resize=resize)
    base_cols = token_axis_taps(tile.width, grid[1], stride=stride, patch_size=patch_size, resize=resize)
    row_weights = tile.row_weights / len(transforms)
    rows, cols = [], []
    for transform in transforms:
        rows.append(base_rows.take(transform.inverse_source_index(tile.height, 0)).scaled(row_weights))
        cols.append(base_cols.take(transform.inverse_source_index(tile.width, 1)).scaled(tile.col_weights))
    return rows, cols


#: ``lowres(tile_maps, k, channels)``: (n_channels, h, w) maps of transform ``k``, any float dtype.
LowRes = Callable[[TileMaps, int, slice], torch.Tensor]


def _stacked_taps(taps: list[AxisTaps], positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Token indices and weights of every transform at ``positions``: two (K, 2, N) arrays."""
    index = np.stack([np.stack([t.index0[positions], t.index1[positions]]) for t in taps])
    weight = np.stack([np.stack([t.weight0[positions], t.weight1[positions]]) for t in taps])
    return index, weight


def _sampling_matrix(
    tile_maps: TileMaps, rows: np.ndarray, cols: np.ndarray, *, compact: bool = False
) -> torch.Tensor | tuple[torch.Tensor, np.ndarray]:
    """Sparse CSR (N, K * h * w) matrix; its product with :meth:`TileMaps.token_rows` gives HR features at pixels.

    ``compact=True`` returns ``(matrix, used)`` instead: the matrix has one column per token the pixels use,
    ``used`` (M,) ascending flat token indices, and ``matrix @ token_rows(used)`` gives the same features.
    """
    n_transforms, _, grid_h, grid_w = tile_maps.maps.shape
    row_index, row_weight = _stacked_taps(tile_maps.row_taps, rows)
    col_index, col_weight = _stacked_taps(tile_maps.col_taps, cols)
    if not (row_weight[:, 1].any() or col_weight[:, 1].any()):  # nearest: one tap per axis
        row_index, row_weight, col_index, col_weight = (
            a[:, :1] for a in (row_index, row_weight, col_index, col_weight)
        )
    offsets = (np.arange(n_transforms) * grid_h)[:, None, None, None]
    tokens = ((offsets + row_index[:, :, None, :]) * grid_w + col_index[:, None, :, :]).reshape(-1, rows.size).T
    weights = (row_weight[:, :, None, :] * col_weight[:, None, :, :]).reshape(-1, rows.size).T
    per_pixel = tokens.shape[1]
    n_columns = n_transforms * grid_h * grid_w
    if compact:  # renumber the used tokens 0..M-1 in ascending order (a mask, no sort)
        is_used = np.zeros(n_columns, dtype=bool)
        is_used[tokens] = True
        used = np.flatnonzero(is_used)
        tokens = (np.cumsum(is_used) - 1)[tokens]
        n_columns = used.size
    crow = torch.arange(0, rows.size * per_pixel + 1, per_pixel, dtype=torch.int64)
    with warnings.catch_warnings():  # torch flags sparse CSR as beta; it is exact and tested here
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        matrix = torch.sparse_csr_tensor(
            crow,
            torch.from_numpy(np.ascontiguousarray(tokens)),
            torch.from_numpy(np.ascontiguousarray(weights, dtype=np.float32)),
            size=(rows.size, n_columns),
            check_invariants=False,
        )
    matrix = matrix if tile_maps.maps.device.type == "mps" else matrix.to(tile_maps.maps.device)
    return (matrix, used) if compact else matrix


class Encoding:
    """HR-Dv2 features of one image, stored as low-resolution per-transform maps.

    Use :meth:`features` for dense ``(C, H, W)`` maps, :meth:`project` for a
    linear map of them without materialising them, :meth:`sample` for exact
    feature vectors at given pixels, and :meth:`attention` for CLS attention.
    """

    def __init__(
        self,
        *,
        config: FeatureConfig,
        image_shape: tuple[int, int],
        tiles: list[TileMaps],
        transforms: Sequence[Transform],
        image: np.ndarray | None = None,
    ):
        self.config = config
        self.image_shape = image_shape
        self.tiles = tiles
        self.transforms = tuple(transforms)
        #: The (validated, unscaled) input image, kept by reference for hybrid features.
        self.image = image
        #: Fingerprint of the backbone weights (:mod:`.backbone_identity`); None if unknown.
        self.backbone_fingerprint: np.ndarray | None = None
        #: Family of the backbone ("dinov2", "dinov2_reg", "dinov3"; :func:`.backbone_identity.backbone_family_of`).
        self.backbone_family: str | None = None
        self._norm: np.ndarray | None = None

    # ------------------------------------------------------------ properties
    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the encoded image."""
        return self.image_shape

    @property
    def lowres_maps(self) -> list[torch.Tensor]:
        """Per tile, the (K, C, h, w) token maps of every transformed copy (what the encoding stores)."""
        return [tile_maps.maps for tile_maps in self.tiles]

    @property
    def n_features(self) -> int:
        return int(self.tiles[0].maps.shape[1])

    @property
    def n_heads(self) -> int:
        attention = self.tiles[0].attention
        return 0 if attention is None else int(attention.shape[1])

    @property
    def n_transforms(self) -> int:
        return len(self.transforms)

    @property
    def device(self) -> torch.device:
        return self.tiles[0].maps.device

    @property
    def nbytes(self) -> int:
        """Memory held by the low-resolution maps."""
        total = 0
        for tile in self.tiles:
            total += tile.maps.numel() * tile.maps.element_size()
            if tile.attention is not None:
                total += tile.attention.numel() * tile.attention.element_size()
        return total

    def __repr__(self) -> str:
        h, w = self.image_shape
        return (
            f"Encoding({h}x{w}, {self.n_features} features, {self.n_transforms} transforms, "
            f"{len(self.tiles)} tile(s), {self.nbytes / 2**20:.0f} MiB on {self.device})"
        )

    # ------------------------------------------------------------ reconstruction
    def _reconstruct(self, lowres: LowRes, n_out: int) -> torch.Tensor:
        """Full-resolution (n_out, H, W) float32 from per-tile/per-transform low-res maps."""
        height, width = self.image_shape
        # A single tile covering the image writes every output element: no need to zero-fill first.
        single = len(self.tiles) == 1 and (self.tiles[0].tile.height, self.tiles[0].tile.width) == (height, width)
        out = _empty_float32((n_out, height, width), self.device, zero=not single)
        scratch: torch.Tensor | None = None  # the intermediate buffers, reused by every channel block and tile
        for tile_maps in self.tiles:
            tile = tile_maps.tile
            plan = tile_maps.reconstruction_plan()
            grid_h, grid_w = tile_maps.maps.shape[2:]
            n_groups, n_taps = len(plan.groups), plan.row_index.shape[1]
            whole = (tile.height, tile.width) == (height, width)
            # Per channel: the column-phase result, the row phase's sparse matrix (int32 column and float32 value
            # per tap), and one buffer shared by a group's transposed column phase and, unless it is written in
            # place, the row-phase result.
            rows_per_channel = grid_h * n_groups
            shared = max(grid_h * tile.width, 0 if whole else tile.height * tile.width)
            per_channel = rows_per_channel * tile.width + 2 * tile.height * n_taps + shared
            n_blocks = -(-n_out // max(1, _BLOCK_ELEMENTS // per_channel))
            chunk = -(-n_out // n_blocks)  # equal blocks
            columns_size = chunk * rows_per_channel * tile.width
            needed = columns_size + chunk * shared
            if scratch is None or scratch.numel() < needed:
                scratch = _empty_float32((needed,), self.device)
            for start in range(0, n_out, chunk):
                channels = slice(start, min(start + chunk, n_out))
                n_block = channels.stop - channels.start
                # (channel, token row, group, pixel): the rows one output row reads are neighbours here.
                columns_done = scratch[: n_block * rows_per_channel * tile.width].view(
                    n_block, grid_h, n_groups, tile.width
                )
                transposed = scratch[columns_size : columns_size + tile.width * n_block * grid_h]
                transposed = transposed.view(tile.width, n_block * grid_h)
                for g, (members, column_matrix) in enumerate(plan.groups):
                    parts = torch.stack([lowres(tile_maps, k, channels) for k in members])  # (n, n_block, h, w)
                    token_columns = torch.empty((len(members) * grid_w, n_block * grid_h), device=self.device)
                    # One copy transposes and converts to float32 (the maps are usually stored as float16).
                    token_columns.view(len(members), grid_w, n_block, grid_h).copy_(parts.permute(0, 3, 1, 2))
                    _sparse_times_dense(column_matrix, token_columns, transposed)
                    columns_done[:, :, g].copy_(transposed.view(tile.width, n_block, grid_h).permute(1, 2, 0))
                if whole:
                    rows_done = out[channels]
                else:
                    rows_done = scratch[columns_size : columns_size + n_block * tile.height * tile.width]
                _sparse_times_dense(
                    plan.row_phase(n_block, rows_per_channel),
                    columns_done.view(-1, tile.width),
                    rows_done.view(n_block * tile.height, tile.width),
                )
                if not whole:
                    out[channels, tile.rows, tile.cols] += rows_done.view(n_block, tile.height, tile.width)
        return out

    def _check_channels(self, channels: Sequence[int] | slice | None) -> torch.Tensor | slice:
        if channels is None:
            return slice(None)
        if isinstance(channels, slice):
            if not len(range(self.n_features)[channels]):
                raise InputError(
                    f"The channel selection {channels} is empty: the features have {self.n_features} channels "
                    f"(0..{self.n_features - 1})."
                )
            return channels
        index = np.asarray(channels, dtype=np.int64).reshape(-1)
        if not index.size:
            raise InputError("The channel selection is empty: give at least one channel index.")
        if index.min() < -self.n_features or index.max() >= self.n_features:
            raise InputError(f"Channel indices must lie in [0, {self.n_features}), got {index.min()}..{index.max()}.")
        return torch.as_tensor(index % self.n_features, device=self.device)

    @interactive_threads()
    def features(self, channels: Sequence[int] | slice | None = None) -> np.ndarray:
        """Full-resolution HR-Dv2 features.

        Parameters
        ----------
        channels : sequence of int, slice or None
            Feature channels to return (default all). Memory is
            ``len(channels) * H * W * 4`` bytes: ask for a subset on large images.

        Returns
        -------
        (C', H, W) float32 array.
        """
        selection = self._check_channels(channels)
        n_out = len(range(self.n_features)[selection]) if isinstance(selection, slice) else len(selection)

        def lowres(tile_maps: TileMaps, k: int, part: slice) -> torch.Tensor:
            if isinstance(selection, slice):
                picked = tile_maps.maps[k][selection]
            else:
                picked = tile_maps.maps[k].index_select(0, selection)
            return picked[part]  # storage dtype: _reconstruct converts while it transposes

        return self._reconstruct(lowres, n_out).cpu().numpy()

    @interactive_threads()
    def project(self, weight: np.ndarray | torch.Tensor, bias: np.ndarray | torch.Tensor | None = None) -> np.ndarray:
        """``weight @ features() + bias`` without materialising the features.

        Parameters
        ----------
        weight : (n_out, C) array
        bias : (n_out,) array or None

        Returns
        -------
        (n_out, H, W) float32 array, equal to applying the map to :meth:`features`.
        """
        weight_t = torch.as_tensor(np.asarray(weight) if not torch.is_tensor(weight) else weight)
        if weight_t.ndim != 2 or weight_t.shape[1] != self.n_features:
            raise InputError(f"weight must have shape (n_out, {self.n_features}), got {tuple(weight_t.shape)}.")
        weight_t = weight_t.to(device=self.device, dtype=torch.float32)

        def lowres(tile_maps: TileMaps, k: int, part: slice) -> torch.Tensor:
            maps = tile_maps.maps[k]
            return torch.einsum("oc,chw->ohw", weight_t[part], maps.float())

        out = self._reconstruct(lowres, weight_t.shape[0])
        if bias is not None:
            bias_t = torch.as_tensor(np.asarray(bias) if not torch.is_tensor(bias) else bias).reshape(-1)
            if bias_t.shape[0] != weight_t.shape[0]:
                raise InputError(f"bias must have shape ({weight_t.shape[0]},), got {tuple(bias_t.shape)}.")
            out += bias_t.to(device=self.device, dtype=torch.float32)[:, None, None]
        return out.cpu().numpy()

    def attention(self) -> np.ndarray:
        """Last-block CLS attention per head, (heads, H, W) float32, transform-averaged like the features."""
        if self.n_heads == 0:
            raise InputError("This encoding was computed without attention maps (with_attention=False).")

        def lowres(tile_maps: TileMaps, k: int, part: slice) -> torch.Tensor:
            assert tile_maps.attention is not None
            return tile_maps.attention[k][part]

        return self._reconstruct(lowres, self.n_heads).cpu().numpy()

    @interactive_threads()
    def sample(self, rows: np.ndarray | Sequence[int], cols: np.ndarray | Sequence[int]) -> np.ndarray:
        """Exact HR feature vectors at pixels ``(rows[i], cols[i])``: (N, C) float32.

        Equals ``features()[:, rows, cols].T`` but reads only a few taps per pixel.
        """
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        cols = np.asarray(cols, dtype=np.int64).reshape(-1)
        height, width = self.image_shape
        if rows.shape != cols.shape:
            raise InputError(f"rows and cols must have the same length, got {rows.shape} and {cols.shape}.")
        if rows.size and (rows.min() < 0 or rows.max() >= height or cols.min() < 0 or cols.max() >= width):
            raise InputError(f"Pixel coordinates must lie inside the {height}x{width} image.")
        out = torch.zeros((rows.size, self.n_features), dtype=torch.float32, device=self.device)
        for tile_maps in self.tiles:
            tile = tile_maps.tile
            inside = np.flatnonzero(
                (rows >= tile.top)
                & (rows < tile.top + tile.height)
                & (cols >= tile.left)
                & (cols < tile.left + tile.width)
            )
            if inside.size:
                # Row-major pixel order lets neighbouring pixels reuse the same tokens from cache.
                inside = inside[np.lexsort((cols[inside], rows[inside]))]
                taps, used = _sampling_matrix(
                    tile_maps, rows[inside] - tile.top, cols[inside] - tile.left, compact=True
                )
                tokens = tile_maps.token_rows(used)
                if self.device.type == "mps":  # no sparse CSR kernels on MPS: sample on the CPU
                    taps, tokens = taps.cpu(), tokens.cpu()
                values = torch.sparse.mm(taps, tokens).to(self.device)
                out[torch.as_tensor(inside, device=self.device)] += values
        return out.cpu().numpy()

    def feature_norm(self) -> np.ndarray:
        """Per-pixel L2 norm of the HR features, (H, W) float32 (computed in channel blocks, cached)."""
        if self._norm is None:
            height, width = self.image_shape
            squared = np.zeros((height, width), dtype=np.float32)
            block = max(1, _NORM_BLOCK_ELEMENTS // (height * width))
            for start in range(0, self.n_features, block):
                part = self.features(slice(start, min(start + block, self.n_features)))
                squared += np.einsum("chw,chw->hw", part, part)
            self._norm = np.sqrt(squared)
        return self._norm

    def cosine_similarity(self, row: int, col: int) -> np.ndarray:
        """Cosine similarity of every pixel's feature to the feature at ``(row, col)``: (H, W) in [-1, 1]."""
        return cosine_similarity_to_pixel(self, row, col)

    def to(self, device: str | torch.device) -> Encoding:
        """Move the low-resolution maps (e.g. to the CPU to free GPU memory); returns self."""
        device = torch.device(device)
        for tile_maps in self.tiles:
            tile_maps.maps = tile_maps.maps.to(device)
            if tile_maps.attention is not None:
                tile_maps.attention = tile_maps.attention.to(device)
            tile_maps._plan = None
        return self


@dataclass(frozen=True)
class PartialEncoding:
    """An intermediate result of a progressive encode: the exact average over the first transforms.

    ``encoding`` covers ``encoding.n_transforms`` of the run's ``total`` transforms (identity
    first) and is a complete :class:`Encoding` of those (features, project, sample, attention);
    its ``config`` is the run's. It shares memory with the run: do not keep it past the run if
    memory matters.
    """

    encoding: Encoding
    total: int

    @property
    def n_transforms(self) -> int:
        return self.encoding.n_transforms

    @property
    def fraction(self) -> float:
        """Share of the transforms done, in (0, 1)."""
        return self.n_transforms / self.total


class Featurizer:
    """Computes :class:`Encoding` objects with one :class:`FeatureConfig`.

    The backbone is loaded on first use (and cached per process).
    """

    def __init__(self, config: FeatureConfig | None = None, *, backbone: Backbone | None = None):
        self.config = config or FeatureConfig()
        runtime = self.config.runtime
        self.device = resolve_device(self.config.device, runtime=runtime)
        #: The compute dtype and why it was chosen (``dtype="auto"`` on the CPU: bfloat16 where native;
        #: float32 under ONNX Runtime or OpenVINO).
        self.dtype_choice = choose_dtype(self.config.dtype, self.device, runtime=runtime)
        if runtime != "torch":
            require_runtime(runtime)
        self.dtype = self.dtype_choice.dtype
        self.storage_dtype = resolve_storage_dtype(self.config.storage_dtype, self.dtype)
        self._backbone = backbone
        self._batch_size = self.config.resolved_batch_size(self.device.type)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        storage = str(self.storage_dtype).removeprefix("torch.")
        return (
            f"Featurizer(backbone={self.config.backbone!r}, device={self.device}, dtype={self.dtype_choice}, "
            f"storage_dtype={storage}, {self.config.n_transforms} transforms)"
        )

    @property
    def precision(self) -> str:
        """Device and compute dtype in words, e.g. ``"cpu, float32 (auto: CPU without AMX-BF16 ...)"``."""
        return f"{self.device}, {self.dtype_choice}"

    @property
    def backbone(self) -> Backbone:
        if self._backbone is None:
            self._backbone = load_backbone(
                self.config.backbone, device=self.device, dtype=self.dtype, sha256=self.config.weights_sha256
            )
        return self._backbone

    @property
    def patch_size(self) -> int:
        return self.backbone.patch_size

    @property
    def stride(self) -> int:
        return int(self.config.stride or self.backbone.patch_size)

    def plan_tiles(self, height: int, width: int) -> list[Tile]:
        """The tiles of an ``(height, width)`` image: :func:`.tiling.plan_tiles` with this config and backbone.

        Every path that cuts an image into tiles (:meth:`iter_encode`, the tile-by-tile streaming of
        :mod:`~napari_hrdv2.core.scale.streaming`) asks here, so all of them cut the same tiles.
        """
        backbone = self.backbone
        return plan_tiles(
            height, width, tile_size=self.config.tile_size, overlap=self.config.tile_overlap,
            patch_size=backbone.patch_size, stride=self.stride, embed_dim=backbone.embed_dim, depth=backbone.depth,
        )  # fmt: skip

    def encode(
        self,
        image: np.ndarray,
        *,
        progress: Callable[[Progress], None] | None = None,
        cancel: threading.Event | None = None,
        with_attention: bool = True,
    ) -> Encoding | ChannelEncoding:
        """Encode one image (H, W) or (H, W, 3|4) of any int/float dtype.

        With ``channel_mode="separate"`` the image is ``(H, W[, C])`` with any ``C >= 1`` and the result a
        :class:`~.channels.ChannelEncoding` (one encoding per channel, features concatenated in channel order).
        ``progress`` is called after every step; setting ``cancel`` stops the
        run between steps with :class:`Cancelled`.
        """
        return run_steps(self.iter_encode(image, with_attention=with_attention), progress=progress, cancel=cancel)

    def iter_encode(
        self,
        image: np.ndarray,
        *,
        with_attention: bool = True,
        progressive: bool = False,
        prescaled: bool = False,
    ) -> Generator[Progress | PartialEncoding, None, Encoding | ChannelEncoding]:
        """Generator form of :meth:`encode`: yields :class:`Progress`, returns the :class:`Encoding`.

        Passes run transform by transform over all tiles, identity first. With ``progressive``
        it also yields a :class:`PartialEncoding` after the identity pass and after each further
        batch of transforms: the exact HR-Dv2 average over the transforms done so far (usable
        like the final encoding, e.g. for a first PCA view). Stop iterating (or call ``close()``)
        to cancel; nothing is left running. ``prescaled=True`` takes float intensities already
        scaled to [0, 1] (a tile of a larger image scaled with the whole image's range,
        :mod:`.streaming`) and skips the per-image scaling (``channel_mode="separate"``: every channel
        already scaled on its own, :func:`.preprocess.scale_channels`). A separate-channel encode yields no
        :class:`PartialEncoding`.
        """
        if self.config.volume:
            raise InputError(
                "FeatureConfig(volume=True) describes the features of a volume (the mean of its XY, XZ and YZ "
                "planes), not of one plane: segment the (Z, Y, X) stack with napari_hrdv2.fit_stack / predict_stack "
                "(or features.volume.VolumeEncoder), or use volume=False for plane-by-plane features."
            )
        backbone = self.backbone
        layer = self.config.layer
        if layer is not None and not -backbone.depth <= layer < backbone.depth:
            raise InputError(
                f"layer={layer} is outside this backbone's {backbone.depth} blocks: use 0..{backbone.depth - 1} "
                "(or a negative index from the end, or None for the last block)."
            )
        if self.config.channel_mode == "separate":
            return (yield from self._iter_encode_channels(image, with_attention=with_attention, prescaled=prescaled))
        # ``to_rgb01`` without replicating grey to RGB: a grey image is kept as one scaled float32 plane (a third
        # of the memory) and replicated per tile. The values are identical.
        planes = validate_image(image, min_side=backbone.patch_size)
        if planes.ndim == 3 and planes.shape[-1] == 4:
            planes = planes[..., :3]
        return (
            yield from self._iter_encode_planes(
                planes, image, with_attention=with_attention, progressive=progressive, prescaled=prescaled
            )
        )

    def _iter_encode_channels(
        self, image: np.ndarray, *, with_attention: bool, prescaled: bool
    ) -> Generator[Progress, None, ChannelEncoding]:
        """``channel_mode="separate"``: every channel of ``(H, W[, C])`` encoded as a grey image, in channel order.

        Each channel is scaled on its own over the whole image (:func:`.preprocess.scale_channels`; with
        ``prescaled`` the channels are already scaled so). Progress counts channels x tiles x transforms; the
        memory of all ``C`` encodings is checked before the first.
        """
        image = validate_image(image, min_side=self.backbone.patch_size, any_channels=True)
        scaled = (
            (np.asarray(image, dtype=np.float32)[..., None] if image.ndim == 2 else np.asarray(image, dtype=np.float32))
            if prescaled
            else scale_channels(image, normalize=self.config.normalize)
        )
        n_channels = scaled.shape[-1]
        passes = len(self.plan_tiles(*scaled.shape[:2])) * self.config.n_transforms  # per channel
        blocks = []
        for c in range(n_channels):
            steps = self._iter_encode_planes(
                np.ascontiguousarray(scaled[..., c]), image, with_attention=with_attention, progressive=False,
                prescaled=True, memory_blocks=n_channels if c == 0 else 0,
            )  # fmt: skip
            block = yield from within(
                steps, c * passes, passes, total=n_channels * passes, message=f"encoding channel {c + 1}/{n_channels}"
            )
            block.image = None  # the whole image is kept once, by the channel encoding
            blocks.append(block)
        return ChannelEncoding(blocks, config=self.config, image=np.asarray(image))

    def _iter_encode_planes(
        self,
        planes: np.ndarray,
        image: np.ndarray,
        *,
        with_attention: bool,
        progressive: bool,
        prescaled: bool,
        memory_blocks: int = 1,
    ) -> Generator[Progress | PartialEncoding, None, Encoding]:
        """Encode one validated grey ``(H, W)`` or RGB ``(H, W, 3)`` image (:meth:`iter_encode`).

        ``memory_blocks``: the memory check counts this many encodings of the image (0: no check).
        """
        backbone = self.backbone
        patch, stride = backbone.patch_size, self.stride
        height, width = planes.shape[:2]
        tiles = self.plan_tiles(height, width)
        transforms = self.config.transforms
        total = len(tiles) * len(transforms)
        grids = [
            token_grid(
                padded_size(tile.height, patch_size=patch, stride=stride),
                padded_size(tile.width, patch_size=patch, stride=stride),
                patch_size=patch,
                stride=stride,
            )
            for tile in tiles
        ]
        # One buffer for the maps of all tiles (and one for the attention), viewed per tile: the long-lived maps
        # then never interleave with the forward passes' temporaries, which fragmented the heap by ~0.3 GB on
        # 100 tiles (4096 x 4096) when each tile's maps were allocated on their own.
        n_tokens = sum(grid_h * grid_w for grid_h, grid_w in grids) * len(transforms)
        device_bytes, host_bytes = encoding_bytes(
            height, width, n_tokens=n_tokens * max(1, memory_blocks), embed_dim=backbone.embed_dim,
            num_heads=backbone.num_heads, storage_itemsize=self.storage_dtype.itemsize, with_attention=with_attention,
            channels=(1 if planes.ndim == 2 else 3) * max(1, memory_blocks),
        )  # fmt: skip
        if memory_blocks:
            check_encoding_memory(
                height, width, device_bytes=device_bytes, host_bytes=host_bytes, device=self.device,
                n_transforms=len(transforms), storage_itemsize=self.storage_dtype.itemsize,
                n_channels=memory_blocks if self.config.channel_mode == "separate" else None,
            )  # fmt: skip
        scaled = np.ascontiguousarray(
            planes if prescaled else scale_intensities(planes, normalize=self.config.normalize), dtype=np.float32
        )
        yield Progress(0, total, "encoding")

        mean = torch.tensor(backbone.mean, device=self.device).view(3, 1, 1)
        std = torch.tensor(backbone.std, device=self.device).view(3, 1, 1)
        source = torch.from_numpy(scaled)  # normalised per tile, never as a whole (3, H, W) copy

        tile_maps = self._tile_map_views(grids, len(transforms), with_attention)

        def crop_of(tile: Tile) -> torch.Tensor:
            part = source[tile.rows, tile.cols]
            if part.ndim == 2:
                part = part.unsqueeze(-1).expand(-1, -1, 3)
            return (part.to(self.device).permute(2, 0, 1) - mean) / std

        single_crop = crop_of(tiles[0]) if len(tiles) == 1 else None
        identity = (backbone_fingerprint(backbone.model), backbone_family_of(backbone))

        def encoding_of(n_done: int) -> Encoding:
            return self._assemble(image, tiles, grids, tile_maps, transforms[:n_done], identity)

        done = n_done = 0
        while n_done < len(transforms):
            # The identity pass alone first when progressive: the first usable result costs one forward per tile.
            group = range(
                n_done, min(n_done + (1 if progressive and n_done == 0 else self._batch_size), len(transforms))
            )
            for tile, (maps, attention) in zip(tiles, tile_maps):
                crop = single_crop if single_crop is not None else crop_of(tile)
                for batch in self._iter_batches(crop, group, maps, attention, with_attention):
                    done += len(batch)
                    yield Progress(done, total, "encoding")
            n_done = group.stop
            if progressive and n_done < len(transforms):
                yield PartialEncoding(encoding_of(n_done), len(transforms))
        return encoding_of(len(transforms))

    def _tile_map_views(
        self, grids: list[tuple[int, int]], n_transforms: int, with_attention: bool
    ) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """Per tile, views (K, C, h, w) of the token maps and (K, heads, h, w) of the attention (or None).

        One buffer holds the maps of all tiles (and one the attention): the long-lived maps then never
        interleave with the forward passes' temporaries, which fragmented the heap by ~0.3 GB on 100 tiles
        (4096 x 4096) when each tile's maps were allocated on their own.
        """
        embed_dim, heads = self.backbone.embed_dim, self.backbone.num_heads
        n_tokens = sum(grid_h * grid_w for grid_h, grid_w in grids) * n_transforms
        all_maps = torch.empty(n_tokens * embed_dim, dtype=self.storage_dtype, device=self.device)
        all_attention = (
            torch.empty(n_tokens * heads, dtype=torch.float32, device=self.device) if with_attention else None
        )
        views: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        offset = 0
        for grid in grids:
            size = n_transforms * grid[0] * grid[1]
            maps = all_maps[offset * embed_dim : (offset + size) * embed_dim].view(n_transforms, embed_dim, *grid)
            attention = (
                None
                if all_attention is None
                else all_attention[offset * heads : (offset + size) * heads].view(n_transforms, heads, *grid)
            )
            views.append((maps, attention))
            offset += size
        return views

    def _iter_batches(
        self,
        crop: torch.Tensor,
        group: range,
        maps: torch.Tensor,
        attention: torch.Tensor | None,
        with_attention: bool,
    ) -> Iterator[range]:
        """Encode the transformed copies ``group`` of one normalised tile crop (3, h, w) into its map views.

        Yields each batch of transform indices once its maps are stored. A batch holds copies of one
        shape (90/270-degree copies are W x H); after running out of memory the batch is retried with the
        (now smaller) batch size.
        """
        transforms = self.config.transforms
        patch, stride = self.backbone.patch_size, self.stride
        start = group.start
        while start < group.stop:
            stop = start + 1
            while stop < min(start + self._batch_size, group.stop) and (
                transforms[stop].transposes == transforms[start].transposes
            ):
                stop += 1
            batch = range(start, stop)
            copies = torch.stack(
                [pad_to_grid(transforms[k].apply(crop), patch_size=patch, stride=stride) for k in batch]
            )
            tokens, cls_attention = self._forward(copies.to(self.dtype), stride, with_attention)
            if tokens is None:  # out of memory: retry this batch with the (now smaller) batch size
                continue
            if transforms[start].transposes:  # stored transposed: the inverse taps read it like any other
                tokens = tokens.transpose(-2, -1)
                cls_attention = None if cls_attention is None else cls_attention.transpose(-2, -1)
            maps[batch.start : batch.stop] = tokens
            if attention is not None:
                attention[batch.start : batch.stop] = cls_attention
            start = batch.stop
            yield batch

    def _assemble(
        self,
        image: np.ndarray,
        tiles: list[Tile],
        grids: list[tuple[int, int]],
        tile_maps: list[tuple[torch.Tensor, torch.Tensor | None]],
        done_transforms: tuple[Transform, ...],
        identity: tuple[np.ndarray, str | None],
    ) -> Encoding:
        """The :class:`Encoding` of the transforms done so far (views of the maps, no copy)."""
        n_done = len(done_transforms)
        patch, stride = self.backbone.patch_size, self.stride
        parts = []
        for tile, grid, (maps, attention) in zip(tiles, grids, tile_maps):
            rows, cols = fused_taps(
                tile, done_transforms, grid, patch_size=patch, stride=stride, resize=self.config.resize
            )
            parts.append(TileMaps(tile, maps[:n_done], None if attention is None else attention[:n_done], rows, cols))
        image = np.asarray(image)
        encoding = Encoding(
            config=self.config, image_shape=image.shape[:2], tiles=parts, transforms=done_transforms, image=image
        )
        encoding.backbone_fingerprint, encoding.backbone_family = identity
        return encoding

    def _forward(
        self, copies: torch.Tensor, stride: int, with_attention: bool
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        restore_usual_threads()  # forwards are long: all of torch's threads, even in a worker started mid-retrain
        try:
            with self._lock, torch.inference_mode():
                if self.config.runtime != "torch":  # an exported runtime: it follows torch's thread count when made
                    forward = onnx_forward(
                        self.backbone,
                        runtime=self.config.runtime,
                        stride=stride,
                        facet=self.config.facet,
                        layer=self.config.layer,
                    )
                    return forward(copies, with_attention=with_attention)
                return forward_tokens(
                    self.backbone,
                    copies,
                    stride=stride,
                    with_attention=with_attention,
                    facet=self.config.facet,
                    layer=self.config.layer,
                )
        except Exception as err:
            if not is_out_of_memory(err) or self._batch_size == 1:
                if is_out_of_memory(err):
                    raise InputError(
                        "Out of memory even with batch_size=1. Use a smaller tile_size, a larger stride, "
                        "a smaller backbone, or device='cpu'."
                    ) from err
                raise
            empty_cache(self.device)
            self._batch_size = max(1, self._batch_size // 2)
            return None, None


def encode(image: np.ndarray, config: FeatureConfig | None = None, **options) -> Encoding | ChannelEncoding:
    """One-shot helper: ``Featurizer(config).encode(image, **options)``."""
    return Featurizer(config).encode(image, **options)
