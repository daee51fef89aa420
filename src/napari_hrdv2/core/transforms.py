"""The HR-Dv2 transform set: periodic shifts, optionally combined with flips.

A transform acts on a ``(..., H, W)`` array as ``T(x) = flip(roll(x, shift))``
and is undone by ``T^-1(y) = roll(flip(y), -shift)``: the two steps are undone
in reverse order (upstream HR-Dv2 undoes the shift first, which is wrong when a
shift is combined with a flip).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from .errors import InputError

ShiftPattern = Literal["none", "neumann", "moore"]
Flip = Literal["none", "horizontal", "vertical"]
SHIFT_PATTERNS: tuple[str, ...] = ("none", "neumann", "moore")

_NEUMANN = ((-1, 0), (1, 0), (0, -1), (0, 1))
_MOORE = _NEUMANN + ((-1, -1), (-1, 1), (1, -1), (1, 1))


@dataclass(frozen=True)
class Transform:
    """A periodic shift ``(dy, dx)`` in pixels followed by an optional flip."""

    shift: tuple[int, int] = (0, 0)
    flip: Flip = "none"

    def apply(self, image: torch.Tensor) -> torch.Tensor:
        """``T(x)`` for ``image`` of shape (..., H, W)."""
        out = torch.roll(image, shifts=self.shift, dims=(-2, -1)) if any(self.shift) else image
        return self._flip(out)

    def invert(self, image: torch.Tensor) -> torch.Tensor:
        """``T^-1(y)`` for ``image`` of shape (..., H, W): unflip, then unshift."""
        out = self._flip(image)
        return torch.roll(out, shifts=(-self.shift[0], -self.shift[1]), dims=(-2, -1)) if any(self.shift) else out

    def _flip(self, image: torch.Tensor) -> torch.Tensor:
        if self.flip == "horizontal":
            return torch.flip(image, dims=(-1,))
        if self.flip == "vertical":
            return torch.flip(image, dims=(-2,))
        return image

    def inverse_source_index(self, length: int, axis: int) -> np.ndarray:
        """Where ``T^-1(y)[p]`` reads ``y`` along ``axis`` (0 = rows, 1 = columns).

        Returns an int64 array ``q`` of shape (length,) with ``T^-1(y)[..., p] = y[..., q[p]]``.
        """
        positions = (np.arange(length) + self.shift[axis]) % length
        flipped_axis = {"vertical": 0, "horizontal": 1}.get(self.flip)
        if flipped_axis == axis:
            positions = length - 1 - positions
        return positions.astype(np.int64)


def make_transforms(
    shifts: ShiftPattern = "moore", distances: tuple[int, ...] = (1,), flips: bool = False
) -> tuple[Transform, ...]:
    """All transforms of an HR-Dv2 configuration, the identity first.

    Shifts are ``(0, 0)`` plus, for each distance ``d``, the 4 axial
    (``"neumann"``) or 8 axial and diagonal (``"moore"``) unit directions times
    ``d``; each is combined with no flip, and with ``flips=True`` also with a
    horizontal and a vertical flip.
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
    return tuple(Transform(offset, flip) for offset in offsets for flip in flip_modes)
