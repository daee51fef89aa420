"""Opening images larger than memory in napari: Zarr / OME-Zarr folders, ``.npy`` files and large TIFFs, lazily.

Used by ``python -m napari_hrdv2 IMAGE...`` (not registered as an npe2 reader: it would compete with napari's
own TIFF and Zarr readers for every file); from napari's console: ``viewer.add_image(**...)`` with
``read_lazy(path)``, or simply ``viewer.add_image(napari_hrdv2.open_lazy(path))``.
The layer's data is the Zarr array itself (or the levels of an OME-Zarr / TIFF pyramid as a multiscale
image), so napari reads only what it displays, and "Predict current view" segments the visible region
(:func:`napari_hrdv2._workers.predict_region_job`). Small TIFFs are left to napari's own reader.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: TIFFs with more pixels per plane than this open lazily (smaller ones are read by napari itself).
LAZY_TIFF_PIXELS = 1 << 25


def _channel_axis(path: Path) -> int | None:
    """The index of an OME-Zarr image's ``c`` axis when it has more than one channel, else None."""
    import zarr

    if path.suffix.lower() != ".zarr":
        return None
    node = zarr.open(str(path), mode="r")
    attrs = dict(getattr(node, "attrs", {}))
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if not (isinstance(node, zarr.Group) and multiscales):
        return None
    axes = [(a.get("name") if isinstance(a, dict) else str(a)) or "" for a in multiscales[0].get("axes", [])]
    names = [a.lower() for a in axes]
    if "c" not in names:
        return None
    axis = names.index("c")
    first = node[multiscales[0]["datasets"][0]["path"]]
    return axis if first.ndim == len(names) and first.shape[axis] > 1 else None


def _levels(path: Path) -> list[Any]:
    """The resolution levels of a Zarr / OME-Zarr / TIFF image, full resolution first (lazy arrays)."""
    import zarr

    from .core.files.lazy import open_lazy, zarr_image_array

    if path.suffix.lower() == ".npy":
        return [open_lazy(path)]
    if path.suffix.lower() == ".zarr":
        node = zarr.open(str(path), mode="r")
    else:
        import tifffile

        node = zarr.open(tifffile.imread(str(path), aszarr=True), mode="r")
    attrs = dict(getattr(node, "attrs", {}))
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if isinstance(node, zarr.Group) and multiscales:
        return [node[d["path"]] for d in multiscales[0]["datasets"]]
    if isinstance(node, zarr.Group) and "0" in node and isinstance(node["0"], zarr.Array):  # e.g. a TIFF pyramid
        keys = sorted((k for k in node.array_keys() if k.isdigit()), key=int)
        return [node[k] for k in keys]
    return [zarr_image_array(node, path)]


def read_lazy(path: str | list[str]) -> list[tuple[Any, dict[str, Any], str]]:
    """Layer data for napari: one image layer per path, lazily read (multiscale when the file has levels).

    An OME-Zarr image with a ``c`` axis of several channels gives one grey layer per channel
    (``"<name> c0"``, ``"<name> c1"``, ...; napari's ``channel_axis``), as napari's OME-Zarr reader does.
    """
    paths = [path] if isinstance(path, str) else list(path)
    layers = []
    for item in paths:
        levels = _levels(Path(item))
        name = Path(item).name.split(".")[0]
        data = levels if len(levels) > 1 else levels[0]
        channel_axis = _channel_axis(Path(item))
        if channel_axis is not None:
            names = [f"{name} c{i}" for i in range(levels[0].shape[channel_axis])]
            meta = {"name": names, "multiscale": len(levels) > 1, "channel_axis": channel_axis}
        else:
            rgb = levels[0].ndim >= 3 and levels[0].shape[-1] in (3, 4)
            meta = {"name": name, "multiscale": len(levels) > 1, "rgb": rgb}
        layers.append((data, meta, "image"))
    return layers


def get_reader(path: str | list[str]) -> Any:
    """:func:`read_lazy` for Zarr folders, ``.npy`` files and TIFFs too large to read whole; None for other files."""
    paths = [path] if isinstance(path, str) else list(path)
    for item in paths:
        suffix = Path(item).suffix.lower()
        if suffix in (".zarr", ".npy"):
            continue
        if suffix not in (".tif", ".tiff"):
            return None
        try:
            from .core.files.lazy import lazy_planes

            planes, _ = lazy_planes(item)
        except Exception:
            return None
        if planes[0].height * planes[0].width <= LAZY_TIFF_PIXELS:
            return None
    return read_lazy
