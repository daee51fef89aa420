"""Content checksums (hex sha256): of files, read in 1 MiB blocks so any size fits in memory, and of the
tensors and metadata of our model and basis files (:func:`contents_sha256`)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's content, as 64 hex digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def contents_sha256(tensors: Mapping[str, Any], metadata: Mapping[str, str], *, skip: str = "checksum") -> str:
    """sha256 over a file's string ``metadata`` and numpy ``tensors`` (names, dtypes, shapes, bytes), as 64 hex digits.

    Written into model and basis files on save (under the metadata key ``skip``, which is not hashed) and
    compared on load, so an edited or damaged file is refused instead of giving silently wrong results.
    """
    import numpy as np

    digest = hashlib.sha256()
    meta = {str(key): str(value) for key, value in metadata.items() if key != skip}
    digest.update(json.dumps(meta, sort_keys=True).encode("utf-8"))
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        digest.update(f"\0{name}\0{array.dtype.str}\0{array.shape}\0".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()
