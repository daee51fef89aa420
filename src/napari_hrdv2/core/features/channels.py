"""Per-channel features (``FeatureConfig(channel_mode="separate")``): one encoding per image channel, concatenated.

An ``(H, W, C)`` image is encoded channel by channel, each channel as a grey image scaled on its own
(:func:`~.preprocess.scale_channels`), and its features are the ``C`` blocks of ``D`` features in channel
order: feature ``c * D + d`` is feature ``d`` of channel ``c``. :class:`ChannelEncoding` keeps the ``C``
block encodings (each an :class:`~.encoding.Encoding` of low-resolution maps) and answers like one
encoding: a linear map of the ``C x D`` features is the sum of each block's map of its ``D`` features
(:meth:`ChannelEncoding.project` adds the blocks' ``n_out`` logits), so no ``C x D`` full-resolution array
is ever made unless :meth:`ChannelEncoding.features` is asked for it.

This module does not import :mod:`.encoding` (which builds channel encodings): the blocks are used only
through the interface of an encoding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..config import FeatureConfig
from ..errors import InputError
from .sources import cosine_similarity_to_pixel


class ChannelEncoding:
    """HR-Dv2 features of a multichannel image: one block encoding per channel, concatenated in channel order.

    Parameters
    ----------
    blocks : sequence of Encoding
        One encoding per channel, in channel order, all of one image shape, feature width and backbone.
    config : FeatureConfig
        The run's settings (``channel_mode="separate"``).
    image : (H, W, C) array or None
        The (unscaled) input image, kept by reference.

    Notes
    -----
    :meth:`attention` is the mean of the blocks' CLS attention (one map per head). :attr:`n_channels`
    says how many image channels the features describe (``n_features == n_channels * block width``).
    """

    def __init__(self, blocks: Sequence[Any], *, config: FeatureConfig, image: np.ndarray | None = None):
        blocks = list(blocks)
        if not blocks:
            raise InputError("A channel encoding needs at least one channel.")
        shapes = {tuple(block.shape) for block in blocks}
        widths = {int(block.n_features) for block in blocks}
        if len(shapes) != 1 or len(widths) != 1:
            raise InputError(
                f"The channel encodings differ in image shape {sorted(shapes)} or feature width {sorted(widths)}."
            )
        self.blocks = blocks
        self.config = config
        #: The (validated, unscaled) input image ``(H, W, C)``, kept by reference for hybrid features.
        self.image = image
        self._norm: np.ndarray | None = None

    # ------------------------------------------------------------ properties
    @property
    def backbone_fingerprint(self) -> np.ndarray | None:
        return self.blocks[0].backbone_fingerprint

    @property
    def backbone_family(self) -> str | None:
        return self.blocks[0].backbone_family

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the encoded image."""
        return tuple(self.blocks[0].shape)

    @property
    def image_shape(self) -> tuple[int, int]:
        return self.shape

    @property
    def n_channels(self) -> int:
        """Image channels encoded (one block each)."""
        return len(self.blocks)

    @property
    def block_width(self) -> int:
        """Features per channel ``D``."""
        return int(self.blocks[0].n_features)

    @property
    def n_features(self) -> int:
        """``n_channels * block_width``."""
        return self.n_channels * self.block_width

    @property
    def n_heads(self) -> int:
        return int(self.blocks[0].n_heads)

    @property
    def n_transforms(self) -> int:
        return int(self.blocks[0].n_transforms)

    @property
    def transforms(self) -> tuple[Any, ...]:
        return self.blocks[0].transforms

    @property
    def device(self) -> Any:
        return self.blocks[0].device

    @property
    def lowres_maps(self) -> list[Any]:
        """Per channel, then per tile, the ``(K, D, h, w)`` token maps (what the encoding stores)."""
        return [maps for block in self.blocks for maps in block.lowres_maps]

    @property
    def nbytes(self) -> int:
        """Memory held by the low-resolution maps of all channels."""
        return sum(int(block.nbytes) for block in self.blocks)

    def __repr__(self) -> str:
        h, w = self.shape
        return (
            f"ChannelEncoding({h}x{w}, {self.n_channels} channels x {self.block_width} features, "
            f"{self.n_transforms} transforms, {self.nbytes / 2**20:.0f} MiB on {self.device})"
        )

    # ------------------------------------------------------------ reading
    def _selection(self, channels: Sequence[int] | slice | None) -> np.ndarray:
        n = self.n_features
        if channels is None:
            return np.arange(n)
        if isinstance(channels, slice):
            index = np.arange(n)[channels]
            if not index.size:
                raise InputError(
                    f"The channel selection {channels} is empty: the features have {n} channels (0..{n - 1})."
                )
            return index
        index = np.asarray(channels, dtype=np.int64).reshape(-1)
        if not index.size:
            raise InputError("The channel selection is empty: give at least one channel index.")
        if index.min() < -n or index.max() >= n:
            raise InputError(f"Channel indices must lie in [0, {n}), got {index.min()}..{index.max()}.")
        return index % n

    def features(self, channels: Sequence[int] | slice | None = None) -> np.ndarray:
        """Full-resolution features: the channel blocks in channel order (or the features ``channels`` of them).

        Returns
        -------
        (C', H, W) float32 array; without ``channels``, ``C' = n_channels * block_width`` and
        ``features()[c * D:(c + 1) * D]`` is block ``c`` (``D = block_width``).
        """
        index = self._selection(channels)
        width = self.block_width
        out = np.empty((index.size, *self.shape), dtype=np.float32)
        for c, block in enumerate(self.blocks):
            positions = np.flatnonzero(index // width == c)
            if positions.size:
                out[positions] = block.features(index[positions] - c * width)
        return out

    def project(self, weight: Any, bias: Any = None) -> np.ndarray:
        """``weight @ features() + bias`` as the sum of every block's projection of its columns of ``weight``.

        Parameters
        ----------
        weight : (n_out, n_features) array
        bias : (n_out,) array or None

        Returns
        -------
        (n_out, H, W) float32 array: only ``n_out`` maps per block reach full resolution.
        """
        weight = np.asarray(weight.detach().cpu() if hasattr(weight, "detach") else weight, dtype=np.float32)
        if weight.ndim != 2 or weight.shape[1] != self.n_features:
            raise InputError(f"weight must have shape (n_out, {self.n_features}), got {tuple(weight.shape)}.")
        width = self.block_width
        out = None
        for c, block in enumerate(self.blocks):
            part = block.project(np.ascontiguousarray(weight[:, c * width : (c + 1) * width]))
            if out is None:
                out = part
            else:
                out += part
        assert out is not None
        if bias is not None:
            bias = np.asarray(bias.detach().cpu() if hasattr(bias, "detach") else bias, dtype=np.float32).reshape(-1)
            if bias.shape[0] != weight.shape[0]:
                raise InputError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}.")
            out += bias[:, None, None]
        return out

    def sample(self, rows: np.ndarray | Sequence[int], cols: np.ndarray | Sequence[int]) -> np.ndarray:
        """Exact feature vectors at pixels ``(rows[i], cols[i])``: (N, n_features) float32, blocks concatenated."""
        return np.concatenate([block.sample(rows, cols) for block in self.blocks], axis=1)

    def attention(self) -> np.ndarray:
        """CLS attention per head, (heads, H, W) float32: the mean over the channel blocks."""
        total = self.blocks[0].attention()
        for block in self.blocks[1:]:
            total += block.attention()
        return total / np.float32(self.n_channels)

    def feature_norm(self) -> np.ndarray:
        """Per-pixel L2 norm of all ``n_features`` features, (H, W) float32 (from the blocks' norms, cached)."""
        if self._norm is None:
            squared = np.zeros(self.shape, dtype=np.float32)
            for block in self.blocks:
                squared += np.square(block.feature_norm())
            self._norm = np.sqrt(squared)
        return self._norm

    def cosine_similarity(self, row: int, col: int) -> np.ndarray:
        """Cosine similarity of every pixel's feature to the feature at ``(row, col)``: (H, W) in [-1, 1]."""
        return cosine_similarity_to_pixel(self, row, col)

    def to(self, device: Any) -> ChannelEncoding:
        """Move every block's low-resolution maps (e.g. to the CPU); returns self."""
        for block in self.blocks:
            block.to(device)
        return self
