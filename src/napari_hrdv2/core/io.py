"""Reading micrographs and writing label images (TIFF via tifffile, PNG via scikit-image)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .errors import InputError
from .labels import MAX_LABEL, as_label_image

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file: (H, W), (H, W, 3|4) or a stack (N, H, W[, 3|4]) for multi-page TIFFs.

    Leading singleton axes (e.g. a (1, H, W) TIFF) are dropped.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"Image file '{path}' does not exist.")
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            data = tifffile.imread(str(path))
        elif suffix in IMAGE_SUFFIXES:
            from skimage.io import imread

            data = imread(str(path))
        else:
            raise InputError(f"'{path.name}' is not a supported image ({', '.join(IMAGE_SUFFIXES)}).")
    except InputError:
        raise
    except Exception as err:
        raise InputError(f"Could not read '{path}': {err}") from err
    data = np.asarray(data)
    while data.ndim > 2 and data.shape[0] == 1:
        data = data[0]
    if data.ndim < 2 or data.ndim > 4:
        raise InputError(f"'{path.name}' has shape {data.shape}; expected an image or a stack of images.")
    return data


def is_stack(image: np.ndarray) -> bool:
    """True for (N, H, W) and (N, H, W, 3|4) arrays, False for single planes."""
    return image.ndim == 4 or (image.ndim == 3 and image.shape[-1] not in (3, 4))


def planes(image: np.ndarray) -> np.ndarray:
    """The image as a plane-first stack: (N, H, W[, C]) (a single plane gives N = 1)."""
    return image if is_stack(image) else image[None]


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Files and the image files directly inside folders, sorted, duplicates removed."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found.extend(sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            found.append(path)
    unique: dict[Path, None] = dict.fromkeys(found)
    return list(unique)


def write_labels(path: str | Path, labels: np.ndarray, *, overwrite: bool = False) -> Path:
    """Write a label image (H, W) or stack (N, H, W) as TIFF (multi-page for stacks) or PNG (2D only).

    All-or-nothing (:mod:`.atomic`): an existing file is replaced only once the new one is complete.
    """
    from .atomic import check_target, write_png, write_tif

    path = check_target(path, overwrite=overwrite, what="label image")
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"Label images must be integers, got {labels.dtype}.")
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        return write_tif(path, labels, overwrite=overwrite, compression="zlib")
    if suffix == ".png":
        if labels.ndim != 2:
            raise InputError("PNG holds one plane; write stacks as TIFF or one PNG per plane.")
        if labels.dtype not in (np.uint8, np.uint16):
            if labels.size and (labels.min() < 0 or labels.max() > MAX_LABEL):
                raise InputError(f"PNG label images hold values 0..{MAX_LABEL}; write this one as TIFF.")
            labels = as_label_image(labels)
        return write_png(path, labels, overwrite=overwrite)
    raise InputError(f"Unsupported label format '{suffix}'; use .tif or .png.")
