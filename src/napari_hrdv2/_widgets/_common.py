"""Small helpers shared by the widgets (layer choices)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._layers import plugin_tag

if TYPE_CHECKING:  # pragma: no cover
    import napari


def image_layer_choices(viewer: napari.Viewer, *, include_results: bool = False) -> list[tuple[str, Any]]:
    """(name, layer) of the viewer's Image layers, the plugin's own result layers last or left out."""
    from napari.layers import Image

    images = [layer for layer in viewer.layers if isinstance(layer, Image)]
    sources = [layer for layer in images if plugin_tag(layer) is None]
    results = [layer for layer in images if plugin_tag(layer) is not None] if include_results else []
    return [(layer.name, layer) for layer in [*sources, *results]]


def labels_layer_choices(viewer: napari.Viewer) -> list[tuple[str, Any]]:
    """(name, layer) of the viewer's Labels layers that the user made (not the plugin's segmentations)."""
    from napari.layers import Labels

    return [(layer.name, layer) for layer in viewer.layers if isinstance(layer, Labels) and plugin_tag(layer) is None]


def connect_layer_list(viewer: napari.Viewer, callback: Any) -> None:
    """Call ``callback`` when layers are added, removed or moved (napari keeps a weak reference to methods)."""
    events = viewer.layers.events
    for name in ("inserted", "removed", "moved", "reordered"):
        emitter = getattr(events, name, None)
        if emitter is not None:
            emitter.connect(callback)
