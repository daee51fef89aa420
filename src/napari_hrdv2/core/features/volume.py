"""Volume features: the mean of the HR-Dv2 features of the XY, XZ and YZ planes through each voxel.

With ``FeatureConfig(volume=True)`` a ``(Z, Y, X)`` or ``(Z, Y, X, 3|4)`` stack is a volume. The feature of
voxel ``(z, y, x)`` is

    F(z, y, x) = ( F_xy[z](y, x) + F_xz[y](z, x) + F_yz[x](z, y) ) / 3

where ``F_xy[z]`` is the ordinary HR-Dv2 encoding of the XY plane ``volume[z]``, ``F_xz[y]`` that of the XZ
plane ``volume[:, y]`` (rows z, columns x) and ``F_yz[x]`` that of the YZ plane ``volume[:, :, x]`` (rows z,
columns y): the same transforms, tiles and backbone as a 2D image. All planes of all orientations are scaled
with one intensity scaling, the whole volume's (:func:`volume_intensity_range`).

**Anisotropic voxels.** With ``spacing=(dz, dy, dx)`` the XZ (YZ) planes are resampled along z to square
pixels of side ``dx`` (``dy``), linearly, before encoding, and their features are interpolated back to the
``Z`` voxel rows, linearly, after. Both are linear maps whose weights sum to 1, so a linear map of the
features (a classifier's logits) still commutes with everything and stays exact. XY planes are encoded as
they are (like any 2D image; ``dy != dx`` is not corrected).

**Never materialised.** Like :meth:`Encoding.project`, :meth:`VolumeEncoder.iter_project` applies a linear
map on each plane's low-resolution maps, upsamples only its ``n_out`` channels and averages the three
orientations, so a volume's logits cost one encoding per plane per orientation and
``n_out x Z x Y x X`` float32 of memory (plus one plane's encoding); the ``C``-channel features of the
volume are never built. :meth:`VolumeEncoder.iter_sample` reads the exact features of a few voxels
(training), encoding only the planes through them.

Axis convention: volumes ``(Z, Y, X[, C])``; projections ``(n_out, Z, Y, X)``; a plane's features ``(C, Y, X)``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import FeatureConfig
from ..errors import InputError
from ..files.lazy import IntensityRange, LazyPlane, intensity_range
from ..progress import Progress, relabel, run_steps, within
from .cache import DEFAULT_CACHE_BYTES, EncodingCache, fingerprint

if TYPE_CHECKING:  # pragma: no cover
    from .encoding import Encoding, Featurizer

#: The plane orientations, by the axis of the volume they cut: 0 = XY (planes z), 1 = XZ (planes y), 2 = YZ (x).
ORIENTATIONS: tuple[str, ...] = ("XY", "XZ", "YZ")
#: Bytes of the slab of XZ / YZ planes read at once from a (lazy) volume.
SLAB_BYTES = 64 * 2**20


def volume_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    """``(Z, Y, X)`` of a volume of array shape ``(Z, Y, X)`` or ``(Z, Y, X, 3|4)``, or an :class:`InputError`."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 3 and shape[-1] in (3, 4):
        raise InputError(
            f"An array of shape {shape} looks like one colour image (H, W, {shape[-1]}); volume=True needs a "
            "(Z, Y, X) or (Z, Y, X, 3|4) stack. Use volume=False for 2D images."
        )
    if len(shape) == 4 and shape[-1] not in (3, 4):
        raise InputError(
            f"A volume of shape {shape} has {shape[-1]} channels; volume=True takes grey (Z, Y, X) or colour "
            "(Z, Y, X, 3|4) volumes: choose one or three channels first."
        )
    if len(shape) not in (3, 4):
        raise InputError(
            f"volume=True needs a (Z, Y, X) or (Z, Y, X, 3|4) stack, got shape {shape}. A 2D image has no XZ and YZ "
            "planes: use volume=False."
        )
    return shape[0], shape[1], shape[2]


def check_spacing(spacing: Sequence[float] | None) -> tuple[float, float, float] | None:
    """``(dz, dy, dx)`` voxel sizes as positive floats (``None``: isotropic), or an :class:`InputError`."""
    if spacing is None:
        return None
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise InputError(f"spacing must be three voxel sizes (dz, dy, dx), got {spacing!r}.") from None
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise InputError(f"spacing must be three positive voxel sizes (dz, dy, dx), got {spacing!r}.")
    return values


class VolumeRows:
    """A volume ``(Z, Y, X[, C])`` seen as one tall image ``(Z * Y, X[, C])`` (its planes one under the other).

    Only what is sliced is read: :func:`volume_intensity_range` scans a lazy volume with it block by block.
    """

    def __init__(self, volume: Any):
        self.volume = volume
        shape = tuple(int(s) for s in volume.shape)
        self._height = shape[1]
        self.shape = (shape[0] * shape[1], *shape[2:])
        self.dtype = np.dtype(volume.dtype)

    def __getitem__(self, index: tuple[slice, slice]) -> np.ndarray:
        rows, cols = index
        start, stop, _ = rows.indices(self.shape[0])
        pieces = []
        for z in range(start // self._height, (max(stop, start + 1) - 1) // self._height + 1):
            top = max(start, z * self._height) - z * self._height
            bottom = min(stop, (z + 1) * self._height) - z * self._height
            pieces.append(np.asarray(self.volume[z, top:bottom, cols]))
        return np.concatenate(pieces) if len(pieces) > 1 else pieces[0]


def volume_intensity_range(volume: Any, normalize: str = "minmax") -> IntensityRange:
    """The intensity scaling of a whole volume (all its voxels together), read plane block by plane block.

    The same as :func:`~..files.lazy.intensity_range` of the volume's planes put one under the other; every plane
    of every orientation is scaled with it.
    """
    return intensity_range(LazyPlane(VolumeRows(volume)), normalize)


def linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear interpolation of ``n_in`` samples at ``n_out`` evenly spaced pixel centres (edges clamped).

    Returns ``(low, high, weight)`` ``(n_out,)``: output ``i`` is ``(1 - weight[i]) * a[low[i]] + weight[i] *
    a[high[i]]``. The weights of every output sum to 1.
    """
    position = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0, n_in - 1)
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, n_in - 1)
    return low, high, (position - low).astype(np.float32)


def interpolate_axis(array: np.ndarray, taps: tuple[np.ndarray, np.ndarray, np.ndarray], axis: int) -> np.ndarray:
    """``array`` interpolated along ``axis`` with :func:`linear_taps` ``taps``: float32."""
    low, high, weight = taps
    shape = [1] * array.ndim
    shape[axis] = weight.size
    weight = weight.reshape(shape)
    first = np.take(array, low, axis=axis).astype(np.float32, copy=False)
    second = np.take(array, high, axis=axis).astype(np.float32, copy=False)
    return first * (np.float32(1.0) - weight) + second * weight


def _weights_key(weight: np.ndarray, bias: np.ndarray | None) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for array in (weight, bias):
        if array is not None:
            array = np.ascontiguousarray(array, dtype=np.float32)
            digest.update(repr(array.shape).encode())
            digest.update(array.tobytes())
    return digest.hexdigest()


class VolumeEncoder:
    """Encodes the XY, XZ and YZ planes of a volume on demand (cached) and combines them exactly.

    Parameters
    ----------
    volume : (Z, Y, X) or (Z, Y, X, 3|4) array-like
        numpy, memory-mapped, Zarr or dask: planes are read when needed (XZ / YZ planes in slabs).
    config : FeatureConfig or Featurizer
        The volume's feature settings (``volume=True``; a ``volume=False`` config is taken as its volume
        version). A Featurizer lends its backbone.
    spacing : (dz, dy, dx) or None
        Voxel sizes (any unit); ``None`` = isotropic. XZ / YZ planes are resampled along z to square pixels.
    cache : EncodingCache, optional
        Where plane encodings are kept (default a private one of ``max_bytes``).
    scaling : IntensityRange, optional
        The volume's intensity scaling (default computed once over the whole volume).
    """

    def __init__(
        self,
        volume: Any,
        config: FeatureConfig | Featurizer,
        *,
        spacing: Sequence[float] | None = None,
        cache: EncodingCache | None = None,
        max_bytes: int = DEFAULT_CACHE_BYTES,
        scaling: IntensityRange | None = None,
    ):
        from .encoding import Featurizer

        if not (hasattr(volume, "shape") and hasattr(volume, "dtype")):
            volume = np.asarray(volume)
        self.volume = volume
        self.shape = volume_shape(volume.shape)
        self.spacing = check_spacing(spacing)
        given = config if isinstance(config, FeatureConfig) else config.config
        #: The volume's settings (``volume=True``) and those of each of its planes (``volume=False``).
        self.config = given.replace(volume=True)
        self.plane_config = given.replace(volume=False)
        self.cache = cache if cache is not None else EncodingCache(max_bytes)
        if isinstance(config, FeatureConfig):
            self.featurizer = self.cache.featurizer(self.plane_config)
        else:
            self.featurizer = Featurizer(self.plane_config, backbone=config.backbone)
        self._scaling = scaling
        self._n_features: int | None = None
        self._identity: tuple[np.ndarray | None, str | None] | None = None
        self._projection: tuple[str, np.ndarray] | None = None
        n_rows = [self.shape[0], self.shape[0], self.shape[0]]
        if self.spacing is not None:
            dz, dy, dx = self.spacing
            n_rows[1] = max(1, round(self.shape[0] * dz / dx))
            n_rows[2] = max(1, round(self.shape[0] * dz / dy))
        #: Rows (along z) of the encoded XY, XZ and YZ planes (XZ / YZ: after resampling to square pixels).
        self.encoded_rows = tuple(n_rows)

    # ------------------------------------------------------------------ geometry
    @property
    def scaling(self) -> IntensityRange:
        """The whole volume's intensity scaling (computed on first use)."""
        if self._scaling is None:
            self._scaling = volume_intensity_range(self.volume, self.config.normalize)
        return self._scaling

    def n_planes(self, axis: int) -> int:
        """Planes of orientation ``axis`` (0 = XY, 1 = XZ, 2 = YZ)."""
        return self.shape[axis]

    def check_sides(self) -> None:
        """Raise :class:`InputError` if a plane of some orientation is smaller than one patch of the backbone."""
        patch = self.featurizer.patch_size
        z, y, x = self.shape
        sides = {"XY": (y, x), "XZ": (self.encoded_rows[1], x), "YZ": (self.encoded_rows[2], y)}
        small = {name: side for name, side in sides.items() if min(side) < patch}
        if small:
            listed = ", ".join(f"{name} {h}x{w}" for name, (h, w) in small.items())
            raise InputError(
                f"The volume {z}x{y}x{x} has planes smaller than one {patch}-pixel patch ({listed}); volume=True "
                f"needs at least {patch} voxels along every axis (after resampling to the spacing). Use volume=False "
                "for thin stacks."
            )

    def _read(self, axis: int, indices: slice) -> np.ndarray:
        """Raw planes ``indices`` of orientation ``axis``, plane-first: (n, rows, cols[, C])."""
        selection: list[Any] = [slice(None)] * 3
        selection[axis] = indices
        block = np.asarray(self.volume[tuple(selection)])
        block = block.astype(np.uint8) if block.dtype == bool else block
        return np.moveaxis(block, axis, 0)

    def prepare(self, raw: np.ndarray, axis: int) -> np.ndarray:
        """One raw plane of orientation ``axis`` scaled with the volume's range (and resampled along z): float32."""
        scaled = self.scaling.apply(raw)
        if axis and self.encoded_rows[axis] != self.shape[0]:
            scaled = interpolate_axis(scaled, linear_taps(self.shape[0], self.encoded_rows[axis]), 0)
        return np.ascontiguousarray(scaled, dtype=np.float32)

    def plane_image(self, axis: int, index: int) -> np.ndarray:
        """The image encoded for plane ``index`` of orientation ``axis``: scaled (and resampled), float32."""
        if not 0 <= index < self.shape[axis]:
            raise InputError(f"{ORIENTATIONS[axis]} plane {index} does not exist; there are {self.shape[axis]}.")
        return self.prepare(self._read(axis, slice(index, index + 1))[0], axis)

    # ------------------------------------------------------------------ encodings
    def iter_encode_image(self, image: np.ndarray, message: str = "encoding") -> Generator[Progress, None, Encoding]:
        """Cached encoding of one prepared plane image (:meth:`plane_image`); yields progress while computing."""
        key = (f"prescaled:{fingerprint(image)}", self.plane_config)
        encoding = self.cache.get(key)
        if encoding is None:
            steps = self.featurizer.iter_encode(image, with_attention=False, prescaled=True)
            encoding = yield from relabel(steps, lambda update: Progress(update.done, update.total, message))
            self.cache.put(key, encoding)
        self._n_features = encoding.n_features
        return encoding

    def iter_plane(self, axis: int, index: int) -> Generator[Progress, None, Encoding]:
        """Encoding of plane ``index`` of orientation ``axis`` (0 = XY, 1 = XZ, 2 = YZ), cached."""
        message = f"encoding {ORIENTATIONS[axis]} plane {index + 1}/{self.shape[axis]}"
        return (yield from self.iter_encode_image(self.plane_image(axis, index), message))

    def plane(self, axis: int, index: int) -> Encoding:
        """:meth:`iter_plane` without progress."""
        return run_steps(self.iter_plane(axis, index))

    def iter_encode_planes(self, planes: Sequence[tuple[int, int]]) -> Generator[Progress, None, None]:
        """Encode ``planes`` ((axis, index) pairs) into the cache, with progress over all of them."""
        for i, (axis, index) in enumerate(planes):
            yield from within(self.iter_plane(axis, index), i, 1, total=len(planes))

    @property
    def n_features(self) -> int:
        """Features per voxel (the backbone's, of the chosen facet)."""
        if self._n_features is None:
            self.plane(0, 0)
        return int(self._n_features)

    @property
    def backbone_identity(self) -> tuple[np.ndarray | None, str | None]:
        """(fingerprint, family) of the backbone, as its encodings record them."""
        if self._identity is None:
            from ..backbone.identity import backbone_family_of, backbone_fingerprint

            backbone = self.featurizer.backbone
            self._identity = (backbone_fingerprint(backbone.model), backbone_family_of(backbone))
        return self._identity

    # ------------------------------------------------------------------ voxels
    def _across(self, encoding: Encoding, axis: int, z: int, positions: np.ndarray) -> np.ndarray:
        """Features ``(N, C)`` at row ``z`` (a voxel row, interpolated if resampled), columns ``positions``."""
        if self.encoded_rows[axis] == self.shape[0]:
            return encoding.sample(np.full(positions.shape, z), positions)
        low, high, weight = (t[z] for t in linear_taps(self.encoded_rows[axis], self.shape[0]))
        first = encoding.sample(np.full(positions.shape, low), positions)
        second = encoding.sample(np.full(positions.shape, high), positions)
        return first * (np.float32(1.0) - weight) + second * weight

    def iter_sample(self, z: int, rows: np.ndarray, cols: np.ndarray) -> Generator[Progress, None, np.ndarray]:
        """Exact volume features ``(N, C)`` float32 of voxels ``(z, rows[i], cols[i])``.

        Encodes (or takes from the cache) XY plane ``z``, the XZ planes of ``rows`` and the YZ planes of ``cols``.
        """
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        cols = np.asarray(cols, dtype=np.int64).reshape(-1)
        _, height, width = self.shape
        if rows.shape != cols.shape:
            raise InputError(f"rows and cols must have the same length, got {rows.shape} and {cols.shape}.")
        if rows.size and (rows.min() < 0 or rows.max() >= height or cols.min() < 0 or cols.max() >= width):
            raise InputError(f"Voxel coordinates must lie inside the {height}x{width} planes.")
        total = (yield from self.iter_plane(0, z)).sample(rows, cols)
        for axis, along, across in ((1, rows, cols), (2, cols, rows)):
            for index in np.unique(along):
                picked = np.flatnonzero(along == index)
                encoding = yield from self.iter_plane(axis, int(index))
                total[picked] += self._across(encoding, axis, z, across[picked])
        return total / np.float32(3.0)

    def features(self, z: int) -> np.ndarray:
        """The dense volume features of plane ``z``, ``(C, Y, X)`` float32: every XZ and YZ plane is encoded.

        For small volumes and tests; segmentation uses :meth:`iter_project` and :meth:`iter_sample`.
        """
        _, height, width = self.shape
        total = self.plane(0, z).features()
        for axis, count in ((1, height), (2, width)):
            for index in range(count):
                dense = self.plane(axis, index).features()  # (C, rows, cols)
                if self.encoded_rows[axis] != self.shape[0]:
                    dense = interpolate_axis(dense, linear_taps(self.encoded_rows[axis], self.shape[0]), 1)
                if axis == 1:
                    total[:, index, :] += dense[:, z, :]
                else:
                    total[:, :, index] += dense[:, z, :]
        return total / np.float32(3.0)

    # ------------------------------------------------------------------ linear maps
    def iter_project(
        self, weight: np.ndarray, bias: np.ndarray | None = None, *, out: np.ndarray | None = None
    ) -> Generator[Progress, None, np.ndarray]:
        """``weight @ F + bias`` over the whole volume, ``(n_out, Z, Y, X)`` float32, without materialising ``F``.

        Each plane of each orientation is encoded (or taken from the cache), projected on its low-resolution
        maps (:meth:`Encoding.project`), brought back to voxel rows and added; the sum is divided by 3 and the
        bias added once. Memory: ``out`` (``n_out * Z * Y * X * 4`` bytes; pass a ``np.memmap`` to keep it on
        disk) plus one plane's encoding and one slab of planes. The latest result (``out`` too) is kept for
        :meth:`projection`.
        """
        weight = np.asarray(weight, dtype=np.float32)
        key = _weights_key(weight, bias)
        if self._projection is not None and self._projection[0] == key and out is None:
            return self._projection[1]
        n_out, shape = weight.shape[0], self.shape
        if out is None:
            out = np.zeros((n_out, *shape), dtype=np.float32)
        elif tuple(out.shape) != (n_out, *shape):
            raise InputError(f"out must have shape {(n_out, *shape)}, got {tuple(out.shape)}.")
        else:
            out[...] = 0
        total, done = sum(shape), 0
        for axis in range(3):
            back = linear_taps(self.encoded_rows[axis], shape[0]) if self.encoded_rows[axis] != shape[0] else None
            for start, raw_slab in self._slabs(axis):
                for offset, raw in enumerate(raw_slab):
                    index = start + offset
                    message = f"{ORIENTATIONS[axis]} plane {index + 1}/{shape[axis]}"
                    steps = self.iter_encode_image(self.prepare(raw, axis), message)
                    encoding = yield from within(steps, done, 1, total=total, message=message)
                    projected = encoding.project(weight)  # (n_out, rows, cols)
                    if back is not None:
                        projected = interpolate_axis(projected, back, 1)
                    if axis == 0:
                        out[:, index] += projected
                    elif axis == 1:
                        out[:, :, index, :] += projected
                    else:
                        out[:, :, :, index] += projected
                    done += 1
                    yield Progress(done, total, message)
        out *= np.float32(1.0 / 3.0)
        if bias is not None:
            out += np.asarray(bias, dtype=np.float32).reshape(-1, 1, 1, 1)
        self._projection = (key, out)
        return out

    def _slabs(self, axis: int) -> Generator[tuple[int, np.ndarray], None, None]:
        """``(first index, raw planes (n, rows, cols[, C]))`` of orientation ``axis``, about :data:`SLAB_BYTES` each."""
        plane_bytes = max(1, int(np.prod(self.volume.shape, dtype=np.int64)) // self.shape[axis])
        step = max(1, SLAB_BYTES // (plane_bytes * np.dtype(self.volume.dtype).itemsize))
        for start in range(0, self.shape[axis], step):
            yield start, self._read(axis, slice(start, min(start + step, self.shape[axis])))

    def projection(self, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
        """:meth:`iter_project` without progress (the latest result is reused for the same weights)."""
        return run_steps(self.iter_project(weight, bias))

    def plane_source(self, z: int) -> VolumePlane:
        """XY plane ``z`` as a feature source (:class:`VolumePlane`)."""
        return VolumePlane(self, z)


class VolumePlane:
    """The volume features of one XY plane, used like an :class:`Encoding` (``sample``, ``project``, ``features``).

    A :class:`~..segmentation.segmenter.LinearSegmenter` trains on and predicts it unchanged: ``sample`` reads
    the exact mean of the three orientations at voxels, ``project`` is plane ``z`` of the volume's projection
    (:meth:`VolumeEncoder.iter_project`, computed once for all planes). No image is kept (hybrid features,
    whose classical filters are 2D, do not apply).
    """

    image = None

    def __init__(self, encoder: VolumeEncoder, z: int):
        if not 0 <= z < encoder.shape[0]:
            raise InputError(f"Plane {z} does not exist; the volume has {encoder.shape[0]} planes.")
        self.encoder = encoder
        self.z = int(z)
        self.config = encoder.config
        self.backbone_fingerprint, self.backbone_family = encoder.backbone_identity

    @property
    def shape(self) -> tuple[int, int]:
        """(Y, X) of the plane."""
        return self.encoder.shape[1], self.encoder.shape[2]

    @property
    def n_features(self) -> int:
        return self.encoder.n_features

    def sample(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Exact volume features ``(N, C)`` of voxels ``(z, rows[i], cols[i])``."""
        return run_steps(self.encoder.iter_sample(self.z, rows, cols))

    def project(self, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
        """``weight @ F + bias`` on this plane: ``(n_out, Y, X)`` float32 (the volume's projection, cached)."""
        weight = np.asarray(weight, dtype=np.float32)
        if weight.ndim != 2 or weight.shape[1] != self.n_features:
            raise InputError(f"weight must have shape (n_out, {self.n_features}), got {weight.shape}.")
        return np.array(self.encoder.projection(weight, bias)[:, self.z])

    def features(self) -> np.ndarray:
        """Dense ``(C, Y, X)`` volume features of this plane (:meth:`VolumeEncoder.features`)."""
        return self.encoder.features(self.z)
