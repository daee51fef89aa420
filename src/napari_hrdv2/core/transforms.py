"""The HR-Dv2 transform set: periodic shifts, optionally combined with flips and 90-degree rotations.

A transform acts on a ``(..., H, W)`` array as ``T(x) = rot90(flip(roll(x, shift)), k)``
and is undone by ``T^-1(y) = roll(flip(rot90(y, -k)), -shift)``: the steps are undone
in reverse order (upstream HR-Dv2 undoes the shift first, which is wrong when a
shift is combined with a flip).

This module sits on the ground floor beside :mod:`.config` (which lists the transform set of a
configuration): a transform is plain data, and torch is imported only when one is applied.

A rotation by 90 or 270 degrees swaps the axes: the transformed copy of an
``H x W`` image is ``W x H``. Its inverse still reads every output axis from one
axis of the transformed copy (:meth:`Transform.inverse_source_index`), so the
reconstruction stays separable per axis: the encoder stores the token map of such
a copy transposed, and the per-axis taps carry the index reversal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from .errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import torch

Flip = Literal["none", "horizontal", "vertical"]
ShiftPattern = Literal["none", "neumann", "moore"]
#: Accepted values of ``FeatureConfig.shifts``.
SHIFT_PATTERNS: tuple[str, ...] = ("none", "neumann", "moore")

_NEUMANN = ((-1, 0), (1, 0), (0, -1), (0, 1))
_MOORE = _NEUMANN + ((-1, -1), (-1, 1), (1, -1), (1, 1))


@dataclass(frozen=True)
class Transform:
    """A periodic shift ``(dy, dx)`` in pixels, then an optional flip, then ``rotation`` x 90 degrees.

    ``rotation`` counts counter-clockwise quarter turns (``torch.rot90`` with ``k=rotation``).
    """

    shift: tuple[int, int] = (0, 0)
    flip: Flip = "none"
    rotation: int = 0

    def __post_init__(self) -> None:
        if self.rotation not in (0, 1, 2, 3):
            raise InputError(f"rotation must be 0, 1, 2 or 3 quarter turns, got {self.rotation!r}.")

    @property
    def transposes(self) -> bool:
        """True when the transformed copy has its axes swapped (90 or 270 degrees)."""
        return self.rotation % 2 == 1

    def apply(self, image: torch.Tensor) -> torch.Tensor:
        """``T(x)`` for ``image`` of shape (..., H, W); (..., W, H) when :attr:`transposes`."""
        import torch

        out = torch.roll(image, shifts=self.shift, dims=(-2, -1)) if any(self.shift) else image
        out = self._flip(out)
        return torch.rot90(out, self.rotation, dims=(-2, -1)) if self.rotation else out

    def invert(self, image: torch.Tensor) -> torch.Tensor:
        """``T^-1(y)`` for ``image`` of shape (..., H', W'): unrotate, unflip, then unshift."""
        import torch

        out = torch.rot90(image, -self.rotation, dims=(-2, -1)) if self.rotation else image
        out = self._flip(out)
        return torch.roll(out, shifts=(-self.shift[0], -self.shift[1]), dims=(-2, -1)) if any(self.shift) else out

    def _flip(self, image: torch.Tensor) -> torch.Tensor:
        import torch

        if self.flip == "horizontal":
            return torch.flip(image, dims=(-1,))
        if self.flip == "vertical":
            return torch.flip(image, dims=(-2,))
        return image

    def source_axis(self, axis: int) -> int:
        """The axis of the transformed copy ``y`` that output ``axis`` of ``T^-1(y)`` reads (0 rows, 1 columns)."""
        return 1 - axis if self.transposes else axis

    def inverse_source_index(self, length: int, axis: int) -> np.ndarray:
        """Where ``T^-1(y)`` reads ``y``, for output ``axis`` (0 = rows, 1 = columns) of ``length`` pixels.

        Returns an int64 array ``q`` of shape (length,): position ``p`` along output ``axis`` reads
        position ``q[p]`` along axis :meth:`source_axis` of ``y`` (which has the same length). Without a
        rotation that is ``T^-1(y)[..., p] = y[..., q[p]]`` along the same axis; for 90 and 270 degrees,
        ``T^-1(y)[r, c] = y[q_cols[c], q_rows[r]]``.
        """
        positions = (np.arange(length) + self.shift[axis]) % length
        flipped_axis = {"vertical": 0, "horizontal": 1}.get(self.flip)
        if flipped_axis == axis:
            positions = length - 1 - positions
        # rot90(y, -k)[r, c] reads y[W-1-c, r] (k=1), y[H-1-r, W-1-c] (k=2), y[c, H-1-r] (k=3).
        reversed_axes = {0: (), 1: (1,), 2: (0, 1), 3: (0,)}[self.rotation]
        if axis in reversed_axes:
            positions = length - 1 - positions
        return positions.astype(np.int64)


def make_transforms(
    shifts: ShiftPattern = "moore", distances: tuple[int, ...] = (1,), flips: bool = False, rotations: bool = False
) -> tuple[Transform, ...]:
    """All transforms of an HR-Dv2 configuration, the identity first.

    Shifts are ``(0, 0)`` plus, for each distance ``d``, the 4 axial
    (``"neumann"``) or 8 axial and diagonal (``"moore"``) unit directions times
    ``d``; each is combined with no flip, and with ``flips=True`` also with a
    horizontal and a vertical flip. ``rotations=True`` combines each of those with
    rotations by 0, 90, 180 and 270 degrees (4x the transforms). With both flips and
    rotations a vertical flip is left out (it equals a horizontal flip and a 180-degree
    rotation): the 2 x 4 flip/rotation combinations per shift are the 8 distinct symmetries
    of the square (8x the transforms of shifts alone, not 12x).
    """
    if shifts not in SHIFT_PATTERNS:
        raise InputError(f"shifts={shifts!r} is not one of {SHIFT_PATTERNS}.")
    directions = {"none": (), "neumann": _NEUMANN, "moore": _MOORE}[shifts]
    offsets: list[tuple[int, int]] = [(0, 0)]
    for distance in distances:
        for dy, dx in directions:
            offset = (dy * int(distance), dx * int(distance))
            if offset not in offsets:
                offsets.append(offset)
    flip_modes: tuple[Flip, ...] = ("none", "horizontal", "vertical") if flips else ("none",)
    if not rotations:
        return tuple(Transform(offset, flip) for offset in offsets for flip in flip_modes)
    if flips:
        flip_modes = ("none", "horizontal")  # vertical = horizontal + 180 degrees: no duplicate copies
    # Rotations by 0 and 180 degrees first, then 90 and 270: copies of one shape are contiguous (batched together).
    return tuple(
        Transform(offset, flip, rotation) for rotation in (0, 2, 1, 3) for offset in offsets for flip in flip_modes
    )
