"""A thread-safe, memory-bounded LRU cache of encodings, keyed by image content and feature settings.

Shared by the napari widgets (one per viewer) and :class:`~.stack.StackEncoder`, so that a plane
is encoded once however many times it is trained on or predicted.
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from collections import OrderedDict
from collections.abc import Generator
from typing import TYPE_CHECKING

import numpy as np

from ..config import FeatureConfig
from ..progress import Progress

if TYPE_CHECKING:  # pragma: no cover
    from ..files.lazy import ChannelRanges, IntensityRange, LazyPlane
    from .encoding import Encoding, Featurizer, PartialEncoding

#: Default memory budget of a cache (low-resolution maps only).
DEFAULT_CACHE_BYTES = 2 * 2**30


def fingerprint(plane: np.ndarray) -> str:
    """Content hash of an image plane (shape, dtype and bytes)."""
    plane = np.ascontiguousarray(plane)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr((plane.shape, plane.dtype.str)).encode())
    digest.update(memoryview(plane).cast("B"))
    return digest.hexdigest()


class EncodingCache:
    """Thread-safe LRU cache of :class:`Encoding` objects keyed by (plane content, FeatureConfig).

    Keys use the content of the plane, so the same image in two layers (or an unchanged plane
    after a layer was renamed) is encoded once; evicts least recently used encodings beyond
    ``max_bytes``.
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES):
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[tuple[str, FeatureConfig], Encoding] = OrderedDict()
        self._lock = threading.Lock()
        self._featurizers: dict[FeatureConfig, Featurizer] = {}
        # id(array) -> (weak reference to the array, {(plane index, normalize): IntensityRange})
        self._scalings: dict[int, tuple[weakref.ref, dict[tuple, IntensityRange]]] = {}

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(encoding.nbytes for encoding in self._items.values())

    def get(self, key: tuple[str, FeatureConfig]) -> Encoding | None:
        with self._lock:
            encoding = self._items.get(key)
            if encoding is not None:
                self._items.move_to_end(key)
            return encoding

    def put(self, key: tuple[str, FeatureConfig], encoding: Encoding) -> None:
        with self._lock:
            self._items[key] = encoding
            self._items.move_to_end(key)
            total = sum(e.nbytes for e in self._items.values())
            while total > self.max_bytes and len(self._items) > 1:
                _, evicted = self._items.popitem(last=False)
                total -= evicted.nbytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._scalings.clear()
            self._featurizers.clear()

    def scaling(self, plane: LazyPlane, normalize: str, *, separate: bool = False) -> IntensityRange | ChannelRanges:
        """The intensity scaling of a whole (lazy) plane, computed once per array object and plane.

        A huge image's scaling takes a pass over the whole plane; "Predict current view" needs it for every
        view. The result is kept while ``plane.array`` (e.g. a napari layer's dask or Zarr array) is alive,
        keyed by that object, so a layer whose data is replaced gets a new scaling. Arrays that cannot be
        referenced weakly are not cached. ``separate`` (``channel_mode="separate"``): every channel's own
        scaling (:func:`~..files.lazy.channel_ranges`).
        """
        from ..files.lazy import channel_ranges, intensity_range

        key = (plane.lead, plane.shape, plane.dtype.str, normalize, separate)
        with self._lock:
            entry = self._scalings.get(id(plane.array))
            if entry is not None and entry[0]() is plane.array and key in entry[1]:
                return entry[1][key]
        scaling = channel_ranges(plane, normalize) if separate else intensity_range(plane, normalize)
        try:
            reference = weakref.ref(plane.array)
        except TypeError:
            return scaling
        with self._lock:
            entry = self._scalings.get(id(plane.array))
            if entry is None or entry[0]() is not plane.array:
                # Drop entries of arrays that are gone (their ids may be reused).
                for stale in [k for k, (ref, _) in self._scalings.items() if ref() is None]:
                    del self._scalings[stale]
                entry = self._scalings[id(plane.array)] = (reference, {})
            entry[1][key] = scaling
        return scaling

    def featurizer(self, config: FeatureConfig) -> Featurizer:
        """One :class:`Featurizer` per config (the backbone itself is cached by ``load_backbone``)."""
        from .encoding import Featurizer

        with self._lock:
            featurizer = self._featurizers.get(config)
            if featurizer is None:
                featurizer = self._featurizers[config] = Featurizer(config)
            return featurizer

    def iter_encode(
        self, plane: np.ndarray, config: FeatureConfig, *, progressive: bool = False
    ) -> Generator[Progress | PartialEncoding, None, Encoding]:
        """Cached encoding of one plane; yields the encoder's :class:`Progress` while computing.

        With ``progressive`` it also yields the :class:`~.encoding.PartialEncoding` items of
        :meth:`Featurizer.iter_encode` (none when the plane is cached).
        """
        cached = self.cached(plane, config)
        if cached is not None:
            return cached
        encoding = yield from self.featurizer(config).iter_encode(plane, progressive=progressive)
        self.put((fingerprint(plane), config), encoding)
        return encoding

    def cached(self, plane: np.ndarray, config: FeatureConfig) -> Encoding | None:
        """The encoding of ``plane`` with ``config`` if it is in the cache (nothing is computed), else None."""
        return self.get((fingerprint(plane), config))
