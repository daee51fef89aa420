"""The Features dock's result layers: PCA view (first, refined, final), attention maps and feature channels, and
the Views tab's Channel / Attention head boxes that browse them (main thread only)."""

from __future__ import annotations

from typing import Any

import numpy as np
from magicgui.widgets import SpinBox

from .._layers import (
    SourceGeometry,
    assemble_planes,
    attention_layer_data,
    bring_into_view,
    feature_channel,
    features_layer_data,
    find_result_layer,
    pca_layer_data,
    plugin_tag,
    result_name,
    upsert_layer,
)
from .._workers import FeaturesResult, PartialFeatures
from ..core.config import FeatureConfig
from ..core.errors import HRDv2Error
from ._common import keep_active_layer


class FeatureViews:
    """Shows features results as layers and keeps what browsing them needs (attention maps, value ranges).

    Parameters
    ----------
    viewer : napari.Viewer
        Where the layers go.
    session : ViewerSession
        Holds the encodings behind the lazy "<image> features" layer and the PCA bases.

    Attributes
    ----------
    channel, head : SpinBox
        The Views tab's Channel and Attention head boxes.
    """

    def __init__(self, viewer: Any, session: Any):
        self._viewer = viewer
        self._session = session
        self._feature_ranges: dict[str, tuple[float, float]] = {}
        #: Per source image: (config dict, (1 + heads, [N,] H, W) attention maps) behind the attention layer.
        self.attention_maps: dict[str, tuple[dict, np.ndarray]] = {}
        self.channel = SpinBox(
            label="Channel", min=0, max=0, tooltip="Which feature channel the '<image> features' layer shows"
        )
        self.head = SpinBox(
            label="Attention head", min=0, max=0, enabled=False, tooltip="0: mean over heads; 1, 2...: one head"
        )

    # ------------------------------------------------------------------ results
    def show_partial(self, geometry: SourceGeometry, config: FeatureConfig, item: PartialFeatures) -> bool:
        """A first (or refined) PCA view of one plane while the other passes run; False if there is none."""
        if item.pca is None:
            return False
        config_dict = config.to_dict()
        base = self._reusable_data(geometry, "PCA", "image", config_dict)
        rgb = assemble_planes(geometry, {item.index: item.pca}, dtype=np.float32, base=base)
        with keep_active_layer(self._viewer):
            upsert_layer(self._viewer, pca_layer_data(geometry, rgb, config=config_dict, partial=True))
        return True

    def show_features(
        self, geometry: SourceGeometry, result: FeaturesResult, *, image: Any, want_features: bool = True
    ) -> str:
        """Attention, feature and PCA layers of a result (``image``: the one chosen now); returns the status."""
        key = (geometry.name, result.config)
        config_dict = result.config.to_dict()
        for stale in [k for k in self._session.encodings if k[0] == geometry.name and k != key]:
            del self._session.encodings[stale]
        if want_features:  # the planes encoded so far back the lazy features layer (held only for it)
            encodings = self._session.encodings.setdefault(key, {})
            encodings.update(result.encodings)
        if result.basis is not None:
            self._session.pca_bases[key] = result.basis
        with keep_active_layer(self._viewer):
            # Added bottom-up above the image: attention and features (hidden), then the PCA view on top.
            if result.attention:
                self._show_attention(geometry, result.attention, config_dict)
            if want_features:
                self._feature_ranges[geometry.name] = result.feature_range
                self.sync_channel_box(image)
                self.show_channel(geometry, key, int(self.channel.value))
            if result.pca:
                base = self._reusable_data(geometry, "PCA", "image", config_dict)
                rgb = assemble_planes(geometry, result.pca, dtype=np.float32, base=base)
                upsert_layer(self._viewer, pca_layer_data(geometry, rgb, config=config_dict))
        planes = ", ".join(str(i) for i in sorted(result.encodings)) if geometry.is_stack else ""
        return f"Features of {geometry.name}{' plane(s) ' + planes if planes else ''} ready."

    def _show_attention(self, geometry: SourceGeometry, attention: dict[int, np.ndarray], config_dict: dict) -> None:
        previous = self.attention_maps.get(geometry.name)
        same = previous is not None and previous[0] == config_dict
        base = previous[1] if same else None
        maps = assemble_planes(geometry, attention, dtype=np.float32, base=base, channel_axis=True)
        self.attention_maps[geometry.name] = (config_dict, maps)
        self.head.max = maps.shape[0] - 1
        self.head.enabled = True
        head = min(int(self.head.value), maps.shape[0] - 1)
        upsert_layer(self._viewer, attention_layer_data(geometry, maps, head=head, config=config_dict))

    def _reusable_data(self, geometry: SourceGeometry, kind: str, layer_type: str, config: dict) -> Any:
        """Current data of a result layer computed with the same settings (other planes are kept)."""
        layer = find_result_layer(self._viewer, result_name(geometry.name, kind), layer_type)
        if layer is None or (plugin_tag(layer) or {}).get("config") != config:
            return None
        return layer.data

    # ------------------------------------------------------------------ browsing
    def encodings_of(self, name: str) -> tuple[tuple[str, FeatureConfig], dict[int, Any]] | None:
        """(key, encodings) of the image ``name``'s computed features, or None."""
        for key, encodings in self._session.encodings.items():
            if key[0] == name and encodings:
                return key, encodings
        return None

    def sync_channel_box(self, layer: Any) -> None:
        """Range of the channel box: the features of the selected image (disabled until computed)."""
        found = self.encodings_of(layer.name) if layer is not None else None
        n_features = next(iter(found[1].values())).n_features if found else 0
        self.channel.enabled = n_features > 0
        self.channel.max = max(n_features - 1, 0)
        self.channel.label = f"Channel (0-{n_features - 1})" if n_features else "Channel"

    def channel_changed(self, image: Any, channel: int) -> None:
        """Show feature ``channel`` of ``image`` (when its features are computed)."""
        found = self.encodings_of(image.name) if image is not None else None
        if found is None:
            return
        try:
            geometry = SourceGeometry.from_layer(image)
        except HRDv2Error:
            return
        self.show_channel(geometry, found[0], int(channel), reveal=True)

    def head_changed(self, image: Any, head: int) -> None:
        """Show attention ``head`` of ``image`` (0: the mean over heads)."""
        stored = self.attention_maps.get(image.name) if image is not None else None
        if stored is None:
            return
        try:
            geometry = SourceGeometry.from_layer(image)
        except HRDv2Error:
            return
        config_dict, maps = stored
        with keep_active_layer(self._viewer):
            layer = upsert_layer(self._viewer, attention_layer_data(geometry, maps, head=int(head), config=config_dict))
        bring_into_view(self._viewer, layer)

    def show_channel(self, geometry: SourceGeometry, key: Any, channel: int, *, reveal: bool = False) -> None:
        """Put feature ``channel`` into the one "<image> features" layer ((H, W) or (N, H, W))."""
        encodings = self._session.encodings.get(key)
        if not encodings:
            return
        n_features = next(iter(encodings.values())).n_features
        channel = min(max(int(channel), 0), n_features - 1)
        data = feature_channel(geometry, encodings, channel)
        low, high = self._feature_ranges.get(geometry.name, (0.0, 1.0))
        layer_data = features_layer_data(
            geometry, data, channel=channel, n_features=n_features, contrast_limits=(low, high),
            config=key[1].to_dict(),
        )  # fmt: skip
        with keep_active_layer(self._viewer):
            layer = upsert_layer(self._viewer, layer_data)
        if reveal:
            bring_into_view(self._viewer, layer)

    def forget(self, layer: Any) -> None:
        """Free what a removed layer kept alive: a source's encodings and PCA basis, a features layer's maps."""
        tag = plugin_tag(layer)
        if tag is None:
            self._session.forget_layer(str(layer.name))
            self.attention_maps.pop(str(layer.name), None)
            self._feature_ranges.pop(str(layer.name), None)
        elif tag.get("kind") == "features":
            for key in [k for k in self._session.encodings if k[0] == tag.get("source")]:
                del self._session.encodings[key]
        elif tag.get("kind") == "attention":
            self.attention_maps.pop(str(tag.get("source")), None)
