"""Sample data bundled with the plugin: real micrographs (MIT licensed, see ``sample_data/CREDITS.md``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

SAMPLE_DIR = Path(__file__).resolve().parent / "sample_data"
SUPERALLOY_FILE = SAMPLE_DIR / "superalloy_lshr_15kx.png"
TCELL_IMAGES_FILE = SAMPLE_DIR / "tcell_images.tif"
TCELL_SCRIBBLES_FILE = SAMPLE_DIR / "tcell_scribbles.tif"

LayerData = tuple[Any, dict[str, Any], str]


def load_superalloy_image() -> np.ndarray:
    """The bundled 512x512 uint8 SEM micrograph of a Ni-based superalloy."""
    from .core.files.images import read_image

    return read_image(SUPERALLOY_FILE)


def grey_levels_to_classes(scribbles: np.ndarray) -> np.ndarray:
    """Map the grey levels of a scribble image (e.g. 0/85/170/255) to labels 0..N in increasing order."""
    levels = np.unique(scribbles)
    levels = levels[levels != 0]
    classes = np.zeros(scribbles.shape, dtype=np.uint8)
    for value, level in enumerate(levels, start=1):
        classes[scribbles == level] = value
    return classes


def superalloy_sample() -> list[LayerData]:
    """napari sample: one SEM micrograph of a Ni-based superalloy (NASA, MIT licence)."""
    return [(load_superalloy_image(), {"name": "superalloy", "colormap": "gray"}, "image")]


def tcell_sample() -> list[LayerData]:
    """napari sample: 6 T-cell TEM micrographs with brush scribbles (tldr-group/HR-Dv2, MIT licence)."""
    from .core.files.images import read_image

    images = read_image(TCELL_IMAGES_FILE)
    scribbles = grey_levels_to_classes(read_image(TCELL_SCRIBBLES_FILE))
    return [
        (images, {"name": "T-cells", "colormap": "gray"}, "image"),
        (scribbles, {"name": "T-cells scribbles", "opacity": 0.8}, "labels"),
    ]
