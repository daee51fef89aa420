"""Known answers for the learned position table interpolated to another token grid (core.vit)."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from napari_hrdv2.core.backbone.vit import _position_table


def _backbone_with_positions(table: torch.Tensor) -> SimpleNamespace:
    """The one attribute path ``_position_table`` reads: ``parts.embeddings.position_embeddings`` (1, 1 + N, C)."""
    with_cls = torch.cat([torch.full_like(table[:, :1], -1.0), table], dim=1)
    return SimpleNamespace(parts=SimpleNamespace(embeddings=SimpleNamespace(position_embeddings=with_cls)))


def test_position_table_keeps_each_channel_when_interpolated():
    """Channel c holds the value c at every position: any grid gets the same (bicubic weights sum to one)."""
    channels, side = 8, 4
    table = torch.arange(channels, dtype=torch.float32).expand(1, side * side, channels).contiguous()
    backbone = _backbone_with_positions(table)
    native = _position_table(backbone, (side, side), torch.float32)
    assert torch.equal(native, table)  # the native grid: the table itself, CLS row dropped
    resized = _position_table(backbone, (3, 5), torch.float32)
    assert resized.shape == (1, 15, channels)
    torch.testing.assert_close(resized, torch.arange(channels, dtype=torch.float32).expand(1, 15, channels))


def test_position_table_interpolates_rows_and_columns_in_order():
    """Channel 0 = row index, channel 1 = column index: a grid of the same extent keeps their order and range."""
    side = 6
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    table = torch.stack([rows, cols], dim=-1).reshape(1, side * side, 2).float()
    resized = _position_table(_backbone_with_positions(table), (3, 12), torch.float32).reshape(3, 12, 2)
    assert (resized[1:, :, 0] > resized[:-1, :, 0]).all() and (resized[:, 1:, 1] > resized[:, :-1, 1]).all()
    torch.testing.assert_close(resized[:, :, 0].std(dim=1), torch.zeros(3))  # row values do not vary along a row
    torch.testing.assert_close(resized[:, :, 1].std(dim=0), torch.zeros(12))
