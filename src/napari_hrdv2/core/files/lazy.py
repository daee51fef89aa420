"""Images larger than memory: lazy inputs read region by region, and resumable Zarr outputs.

Inputs (:func:`open_lazy`): a Zarr array or OME-Zarr image (``*.zarr`` folders), a TIFF read through
tifffile's Zarr store (tiled BigTIFFs read one tile at a time; the first series, full resolution), a
memory-mapped ``.npy`` file, or any array-like with ``shape``, ``dtype`` and numpy slicing (numpy,
dask and zarr arrays, e.g. the data of a napari layer). Nothing is read until a region is asked for.

A :class:`LazyPlane` is one image ``(H, W)`` or ``(H, W, 3|4)`` of such an array (a stack ``(N, H, W[, C])``
gives N planes): :meth:`LazyPlane.read` returns one region as a numpy array, and
:func:`intensity_range` computes the intensity scaling of the whole plane block by block, with the same
values as :func:`~.preprocess.scale_intensities` gives on the array in memory.

Outputs (:class:`ZarrOutput`): an OME-Zarr image (NGFF 0.4, one resolution level, Zarr format 2) written
under a temporary name ``<name>.partial`` next to its final name, chunk row by chunk row. Every finished
chunk row is recorded by a marker file written after its data, so a killed or cancelled run leaves only the
``.partial`` folder (nothing that looks complete) and a rerun with the same job resumes after the last
finished chunk row. :meth:`ZarrOutput.finish` marks the image complete and renames it into place
(``os.replace``).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import NORMALIZE_OPTIONS, ROBUST_PERCENTILES, Normalize
from ..errors import InputError
from .atomic import fsync_file, write_text, write_tif
from .checksums import file_sha256

#: Suffixes of inputs that are read lazily (whole folders for Zarr).
LAZY_SUFFIXES = (".zarr", ".npy")
#: Suffix of the temporary name of an output being written (``cells_labels.zarr.partial``).
PARTIAL_SUFFIX = ".partial"
#: Name of the bookkeeping folder inside a partial output (job description and finished chunk rows).
_STATE_DIR = ".hrdv2_state"
#: Attribute group of our metadata in a Zarr output.
ATTRS_KEY = "napari_hrdv2"
#: Rows of an image read at once when computing statistics (times the width: bounded memory).
_STATS_BLOCK_PIXELS = 1 << 24


# ---------------------------------------------------------------------------------------------- inputs
def is_lazy_path(path: str | Path) -> bool:
    """True for inputs that are always read lazily: ``*.zarr`` folders and ``.npy`` files."""
    return Path(path).suffix.lower() in LAZY_SUFFIXES


def _open_zarr(path: Path) -> Any:
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as err:
        raise InputError(f"Could not open '{path}' as Zarr: {err}") from err
    try:
        return zarr_image_array(node, path)
    except InputError:
        raise
    except Exception as err:  # damaged metadata can make any lookup fail
        reason = " ".join(str(err).split())[:160] or type(err).__name__
        raise InputError(f"Could not read '{path}' as an OME-Zarr image (damaged metadata?): {reason}") from err


def zarr_image_array(node: Any, path: Path) -> Any:
    """The full-resolution array of a Zarr array, an OME-Zarr image group, or a group holding one array."""
    import zarr

    if isinstance(node, zarr.Array):
        return node
    attrs = dict(node.attrs)
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if multiscales:
        datasets = multiscales[0].get("datasets") or []
        if not datasets:
            raise InputError(f"'{path}' is an OME-Zarr image without datasets.")
        first = datasets[0].get("path") if isinstance(datasets[0], dict) else None
        try:
            array = node[str(first)] if first is not None else None
        except KeyError:
            array = None
        if array is None or not hasattr(array, "shape"):
            raise InputError(
                f"'{path}' is a damaged OME-Zarr image: its metadata names the dataset path {first!r}, which is not "
                "in the folder (or not an array). Re-export the image, or give the path of one of its arrays."
            )
        axes = [a["name"] if isinstance(a, dict) else str(a) for a in multiscales[0].get("axes", [])]
        return _AxesView(array, axes) if axes else array
    arrays = [value for _, value in node.arrays()]
    if len(arrays) == 1:
        return arrays[0]
    groups = [value for _, value in node.groups()]
    if not arrays and len(groups) == 1:  # e.g. a TIFF pyramid's store
        return zarr_image_array(groups[0], path)
    if arrays and "0" in node:
        return node["0"]
    raise InputError(
        f"'{path}' is a Zarr group with {len(arrays)} arrays and no OME-Zarr metadata: give the path of one array, "
        f"e.g. '{path}/<name>'."
    )


class _AxesView:
    """An OME-Zarr array with named axes seen as ``(planes..., y, x[, c])``: singleton non-spatial axes dropped.

    Channels (``c``) are moved last when there are 3 or 4 of them (colour) and kept as planes otherwise (napari's
    view; :func:`open_channels`, which segmentation reads through, refuses 2 or more than 4 without a choice).
    """

    def __init__(self, array: Any, axes: list[str]):
        self.array = array
        names = [a.lower() for a in axes]
        if len(names) != array.ndim or "y" not in names or "x" not in names:
            raise InputError(f"OME-Zarr axes {axes} do not match the array's {array.ndim} dimensions with y and x.")
        shape = dict(zip(names, array.shape))
        colour = "c" in names and shape["c"] in (3, 4)
        lead = [n for n in names if n not in ("y", "x") and not (n == "c" and colour) and shape[n] != 1]
        self.order = [*lead, "y", "x", *(["c"] if colour else [])]
        self._fixed = {n: 0 for n in names if n not in self.order}
        self._names = names
        self.shape = tuple(shape[n] for n in self.order)
        self.dtype = array.dtype
        self.ndim = len(self.shape)

    def __getitem__(self, index: Any) -> np.ndarray:
        index = index if isinstance(index, tuple) else (index,)
        index = index + (slice(None),) * (self.ndim - len(index))
        by_name = dict(zip(self.order, index))
        selection = tuple(self._fixed.get(n, by_name.get(n, slice(None))) for n in self._names)
        data = np.asarray(self.array[selection])
        kept = [n for n in self._names if n in by_name and not isinstance(by_name[n], (int, np.integer))]
        wanted = [n for n in self.order if n in kept]
        return np.transpose(data, [kept.index(n) for n in wanted]) if kept != wanted else data


def open_lazy(source: Any) -> Any:
    """An array-like ``(H, W[, C])`` or ``(N, H, W[, C])`` that reads only what is sliced.

    Parameters
    ----------
    source : path or array-like
        ``*.zarr`` (Zarr array or OME-Zarr image), ``.tif``/``.tiff`` (through tifffile's Zarr store:
        a tiled BigTIFF is read tile by tile), ``.npy`` (memory-mapped), or an array-like that
        already reads lazily (numpy, dask, zarr: returned as is).
    """
    if not isinstance(source, (str, Path)):
        if not (hasattr(source, "shape") and hasattr(source, "dtype") and hasattr(source, "__getitem__")):
            raise InputError(f"Expected a path or an array-like, got {type(source).__name__}.")
        return source
    path = Path(source)
    suffix = path.suffix.lower()
    if suffix == ".zarr":
        if not path.exists():
            raise InputError(f"Zarr input '{path}' does not exist.")
        array = _open_zarr(path)
    elif suffix == ".npy":
        if not path.is_file():
            raise InputError(f"Image file '{path}' does not exist.")
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except Exception as err:
            raise InputError(f"Could not read '{path}': {err}") from err
    elif suffix in (".tif", ".tiff"):
        if not path.is_file():
            raise InputError(f"Image file '{path}' does not exist.")
        import tifffile
        import zarr

        try:
            store = tifffile.imread(str(path), aszarr=True)
            array = zarr_image_array(zarr.open(store, mode="r"), path)
        except InputError:
            raise
        except Exception as err:
            raise InputError(f"Could not read '{path}': {err}") from err
    else:
        raise InputError(f"'{path.name}' cannot be read lazily; use .zarr, .tif/.tiff or .npy.")
    return array


def _squeeze_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    lead = 0
    while len(shape) - lead > 2 and shape[lead] == 1:
        lead += 1
    return shape[lead:]


def _is_stack_shape(shape: tuple[int, ...], separate: bool = False) -> bool:
    if separate:  # any number of channels: a last axis narrower than any patch holds them
        return len(shape) == 4 or (len(shape) == 3 and shape[-1] >= 14)
    return len(shape) == 4 or (len(shape) == 3 and shape[-1] not in (3, 4))


class LazyPlane:
    """One image ``(H, W)`` or ``(H, W, 3|4)`` of a lazy array, read region by region.

    Parameters
    ----------
    array : array-like
        Anything with ``shape``, ``dtype`` and numpy slicing.
    lead : tuple of int
        Index of the plane in the leading axes of ``array`` (``()`` for a single image).
    any_channels : bool
        Accept ``(H, W, C)`` with any ``C`` (``channel_mode="separate"``).
    """

    def __init__(self, array: Any, lead: tuple[int, ...] = (), *, any_channels: bool = False):
        self.array = array
        self.lead = tuple(int(i) for i in lead)
        full = tuple(int(s) for s in array.shape)
        self.shape = full[len(self.lead) :]
        self.dtype = np.dtype(array.dtype)
        narrow = len(self.shape) == 3 and (self.shape[-1] in (3, 4) or any_channels)
        if len(self.shape) not in (2, 3) or (len(self.shape) == 3 and not narrow):
            raise InputError(f"Expected an image (H, W) or (H, W, 3|4), got shape {self.shape}.")
        if not (np.issubdtype(self.dtype, np.integer) or np.issubdtype(self.dtype, np.floating) or self.dtype == bool):
            raise InputError(f"Image dtype {self.dtype} is not numeric; expected an integer or float array.")

    @property
    def height(self) -> int:
        return self.shape[0]

    @property
    def width(self) -> int:
        return self.shape[1]

    def read(self, rows: slice, cols: slice) -> np.ndarray:
        """The region ``[rows, cols]`` as a numpy array (H', W'[, C])."""
        data = np.asarray(self.array[(*self.lead, rows, cols)])
        return data.astype(np.uint8) if data.dtype == bool else data

    def row_blocks(self, pixels: int = _STATS_BLOCK_PIXELS) -> Iterator[np.ndarray]:
        """The whole plane as consecutive blocks of full rows (about ``pixels`` pixels each)."""
        step = max(1, pixels // max(self.width, 1))
        chunks = getattr(self.array, "chunks", None)
        if isinstance(chunks, tuple) and len(chunks) == len(self.lead) + len(self.shape):
            chunk_rows = chunks[len(self.lead)]
            if isinstance(chunk_rows, int) and chunk_rows > 0:  # whole chunk rows: each chunk read once
                step = max(chunk_rows, step // chunk_rows * chunk_rows)
        for top in range(0, self.height, step):
            yield self.read(slice(top, min(top + step, self.height)), slice(None))


def lazy_planes(source: Any, channels: Any = None, *, separate: bool = False) -> tuple[list[LazyPlane], bool]:
    """The planes of a lazy image or stack, and whether it is a stack (leading singleton axes are dropped).

    ``channels`` chooses the channels of a multichannel input as :func:`~.io.read_image` does
    (:func:`open_channels`); TIFFs are always read with the axes their metadata give. ``separate``:
    ``channel_mode="separate"`` (any number of channels kept).
    """
    return planes_of(open_channels(source, channels, separate=separate)[0], separate=separate)


def planes_of(array: Any, *, separate: bool = False) -> tuple[list[LazyPlane], bool]:
    """:func:`lazy_planes` of an array whose channels are already chosen (:func:`open_channels`)."""
    full = tuple(int(s) for s in array.shape)
    shape = _squeeze_shape(full)
    skip = (0,) * (len(full) - len(shape))
    if len(shape) < 2 or len(shape) > 4:
        raise InputError(f"Input of shape {full} is not an image or a stack of images.")
    if _is_stack_shape(shape, separate):
        return [LazyPlane(array, (*skip, i), any_channels=separate) for i in range(shape[0])], True
    return [LazyPlane(array, skip, any_channels=separate)], False


# ---------------------------------------------------------------------------------------------- channels
class ChannelView:
    """A lazy array seen as ``(N, H, W[, 3])`` or ``(H, W[, 3])``, with its channels chosen as ``read_image`` does.

    Every axis that is not y, x or the channel axis is a plane axis (axes of length 1 are dropped, the
    others merged into one plane axis ``N``); the chosen channels give a grey image or RGB
    (:class:`~.io.ChannelChoice`). Only what is sliced is read, one chosen channel at a time.

    Parameters
    ----------
    array : array-like with numpy slicing
    y, x : indices of the row and column axes in ``array``
    channel : index of the channel axis, or None (grey)
    choice : the channels to use (None when there is no channel axis)
    """

    def __init__(self, array: Any, *, y: int, x: int, channel: int | None, choice: Any = None):
        self.array = array
        full = tuple(int(s) for s in array.shape)
        self._y, self._x, self._channel, self.choice = y, x, channel, choice
        others = [i for i in range(len(full)) if i not in (y, x, channel)]
        self._plane_axes = [i for i in others if full[i] != 1]
        self._plane_sizes = tuple(full[i] for i in self._plane_axes)
        colour = (choice.n_out,) if choice is not None and choice.n_out else ()
        planes = (int(np.prod(self._plane_sizes, dtype=np.int64)),) if self._plane_axes else ()
        self.shape = (*planes, full[y], full[x], *colour)
        self.dtype = np.dtype(array.dtype)
        self.ndim = len(self.shape)

    @property
    def chunks(self) -> tuple[int, ...] | None:
        """The source's chunk sides along this view's axes (blocks of whole chunk rows read each chunk once)."""
        source = getattr(self.array, "chunks", None)
        if not isinstance(source, tuple) or len(source) != len(self.array.shape):
            return None
        planes = (1,) if self._plane_axes else ()
        return (*planes, source[self._y], source[self._x], *self.shape[len(planes) + 2 :])

    def __getitem__(self, index: Any) -> np.ndarray:
        index = index if isinstance(index, tuple) else (index,)
        n_planes = 1 if self._plane_axes else 0
        if len(index) < n_planes:
            raise IndexError("a plane of a channel view is read with an integer plane index")
        rows, cols = (*index[n_planes:], slice(None), slice(None))[:2]
        if not (isinstance(rows, slice) and isinstance(cols, slice)):
            raise IndexError("a channel view is read by row and column slices")
        selection: list[Any] = [0] * len(self.array.shape)
        if n_planes:
            plane = int(index[0])
            for axis, position in zip(self._plane_axes, np.unravel_index(plane, self._plane_sizes)):
                selection[axis] = int(position)
        selection[self._y], selection[self._x] = rows, cols
        swap = self._x < self._y  # the array stores columns before rows

        def read(channel: int | None) -> np.ndarray:
            if channel is not None:
                selection[self._channel] = channel  # type: ignore[index]
            data = np.asarray(self.array[tuple(selection)])
            return data.T if swap else data

        if self._channel is None:
            return read(None)
        blocks = {c: read(c) for c in dict.fromkeys(self.choice.indices)}
        return self.choice.combine(np.stack([blocks[c] for c in self.choice.indices], axis=-1))


def open_channels(source: Any, channels: Any = None, *, separate: bool = False) -> tuple[Any, str | None]:
    """A lazy input as ``(N, H, W[, C])`` / ``(H, W[, C])`` with its channels chosen, and the note saying which.

    - TIFF: axes from the file's metadata (OME, ImageJ, colour samples), exactly as
      :func:`~.io.read_image` reads them: the same planes, the same channels, the same alpha rules and
      errors, whether ``channels`` is given or not.
    - OME-Zarr with a ``c`` axis: its channels when ``channels`` is given; otherwise 3 or 4 of them are colour
      and 2 or more than 4 are refused naming the option, as :func:`~.io.read_image` refuses them.
    - Arrays without axis names (``.npy``, plain Zarr, numpy/dask arrays), when ``channels`` is given:
      channels on the last axis, ``(H, W, C)`` or ``(N, H, W, C)``; a 3-D array whose last axis is not shorter
      than the other two is a grey stack ``(N, H, W)``.

    Returns
    -------
    (array-like, note): ``note`` is the text of the warning :func:`~.io.read_image` gives (which channels were
    used, alpha dropped), or None.

    Raises
    ------
    InputError
        A channel out of range, or channels that cannot be told apart (see :func:`~.io.choose_channels`).
    """
    from .images import choose_channels, parse_channels, tiff_layout

    chosen = parse_channels(channels, at_most=None if separate else 3)
    path = Path(source) if isinstance(source, (str, Path)) else None
    name = path.name if path is not None else "image"
    if path is not None and path.suffix.lower() in (".tif", ".tiff"):
        array = open_lazy(path)
        import tifffile

        try:
            with tifffile.TiffFile(str(path)) as tif:
                layout = tiff_layout(tif)
        except InputError:
            raise
        except Exception as err:
            raise InputError(f"Could not read '{path}': {err}") from err
        if not layout.known or tuple(int(s) for s in array.shape) != layout.shape:
            if chosen is not None:
                raise InputError(
                    f"Cannot tell the channels of '{name}' (axes {layout.axes}); save the channels to use as their own "
                    "image."
                )
            return array, None
        n_channels = layout.shape[layout.axes.index(layout.channel)] if layout.channel else None
        choice = choose_channels(n_channels, layout.channel, layout.alpha, chosen, name, separate=separate)
        channel = layout.axes.index(layout.channel) if layout.channel else None
        view = ChannelView(array, y=layout.axes.index("Y"), x=layout.axes.index("X"), channel=channel, choice=choice)
        return view, choice.note if choice is not None else None
    array = open_lazy(source)
    if chosen is None and not separate and isinstance(array, _AxesView) and "c" in array._names:
        n_channels = int(array.array.shape[array._names.index("c")])
        if n_channels == 2 or n_channels > 4:  # as read_image: channels are not planes; the user chooses
            choose_channels(n_channels, "c", False, None, name)
    if chosen is None and not (separate and _has_channels(array)):
        shape = _squeeze_shape(tuple(int(s) for s in array.shape))
        if not isinstance(array, _AxesView) and len(shape) == 3 and shape[-1] not in (3, 4) and shape[-1] < 14:
            # Narrower than any backbone's patch: not a stack of images, but channels on the last axis.
            raise InputError(
                f"'{name}' has shape {shape}: {shape[-1]} channels on its last axis? HR-Dv2 uses grey or RGB images. "
                "Choose the one, two or three to use with channels= (command line: --channels 0 or --channels 0,2)."
            )
        return array, None
    if isinstance(array, _AxesView):
        names = array._names
        channel = names.index("c") if "c" in names else None
        n_channels = int(array.array.shape[channel]) if channel is not None else None
        choice = choose_channels(n_channels, "c", False, chosen, name, separate=separate)
        view = ChannelView(array.array, y=names.index("y"), x=names.index("x"), channel=channel, choice=choice)
        return view, choice.note if choice is not None else None
    full = tuple(int(s) for s in array.shape)
    shape = _squeeze_shape(full)
    if len(shape) == 4 or (len(shape) == 3 and shape[-1] < min(shape[0], shape[1])):
        channel: int | None = len(full) - 1
        n_channels: int | None = shape[-1]
    else:
        channel = n_channels = None
    if len(shape) < 2 or len(shape) > 4:
        raise InputError(f"Input of shape {full} is not an image or a stack of images.")
    choice = choose_channels(n_channels, "last", False, chosen, name, separate=separate)
    spatial = len(full) - (3 if channel is not None else 2)
    view = ChannelView(array, y=spatial, x=spatial + 1, channel=channel, choice=choice)
    return view, choice.note if choice is not None else None


def _has_channels(array: Any) -> bool:
    """An OME-Zarr with a ``c`` axis, or an array ``(H, W, C)`` / ``(N, H, W, C)`` with a narrow last axis."""
    if isinstance(array, _AxesView):
        return "c" in array._names
    shape = _squeeze_shape(tuple(int(s) for s in array.shape))
    return len(shape) == 4 or (len(shape) == 3 and shape[-1] < min(shape[0], shape[1]))


def read_input(path: str | Path, *, channels: Any = None, separate: bool = False) -> tuple[np.ndarray, str | None]:
    """Any image input read into memory, and the note on its channels (None when :func:`read_image` warned).

    Image files go through :func:`~.images.read_image` (which warns itself); Zarr images (``*.zarr``) and
    ``.npy`` arrays are read whole through :func:`open_channels`, with the same channel rules. The result is
    ``(H, W[, 3])`` or a stack ``(N, H, W[, 3])`` (``separate``: ``(..., C)`` with the chosen channels, or all).

    Raises
    ------
    InputError
        As :func:`~.images.read_image` and :func:`open_lazy`.
    """
    from .images import read_image
    from .paths import check_input_file

    if not is_lazy_path(path):
        return read_image(path, channels=channels, separate=separate), None
    check_input_file(path, "Image", folder=True)
    array, note = open_channels(path, channels, separate=separate)
    lazy, stack = planes_of(array, separate=separate)
    arrays = [plane.read(slice(None), slice(None)) for plane in lazy]
    return (np.stack(arrays) if stack else arrays[0]), note


def read_input_image(path: str | Path, *, channels: Any = None, separate: bool = False) -> np.ndarray:
    """:func:`read_input` that warns its channel note (a :class:`UserWarning`), as :func:`~.images.read_image` does."""
    image, note = read_input(path, channels=channels, separate=separate)
    if note:
        warnings.warn(note, UserWarning, stacklevel=2)
    return image


def read_input_labels(path: str | Path) -> np.ndarray:
    """A label image or stack: files through :func:`~.images.read_labels`, Zarr images and ``.npy`` arrays whole.

    Raises
    ------
    InputError
        As :func:`~.images.read_labels`; a Zarr / ``.npy`` array that is not ``(H, W)`` or ``(N, H, W)`` of integers.
    """
    from .images import read_labels
    from .paths import check_input_file

    if not is_lazy_path(path):
        return read_labels(path)
    check_input_file(path, "Labels file", folder=True)
    data = np.asarray(open_lazy(path)[...])
    while data.ndim > 2 and data.shape[0] == 1:
        data = data[0]
    if data.ndim not in (2, 3) or not (np.issubdtype(data.dtype, np.integer) or data.dtype == bool):
        raise InputError(
            f"Labels '{Path(path).name}' have shape {data.shape} and dtype {data.dtype}; a label image holds one "
            "whole class value per pixel, (H, W) or (N, H, W)."
        )
    return data


# ---------------------------------------------------------------------------------------------- intensities
@dataclass(frozen=True)
class IntensityRange:
    """How a whole image is scaled to [0, 1], as :func:`~.preprocess.scale_intensities` does it in memory.

    ``kind`` is ``"scale"`` (``(x - low) * factor``, clipped to [0, 1] when ``clip``), ``"divide"``
    (``clip((x - low) / factor, 0, 1)``: integer dtype ranges), ``"identity"`` (float images already
    in [0, 1]) or ``"constant"`` (0.5 everywhere).
    """

    kind: str
    low: float = 0.0
    factor: float = 1.0
    clip: bool = False

    def apply(self, block: np.ndarray) -> np.ndarray:
        """Scale a block ``(h, w[, C])`` of the image: float32, the same values as on the whole image."""
        data = block.astype(np.float32, copy=False)
        if self.kind == "constant":
            return np.full(data.shape, 0.5, dtype=np.float32)
        if self.kind == "identity":
            return np.array(data, dtype=np.float32, copy=True)
        if self.kind == "divide":
            return np.clip((data - np.float32(self.low)) / np.float32(self.factor), 0.0, 1.0)
        scaled = (data - np.float32(self.low)) * np.float32(self.factor)
        return np.clip(scaled, 0.0, 1.0, out=scaled) if self.clip else scaled


def _colour_planes(block: np.ndarray) -> np.ndarray:
    return block[..., :3] if block.ndim == 3 and block.shape[-1] == 4 else block


def intensity_range(plane: LazyPlane | np.ndarray, normalize: Normalize = "minmax") -> IntensityRange:
    """The intensity scaling of a whole image, computed block by block (alpha dropped, all channels together).

    Equals :func:`~.preprocess.scale_intensities` on the image in memory: ``minmax`` and ``dtype`` exactly;
    ``percentile`` exactly for integer images (counts of every value) and, for float images, to within
    ``(max - min) / 2**20`` (a histogram refined inside the bins of the two percentiles).
    """
    if normalize not in NORMALIZE_OPTIONS:
        raise InputError(f"normalize={normalize!r} is not one of {NORMALIZE_OPTIONS}.")
    if isinstance(plane, np.ndarray):
        plane = LazyPlane(plane)
    dtype = plane.dtype
    if normalize == "dtype" and np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        low = max(int(info.min), 0)
        return IntensityRange("divide", low=float(low), factor=float(info.max - low), clip=True)
    low = high = None
    finite = True
    for block in plane.row_blocks():
        data = _colour_planes(block)
        if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
            finite = False
            break
        block_low, block_high = data.min(), data.max()
        low = block_low if low is None else min(low, block_low)
        high = block_high if high is None else max(high, block_high)
    if not finite:
        raise InputError("Image contains NaN or infinite values; fill them first (e.g. np.nan_to_num).")
    low, high = float(np.float32(low)), float(np.float32(high))
    if normalize == "dtype":  # float image
        if low < 0.0 or high > 1.0:
            raise InputError(
                f"normalize='dtype' needs float images within [0, 1]; this one spans [{low:g}, {high:g}]. "
                "Use normalize='minmax' or 'percentile'."
            )
        return IntensityRange("identity")
    if normalize == "percentile":
        low, high = _percentiles(plane, ROBUST_PERCENTILES, low, high)
    if not high > low:
        warnings.warn("Image is constant; its features describe a uniform grey image.", stacklevel=2)
        return IntensityRange("constant")
    return IntensityRange(
        "scale", low=low, factor=float(np.float32(1.0 / (high - low))), clip=normalize == "percentile"
    )


@dataclass(frozen=True)
class ChannelRanges:
    """How every channel of a whole image is scaled to [0, 1] on its own (``channel_mode="separate"``).

    ``ranges[c]`` is the :class:`IntensityRange` of channel ``c`` over the whole image, so a block scaled
    here equals the block of :func:`~..features.preprocess.scale_channels` of the whole image in memory.
    """

    ranges: tuple[IntensityRange, ...]

    def apply(self, block: np.ndarray) -> np.ndarray:
        """Scale a block ``(h, w[, C])``: float32 ``(h, w, C)`` (``C = 1`` for a grey block)."""
        data = block[..., None] if block.ndim == 2 else block
        if data.shape[-1] != len(self.ranges):
            raise InputError(f"The block has {data.shape[-1]} channels but the image {len(self.ranges)}.")
        out = np.empty(data.shape, dtype=np.float32)
        for c, scaling in enumerate(self.ranges):
            out[..., c] = scaling.apply(data[..., c])
        return out


class _OneChannel:
    """One channel ``(..., H, W)`` of an array-like ``(..., H, W, C)``, read region by region."""

    def __init__(self, array: Any, channel: int):
        self.array, self.channel = array, channel
        self.shape = tuple(int(s) for s in array.shape)[:-1]
        self.dtype = array.dtype
        chunks = getattr(array, "chunks", None)
        self.chunks = chunks[:-1] if isinstance(chunks, tuple) and len(chunks) == len(self.shape) + 1 else None

    def __getitem__(self, index: Any) -> np.ndarray:
        return np.asarray(self.array[index])[..., self.channel]


def channel_ranges(plane: LazyPlane | np.ndarray, normalize: Normalize = "minmax") -> ChannelRanges:
    """The scaling of every channel of a whole image on its own (:class:`ChannelRanges`), block by block.

    Each channel is read once (:func:`intensity_range` of that channel; a grey image has one).
    """
    if isinstance(plane, np.ndarray):
        plane = LazyPlane(plane, any_channels=True)
    if len(plane.shape) == 2:
        return ChannelRanges((intensity_range(plane, normalize),))
    return ChannelRanges(
        tuple(
            intensity_range(LazyPlane(_OneChannel(plane.array, c), plane.lead), normalize)
            for c in range(plane.shape[-1])
        )
    )


def _percentiles(plane: LazyPlane, percents: tuple[float, float], low: float, high: float) -> tuple[float, float]:
    """np.percentile (linear) of the whole image's float32 values, from histograms of its blocks."""
    n = 0
    integer = np.issubdtype(plane.dtype, np.integer) and high - low < 2**24
    bins = int(high - low) + 1 if integer else 1 << 20
    counts = np.zeros(bins, dtype=np.int64)
    width = (high - low) / bins if not integer else 1.0
    for block in plane.row_blocks():
        data = _colour_planes(block).astype(np.float64).ravel()
        n += data.size
        index = (data - low) if integer else np.floor((data - low) / width) if width > 0 else np.zeros_like(data)
        counts += np.bincount(np.clip(index.astype(np.int64), 0, bins - 1), minlength=bins)
    cumulative = np.cumsum(counts)

    def order_statistic(k: int) -> float:
        b = int(np.searchsorted(cumulative, k + 1))
        if integer:
            return low + b
        before = int(cumulative[b - 1]) if b else 0
        inside = int(counts[b])
        # Values inside the bin are spread uniformly: the bin's resolution is the error bound.
        return low + width * (b + (k - before + 0.5) / max(inside, 1))

    values = []
    for q in percents:
        position = q / 100.0 * (n - 1)
        below = math.floor(position)
        first = order_statistic(below)
        second = order_statistic(min(below + 1, n - 1))
        values.append(float(np.float32(first + (second - first) * (position - below))))
    return values[0], values[1]


# ---------------------------------------------------------------------------------------------- outputs
#: Name of the lock file of a partial Zarr output (in its state folder).
LOCK_NAME = "lock.json"


def process_alive(pid: Any) -> bool:
    """Whether process ``pid`` of this computer still runs (unknown: False, so a lock never blocks for ever)."""
    try:
        pid = int(pid)
    except (TypeError, ValueError):
        return False
    if pid <= 0:
        return False
    if os.name == "nt":  # pragma: no cover (os.kill would end the process on Windows: locks never block there)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists, as another user's
        return True
    return True


def remove_tree(path: Path) -> None:
    """Delete an output folder (or file) that may be half-written."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def replace_tree(source: Path, target: Path) -> None:
    """Move a finished folder ``source`` to ``target`` with ``os.replace``; an existing ``target`` is replaced."""
    if target.exists():
        old = target.with_name(f".{target.name}.old{os.getpid()}")
        remove_tree(old)
        os.replace(target, old)
        os.replace(source, target)
        remove_tree(old)
    else:
        os.replace(source, target)


def zarr_output_info(path: str | Path) -> dict[str, Any] | None:
    """Our metadata of a complete Zarr output (``None`` if ``path`` is not one)."""
    path = Path(path)
    try:
        import zarr

        attrs = dict(zarr.open_group(str(path), mode="r").attrs)
    except Exception:
        return None
    info = attrs.get(ATTRS_KEY)
    return info if isinstance(info, dict) and info.get("complete") else None


class ZarrOutput:
    """An OME-Zarr image written chunk row by chunk row under ``<path>.partial``, resumable, renamed when done.

    Parameters
    ----------
    path : path ending in ``.zarr``
        Final name.
    shape : (N, H, W) or (N, C, H, W)
        Planes first; ``N`` planes of ``(H, W)`` (labels, uncertainty) or of ``(C, H, W)`` (probabilities).
    dtype : numpy dtype
    chunks : int
        Side of the square chunks of each plane.
    job : dict
        JSON-safe description of what is computed (model hash, input, settings). A partial output made by
        another job is discarded; one made by the same job is resumed.
    axes : names of the dimensions, e.g. ``("z", "y", "x")``; the plane axis is dropped for single images.
    """

    def __init__(
        self,
        path: str | Path,
        shape: tuple[int, ...],
        dtype: Any,
        *,
        chunks: int,
        job: dict[str, Any],
        single: bool,
        channel_axis: bool = False,
    ):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + PARTIAL_SUFFIX)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.chunks = int(chunks)
        self.job = job
        self.single = single
        self.channel_axis = channel_axis
        self._array: Any = None

    # -------------------------------------------------------------- layout
    @property
    def array_shape(self) -> tuple[int, ...]:
        return self.shape[1:] if self.single else self.shape

    def _array_chunks(self) -> tuple[int, ...]:
        spatial = (min(self.chunks, self.shape[-2]), min(self.chunks, self.shape[-1]))
        channels = (self.shape[1],) if self.channel_axis else ()
        return (*(() if self.single else (1,)), *channels, *spatial)

    def _axes(self) -> list[dict[str, str]]:
        axes = [] if self.single else [{"name": "z", "type": "space"}]
        if self.channel_axis:
            axes.append({"name": "c", "type": "channel"})
        return [*axes, {"name": "y", "type": "space"}, {"name": "x", "type": "space"}]

    @property
    def n_chunk_rows(self) -> int:
        return -(-self.shape[-2] // self.chunks)

    @property
    def _state(self) -> Path:
        return self.partial / _STATE_DIR

    # -------------------------------------------------------------- lifecycle
    def open(self, *, create: bool = True) -> ZarrOutput:
        """Open ``<path>.partial`` for writing: resume it if it belongs to the same job, else start afresh."""
        import zarr

        job_file = self._state / "job.json"
        if create and self.partial.exists():
            self._lock()  # before anything is resumed or discarded: another live run may be writing it
        if self.partial.exists():
            try:
                same = json.loads(job_file.read_text()) == json.loads(json.dumps(self.job))
            except (OSError, ValueError):
                same = False
            if same:
                self._array = zarr.open_array(str(self.partial / "0"), mode="r+")
                return self
            if not create:
                raise InputError(f"'{self.partial}' belongs to another run.")
            remove_tree(self.partial)
        if not create:
            raise InputError(f"'{self.partial}' does not exist.")
        self.partial.parent.mkdir(parents=True, exist_ok=True)
        group = zarr.open_group(str(self.partial), mode="w", zarr_format=2)
        ndim = len(self.array_shape)
        group.attrs["multiscales"] = [
            {
                "version": "0.4",
                "name": self.path.name[: -len(".zarr")] if self.path.name.endswith(".zarr") else self.path.name,
                "axes": self._axes(),
                "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0] * ndim}]}],
            }
        ]
        group.attrs[ATTRS_KEY] = {"complete": False, **self.job}
        self._array = group.create_array(
            "0", shape=self.array_shape, chunks=self._array_chunks(), dtype=self.dtype, fill_value=0
        )
        (self._state / "done").mkdir(parents=True, exist_ok=True)
        write_text(job_file, json.dumps(self.job, sort_keys=True), overwrite=True)
        self._lock()
        return self

    def _lock(self) -> None:
        """Hold ``<path>.partial``'s lock for this process (kept until :meth:`finish`; a failed run keeps it and its partial output, to resume).

        A lock of a process that has ended (same computer) is taken over, so an interrupted run resumes.
        Workers of a cluster run write bands with ``open(create=False)`` and take no lock.

        Raises
        ------
        InputError
            Another running process writes this output (named, with what to do).
        """
        lock = self._state / LOCK_NAME
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(3):
            try:
                lock.parent.mkdir(parents=True, exist_ok=True)
                handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    holder = json.loads(lock.read_text())
                    holder = holder if isinstance(holder, dict) else {}
                except (OSError, ValueError):
                    holder = {}
                if holder == me:
                    return
                if holder.get("host") == me["host"] and not process_alive(holder.get("pid")):
                    lock.unlink(missing_ok=True)  # left by a run that ended without finishing: take it over
                    continue
                if not holder:  # being written this instant, or unreadable: look again
                    continue
                raise InputError(
                    f"'{self.path.name}' is being written by another run (process {holder.get('pid')} on "
                    f"{holder.get('host')}). Wait for that run to finish; if it has ended, delete '{lock}'."
                ) from None
            with os.fdopen(handle, "w") as stream:
                json.dump(me, stream)
            return

    def done_rows(self, plane: int) -> set[int]:
        """Chunk rows of ``plane`` already written and intact on disk.

        A chunk row's marker lists the size and sha256 of each of its chunk files; a row whose files no longer
        match (torn by a power loss, truncated, edited) loses its marker and is computed again. Markers of
        older versions (empty files) are trusted as before.
        """
        folder = self._state / "done"
        prefix = f"{plane}_"
        if not folder.is_dir():
            return set()
        rows = set()
        for name in os.listdir(folder):
            if not name.startswith(prefix) or not name[len(prefix) :].isdigit():
                continue
            if self._chunks_intact(folder / name):
                rows.add(int(name[len(prefix) :]))
            else:
                (folder / name).unlink(missing_ok=True)
        return rows

    def _chunk_files(self, plane: int, chunk_row: int) -> list[Path]:
        """The chunk files of one chunk row of ``plane`` (those zarr skipped as all zero do not exist)."""
        separator = getattr(getattr(self._array, "metadata", None), "dimension_separator", None) or "."
        lead = ([] if self.single else [plane]) + ([0] if self.channel_axis else [])
        n_cols = -(-self.shape[-1] // self.chunks)
        folder = self.partial / "0"
        return [folder / separator.join(str(i) for i in (*lead, chunk_row, col)) for col in range(n_cols)]

    def _chunks_intact(self, marker: Path) -> bool:
        try:
            text = marker.read_text()
            if not text.strip():
                return True  # written before chunk records existed
            record = json.loads(text)
            for name, (size, digest) in record.items():
                chunk = self.partial / "0" / name
                if chunk.stat().st_size != int(size) or file_sha256(chunk) != digest:
                    return False
        except (OSError, ValueError, TypeError, AttributeError):
            return False
        return True

    def write_rows(self, plane: int, top: int, block: np.ndarray) -> None:
        """Write ``block`` ((h, W) or (C, h, W)) at row ``top`` of ``plane``; ``top`` is a chunk-row boundary."""
        if top % self.chunks:
            raise ValueError(f"row {top} is not at a chunk boundary ({self.chunks})")
        rows = slice(top, top + block.shape[-2])
        index = (rows,) if self.single else (plane, rows)
        if self.channel_axis:
            index = (*index[:-1], slice(None), rows)
        self._array[index] = block.astype(self.dtype, copy=False)
        end_row = -(-rows.stop // self.chunks) if rows.stop == self.shape[-2] else rows.stop // self.chunks
        for chunk_row in range(top // self.chunks, end_row):
            record = {}
            for chunk in self._chunk_files(plane, chunk_row):
                if chunk.exists():  # the data reaches the disk before its marker says it is there
                    fsync_file(chunk)
                    record[chunk.name] = [chunk.stat().st_size, file_sha256(chunk)]
            write_text(self._state / "done" / f"{plane}_{chunk_row}", json.dumps(record), overwrite=True)

    def finish(self, extra: dict[str, Any] | None = None) -> Path:
        """Mark the image complete and move it to its final name (replacing an older one)."""
        import zarr

        group = zarr.open_group(str(self.partial), mode="r+")
        group.attrs[ATTRS_KEY] = {**self.job, **(extra or {}), "complete": True}
        remove_tree(self._state)
        replace_tree(self.partial, self.path)
        return self.path


def write_tiled_tiff(path: str | Path, source: Any, *, tile: int = 512) -> Path:
    """Copy a Zarr array ``(H, W)`` or ``(N, H, W)`` into a tiled, zlib-compressed BigTIFF, one tile at a time.

    Written to a temporary name and renamed (:func:`~.atomic.write_tif`): memory stays at one tile.
    """
    path = Path(path)
    shape = tuple(source.shape)
    planes = shape[:-2] if len(shape) > 2 else ()
    height, width = shape[-2:]

    def tiles() -> Iterator[np.ndarray]:
        for lead in np.ndindex(*planes) if planes else [()]:
            for top in range(0, height, tile):
                for left in range(0, width, tile):
                    block = np.asarray(source[(*lead, slice(top, top + tile), slice(left, left + tile))])
                    if block.shape != (tile, tile):  # edge tiles are padded to the full tile size
                        padded = np.zeros((tile, tile), dtype=block.dtype)
                        padded[: block.shape[0], : block.shape[1]] = block
                        block = padded
                    yield block

    return write_tif(
        path, tiles(), overwrite=True, shape=shape, dtype=source.dtype, tile=(tile, tile), bigtiff=True,
        compression="zlib", photometric="minisblack",
    )  # fmt: skip
