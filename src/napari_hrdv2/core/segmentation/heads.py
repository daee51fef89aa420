"""Which segmenter class a head name or a model file means: ``"linear"`` (:class:`~.segmenter.LinearSegmenter`)
or ``"mlp"`` (:class:`~.mlp.MLPSegmenter`).

:func:`load_segmenter` reads any model file as the class of the head it holds; :func:`new_segmenter` makes an
untrained segmenter of a head (the CLI's ``--head`` and the dock's *Head* choice).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import InputError
from .mlp import MLPSegmenter
from .model_file import HEAD_KINDS, read_model_file
from .segmenter import LinearSegmenter

#: The segmenter class of each head of :data:`.model_file.HEAD_KINDS`.
SEGMENTER_CLASSES: dict[str, type[LinearSegmenter]] = {"linear": LinearSegmenter, "mlp": MLPSegmenter}
#: The heads, as the CLI and the dock offer them.
HEADS = tuple(SEGMENTER_CLASSES)
assert set(HEADS) == set(HEAD_KINDS)


def segmenter_class(head: str) -> type[LinearSegmenter]:
    """The class of ``head`` (``"linear"`` or ``"mlp"``); :class:`InputError` for anything else."""
    if head not in SEGMENTER_CLASSES:
        raise InputError(f"head must be one of {', '.join(HEADS)}, got {head!r}.")
    return SEGMENTER_CLASSES[head]


def new_segmenter(head: str = "linear", **params: Any) -> LinearSegmenter:
    """An untrained segmenter of ``head`` with ``params`` (its keyword options; others keep their defaults)."""
    return segmenter_class(head)(**params)


def load_segmenter(path: str | Path) -> LinearSegmenter:
    """The model of a file written by ``save``, as the class of the head it holds (linear or MLP).

    Raises
    ------
    ModelFileError
        A missing file, or anything but one of our model files.
    """
    record, tensors, name = read_model_file(path)
    return SEGMENTER_CLASSES[record.head].from_record(record, tensors, name=name)
