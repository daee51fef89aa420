"""Reading micrographs and label images (axes from the file) and writing label images, all-or-nothing."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from .label_images import MAX_LABEL, as_label_image

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
#: A last axis shorter than this (narrower than any backbone's patch) and than the other two holds channels.
NARROW_CHANNELS = 14


def parse_channels(channels: int | str | Sequence[int] | None, *, at_most: int | None = 3) -> tuple[int, ...] | None:
    """``channels`` as a tuple of 1 to ``at_most`` indices >= 0 (``"0,2"``, ``2``, ``[2, 1, 0]``); None stays None.

    ``at_most=None``: any number (``channel_mode="separate"`` encodes every chosen channel on its own).

    Raises
    ------
    InputError
        Not integers, negative, none, or more than ``at_most``.
    """
    if channels is None:
        return None
    if isinstance(channels, str):
        parts = [p.strip() for p in channels.replace(" ", ",").split(",") if p.strip()]
    elif isinstance(channels, (int, float, np.number)):
        parts = [channels]
    else:
        parts = list(channels)
    try:
        values = tuple(int(p) for p in parts)
        if any(isinstance(p, float) and not p.is_integer() for p in parts):
            raise ValueError
    except (TypeError, ValueError):
        raise InputError(f"Channels must be whole numbers such as 0 or 0,2 (0-based), got {channels!r}.") from None
    if not values or min(values) < 0:
        raise InputError(f"Choose channels numbered from 0, such as 0 or 0,2; got {channels!r}.")
    if at_most is not None and len(values) > at_most:
        raise InputError(
            f"Choose one channel (grey), two (red and green) or three (RGB), numbered from 0; got {channels!r}. "
            "To use more, encode every channel on its own: channel_mode='separate' (--channel-mode separate)."
        )
    return values


@dataclass(frozen=True)
class ChannelChoice:
    """Which channels of an image's channel axis make the grey or RGB image HR-Dv2 reads.

    ``indices`` are taken in order: one gives a grey image, two red and green with an empty blue (the
    lower of the two, which leaves the min-max scaling unchanged), three an RGB image. ``note`` says
    what was used (a :class:`UserWarning` of the readers), or is None when the image is used as stored.
    ``separate`` (``channel_mode="separate"``): the chosen channels are kept as they are, ``(..., k)``
    (grey ``(...)`` for one), each to be encoded on its own.
    """

    indices: tuple[int, ...]
    note: str | None = None
    separate: bool = False

    @property
    def colour(self) -> bool:
        """True when the result has a channel axis (RGB ``(..., 3)``, or ``(..., k)`` when separate), False for grey."""
        return len(self.indices) > 1

    @property
    def n_out(self) -> int:
        """Length of the result's channel axis (0: grey, no channel axis)."""
        if len(self.indices) == 1:
            return 0
        return len(self.indices) if self.separate else 3

    def apply(self, data: np.ndarray) -> np.ndarray:
        """The chosen channels of ``data`` (channels last, ``(..., C)``): grey ``(...)`` or RGB ``(..., 3)``."""
        return self.combine(data[..., list(self.indices)])

    def combine(self, picked: np.ndarray) -> np.ndarray:
        """``picked`` (``(..., k)``, the chosen channels in order) as grey ``(...)`` or RGB ``(..., 3)``."""
        if picked.shape[-1] == 1:
            return np.ascontiguousarray(picked[..., 0])
        if self.separate:
            return np.ascontiguousarray(picked)
        if picked.shape[-1] == 2:
            empty = np.broadcast_to(picked.min(axis=-1, keepdims=True), picked.shape[:-1] + (1,))
            picked = np.concatenate([picked, empty], axis=-1)  # the lowest value: no effect on the intensity scaling
        return np.ascontiguousarray(picked)


def choose_channels(
    n_channels: int | None,
    axis_name: str | None,
    alpha: bool,
    channels: int | str | Sequence[int] | None,
    name: str,
    *,
    separate: bool = False,
) -> ChannelChoice | None:
    """The channels an image is read with, by the rules of :func:`read_image` (shared by the lazy readers).

    Parameters
    ----------
    n_channels : length of the image's channel axis, or None if it has none (grey)
    axis_name : what the channel axis is, for messages (``"C"``, ``"S"``, ``"last"``)
    alpha : the last channel is alpha
    channels : the user's choice (``parse_channels``), or None for the default rules
    name : the image's name, for messages
    separate : ``channel_mode="separate"``: any number of channels is kept (all of them without a choice,
        alpha dropped), each to be encoded on its own

    Returns
    -------
    None for an image without a channel axis (used as stored), else the :class:`ChannelChoice`.

    Raises
    ------
    InputError
        A channel out of range, or (no choice) 2 or more than 4 channels that are not grey + alpha.
    """
    chosen = parse_channels(channels, at_most=None if separate else 3)
    if separate:
        return _separate_choice(n_channels, axis_name, alpha, chosen, name)
    if chosen is not None:
        n_known = n_channels if n_channels is not None else 1
        wrong = [c for c in chosen if c >= n_known]
        if wrong:
            what = (
                f"{n_known} channels ({axis_name} axis), numbered 0..{n_known - 1}"
                if n_channels is not None and n_known > 1
                else "one channel (numbered 0)"
            )
            raise InputError(f"Channel {wrong[0]} is out of range: '{name}' has {what}.")
        if n_channels is None:
            return None  # grey, channel 0 (once or repeated: the same grey image)
        used = ("as grey", "as red and green (blue empty)", "as RGB")[len(chosen) - 1]
        listed = ", ".join(str(c) for c in chosen)
        note = (
            f"'{name}': using channel{'s' if len(chosen) > 1 else ''} {listed} of {n_channels} "
            f"({axis_name} axis) {used}."
        )
        return ChannelChoice(chosen, note)
    if n_channels is None:
        return None
    if alpha and n_channels in (2, 4):
        used = "grey" if n_channels == 2 else "RGB"
        return ChannelChoice(tuple(range(n_channels - 1)), f"'{name}': dropped the alpha channel; using {used}.")
    if n_channels == 3:
        note = f"'{name}': using its 3 channels (C axis) as RGB." if axis_name == "C" else None
        return ChannelChoice((0, 1, 2), note)
    if n_channels == 1:
        return ChannelChoice((0,))
    raise InputError(
        f"'{name}' has {n_channels} channels ({axis_name} axis); HR-Dv2 uses grey or RGB images. "
        "Choose the one, two or three to use with channels= (command line: --channels 0 or --channels 0,2), "
        "or encode every channel on its own: channel_mode='separate' (--channel-mode separate)."
    )


def _separate_choice(
    n_channels: int | None, axis_name: str | None, alpha: bool, chosen: tuple[int, ...] | None, name: str
) -> ChannelChoice | None:
    """:func:`choose_channels` for ``channel_mode="separate"``: the chosen channels, or all (alpha dropped)."""
    n_known = n_channels if n_channels is not None else 1
    if chosen is not None:
        wrong = [c for c in chosen if c >= n_known]
        if wrong:
            raise InputError(
                f"Channel {wrong[0]} is out of range: '{name}' has {n_known} channel(s) ({axis_name} axis), "
                f"numbered 0..{n_known - 1}."
            )
        if n_channels is None:
            return None if len(chosen) == 1 else ChannelChoice(chosen, None, separate=True)
        listed = ", ".join(str(c) for c in chosen)
        note = f"'{name}': encoding channels {listed} of {n_channels} ({axis_name} axis) separately."
        return ChannelChoice(chosen, note, separate=True)
    if n_channels is None:
        return None
    if alpha and n_channels in (2, 4):
        return ChannelChoice(tuple(range(n_channels - 1)), f"'{name}': dropped the alpha channel.", separate=True)
    return ChannelChoice(tuple(range(n_channels)), None, separate=True)


def read_image(
    path: str | Path, *, channels: int | str | Sequence[int] | None = None, separate: bool = False
) -> np.ndarray:
    """Read an image file: (H, W), (H, W, 3) or a stack (N, H, W[, 3]).

    Axes come from the file where it says what they are: OME-TIFF and ImageJ metadata (channels
    ``C``, planes ``Z``/``T``...), TIFF colour samples, PNG modes. Alpha is dropped (grey + alpha
    gives grey, RGBA gives RGB) and a :class:`UserWarning` says which channels were used. Images with
    2 or more than 4 channels that are not grey + alpha are refused with an :class:`InputError`
    unless ``channels`` chooses which to use: HR-Dv2 takes grey or RGB. Leading singleton axes are dropped.

    Parameters
    ----------
    path : image file
    channels : int, "0,2", sequence of int, or None
        0-based indices into the file's channels (colour samples or the C axis): one gives a grey
        image, two red and green (blue empty), three RGB in that order. None: the default rules above.
    separate : bool
        ``channel_mode="separate"``: every channel (or the ``channels`` chosen, any number, in that
        order) is kept, ``(H, W, C)`` or ``(N, H, W, C)``, to be encoded one by one; alpha is dropped.

    Raises
    ------
    InputError
        Missing, empty, unreadable or unsupported file, a channel layout that is not grey/RGB, or a
        channel index out of range.
    """
    parse_channels(channels, at_most=None if separate else 3)  # a malformed choice is refused before reading
    path = _existing_file(path, "Image")
    data, channel_axis_name, alpha = _read_any(path)
    name = path.name
    n_channels = data.shape[-1] if channel_axis_name is not None else None
    choice = choose_channels(n_channels, channel_axis_name, alpha, channels, name, separate=separate)
    if choice is not None:
        if choice.note:
            warnings.warn(choice.note, UserWarning, stacklevel=2)
        data = choice.apply(data)
    while data.ndim > 2 and data.shape[0] == 1:
        data = data[0]
    if data.ndim < 2 or data.ndim > 4 or min(data.shape[:2] if data.ndim < 4 else data.shape[1:3]) == 0:
        raise InputError(f"'{name}' has shape {data.shape}; expected an image or a stack of images.")
    return data


def read_labels(path: str | Path) -> np.ndarray:
    """Read a label image (H, W) or label stack (N, H, W) as stored: palette PNGs give their indices.

    Raises
    ------
    InputError
        Missing, empty or unreadable file, or a file with colour channels (labels hold one class value
        per pixel).
    """
    path = _existing_file(path, "Labels file")
    data, channel_axis_name, _ = _read_any(path, keep_palette=True)
    if channel_axis_name is not None and data.shape[-1] != 1:
        raise InputError(
            f"Labels '{path.name}' have {data.shape[-1]} channels; a label image holds one class value per "
            "pixel (0 = unlabelled, 1, 2, ...), e.g. a napari Labels layer saved as TIFF."
        )
    if channel_axis_name is not None:
        data = data[..., 0]
    while data.ndim > 2 and data.shape[0] == 1:
        data = data[0]
    return data


def _existing_file(path: str | Path, what: str) -> Path:
    from .paths import check_input_file

    path = check_input_file(path, what)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise InputError(f"'{path.name}' is not a supported image ({', '.join(IMAGE_SUFFIXES)}).")
    if path.stat().st_size == 0:
        raise InputError(f"Could not read '{path}': the file is empty.")
    return path


def _read_any(path: Path, *, keep_palette: bool = False) -> tuple[np.ndarray, str | None, bool]:
    """(data, channel axis name or None, last channel is alpha); channels, if any, are last."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            return _read_tiff(path)
        return _read_pillow(path, keep_palette=keep_palette)
    except InputError:
        raise
    except MemoryError:
        raise InputError(f"'{path.name}' is too large to read into memory.") from None
    except Exception as err:  # the readers raise many types for corrupt files
        kind = "TIFF" if path.suffix.lower() in (".tif", ".tiff") else path.suffix.lstrip(".").upper()
        reason = " ".join(str(err).split("\n")[0].split("header=")[0].split())[:160].rstrip(":, ") or type(err).__name__
        raise InputError(f"Could not read '{path}' as {kind} (damaged, truncated or another format): {reason}") from err


@dataclass(frozen=True)
class TiffLayout:
    """How a TIFF's first series is read: its axes, and which of them holds channels.

    ``order`` lists the series' axes as read: planes (every axis that is not Y, X or the channels; they
    are merged into one plane axis), Y, X, then the channel axis if any. ``known`` is False when the
    axes do not name Y and X (the data is then used as stored).
    """

    axes: str
    shape: tuple[int, ...]
    channel: str | None
    alpha: bool
    known: bool = True

    @property
    def order(self) -> list[int]:
        order = [i for i, a in enumerate(self.axes) if a not in "YX" and a != self.channel]
        order += [self.axes.index("Y"), self.axes.index("X")]
        if self.channel is not None:
            order.append(self.axes.index(self.channel))
        return order


def tiff_layout(tif: object) -> TiffLayout:
    """The :class:`TiffLayout` of an open ``tifffile.TiffFile`` (its first series), from the metadata only."""
    series = tif.series[0]  # type: ignore[attr-defined]
    axes = series.axes.upper()
    shape = tuple(int(s) for s in series.shape)
    page = tif.pages[0]  # type: ignore[attr-defined]
    photometric = int(getattr(page, "photometric", 1) or 1)
    extrasamples = tuple(int(e) for e in getattr(page, "extrasamples", ()) or ())
    described = bool(tif.is_ome or tif.is_imagej)  # type: ignore[attr-defined]
    shaped = bool(tif.is_shaped)  # type: ignore[attr-defined]
    if len(shape) != len(axes) or "Y" not in axes or "X" not in axes:
        return TiffLayout(axes, shape, None, False, known=False)
    if (
        shaped and not described and len(shape) == 3 and axes[1:] == "YX" and photometric != 2
        and shape[2] < min(NARROW_CHANNELS, shape[0], shape[1])
    ):  # fmt: skip
        # A plain (H, W, C) array written by tifffile without axes (pages of C pixels): channels last, as the
        # lazy readers see a narrow last axis, never H images C pixels wide.
        return TiffLayout("YXC", shape, "C", False)
    # Which axis holds channels: C (OME/ImageJ), or colour samples S. Samples stored before Y/X in a file
    # without OME/ImageJ axes (tifffile writes (N, H, W) arrays with N = 3 or 4 that way) are planes, as
    # they were written, unless the file is a real planar RGB image.
    channel = None
    if "C" in axes and shape[axes.index("C")] > 1:
        channel = "C"
    if "S" in axes and shape[axes.index("S")] > 1:
        planar = axes.index("S") < axes.index("Y")
        if channel is not None:
            name = Path(str(getattr(tif, "filename", "image"))).name
            raise InputError(f"'{name}' has both channels and colour samples (axes {axes}); save one of them.")
        if not planar or described or (photometric == 2 and not shaped):
            channel = "S"
    alpha = channel == "S" and (bool(extrasamples) and extrasamples[-1] in (1, 2)) and photometric in (1, 2)
    return TiffLayout(axes, shape, channel, alpha)


def _read_tiff(path: Path) -> tuple[np.ndarray, str | None, bool]:
    import tifffile

    with tifffile.TiffFile(str(path)) as tif:
        if not tif.series:
            raise InputError(f"Could not read '{path}': the TIFF holds no image.")
        layout = tiff_layout(tif)
        data = np.asarray(tif.series[0].asarray())
    if not layout.known or data.ndim != len(layout.axes):
        return data, None, False  # unknown layout: as stored
    order = layout.order
    data = np.transpose(data, order)
    lead = data.shape[: len(order) - (3 if layout.channel else 2)]
    data = data.reshape(int(np.prod(lead, dtype=np.int64)) if lead else 1, *data.shape[len(lead) :])
    return data, layout.channel, layout.alpha


def _read_pillow(path: Path, *, keep_palette: bool) -> tuple[np.ndarray, str | None, bool]:
    from PIL import Image

    with Image.open(path) as handle:
        handle.load()
        mode = handle.mode
        if mode == "P" and not keep_palette:
            handle = handle.convert("RGBA" if "transparency" in handle.info else "RGB")
        elif mode in ("PA", "CMYK", "YCbCr", "LAB", "HSV"):
            handle = handle.convert("RGBA" if mode == "PA" else "RGB")
        elif mode == "1":
            handle = handle.convert("L")
        mode = handle.mode
        data = np.asarray(handle)
    if data.ndim == 2:
        return data, None, False
    return data, "S", mode in ("LA", "RGBA", "La", "RGBa")


def is_stack(image: np.ndarray, *, separate: bool = False) -> bool:
    """True for (N, H, W) and (N, H, W, 3|4) arrays, False for single planes.

    ``separate`` (``channel_mode="separate"``, any number of channels): a 3-D array is one image
    ``(H, W, C)`` when its last axis is narrower than any backbone's patch (:data:`NARROW_CHANNELS`).
    """
    if separate:
        return image.ndim == 4 or (image.ndim == 3 and image.shape[-1] >= NARROW_CHANNELS)
    return image.ndim == 4 or (image.ndim == 3 and image.shape[-1] not in (3, 4))


def planes(image: np.ndarray, *, separate: bool = False) -> np.ndarray:
    """The image as a plane-first stack: (N, H, W[, C]) (a single plane gives N = 1)."""
    return image if is_stack(image, separate=separate) else image[None]


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Files and the image files directly inside folders, sorted, duplicates removed; a ``*.zarr`` folder is one image."""
    from .paths import check_path

    found: list[Path] = []
    for item in inputs:
        path = check_path(item, "input")
        if path.is_dir() and path.suffix.lower() == ".zarr":
            found.append(path)  # a Zarr image named as an input, not a folder of images
        elif path.is_dir():
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
        return write_tif(path, labels, overwrite=overwrite, compression="zlib", photometric="minisblack")
    if suffix == ".png":
        if labels.ndim != 2:
            raise InputError("PNG holds one plane; write stacks as TIFF or one PNG per plane.")
        if labels.dtype not in (np.uint8, np.uint16):
            if labels.size and (labels.min() < 0 or labels.max() > MAX_LABEL):
                raise InputError(f"PNG label images hold values 0..{MAX_LABEL}; write this one as TIFF.")
            labels = as_label_image(labels)
        return write_png(path, labels, overwrite=overwrite)
    raise InputError(f"Unsupported label format '{suffix}'; use .tif or .png.")
