"""State shared by the HR-Dv2 widgets of one viewer: feature settings, cached encodings, the trained model."""

from __future__ import annotations

import weakref
from typing import Any

from psygnal import Signal

from .._workers import merge_runtime
from ..core.config import FeatureConfig
from ..core.features.cache import EncodingCache
from ._downloads import DownloadGate

#: Default feature settings of a new viewer session.
DEFAULT_CONFIG = FeatureConfig()


class ViewerSession:
    """One per viewer; both widgets of that viewer read and write it.

    - ``config``: the feature settings (the Features widget edits them, the Segmentation widget uses
      them); ``config_changed`` is emitted with the new value.
    - ``cache``: encodings keyed by plane content and config, so an image encoded for the PCA view is
      not encoded again for training or prediction.
    - ``segmenter``: the last trained or loaded model; ``segmenter_changed`` is emitted with it.
    - ``backbone_info``: the model card of the last loaded backbone; ``backbone_changed`` is emitted.
    - ``downloads``: the repositories the user agreed to download, and how the docks ask (``downloads.ask``).
    - ``encodings`` / ``pca_bases``: per source layer name and config, the planes encoded so far (backing
      the lazy "<image> features" layer) and the PCA basis (consistent colours across a stack).
    """

    config_changed = Signal(object)
    segmenter_changed = Signal(object)
    backbone_changed = Signal(object)

    def __init__(self, config: FeatureConfig = DEFAULT_CONFIG):
        self._config = config
        self.cache = EncodingCache()
        self._segmenter: Any = None
        self._backbone_info: Any = None
        #: Names of the classes (label value -> name), edited in the Segmentation dock's class table.
        self.class_names: dict[int, str] = {}
        self.encodings: dict[tuple[str, FeatureConfig], dict[int, Any]] = {}
        self.pca_bases: dict[tuple[str, FeatureConfig], Any] = {}
        self.downloads = DownloadGate()

    @property
    def config(self) -> FeatureConfig:
        return self._config

    @config.setter
    def config(self, value: FeatureConfig) -> None:
        if value != self._config:
            self._config = value
            self.config_changed.emit(value)

    @property
    def segmenter(self) -> Any:
        return self._segmenter

    @segmenter.setter
    def segmenter(self, value: Any) -> None:
        self._segmenter = value
        self.segmenter_changed.emit(value)

    @property
    def backbone_info(self) -> Any:
        """(backbone setting, BackboneInfo) of the last loaded backbone, or None; ``backbone_changed`` is emitted."""
        return self._backbone_info

    @backbone_info.setter
    def backbone_info(self, value: Any) -> None:
        self._backbone_info = value
        self.backbone_changed.emit(value)

    def prediction_config(self) -> FeatureConfig:
        """Features for the current model: its own feature definition with this session's device/tiling."""
        trained_with = self._segmenter.feature_config if self._segmenter is not None else None
        return self._config if trained_with is None else merge_runtime(trained_with, self._config)

    def forget_layer(self, name: str) -> None:
        """Drop per-layer state (encodings backing feature layers, PCA bases) of a source layer."""
        for store in (self.encodings, self.pca_bases):
            for key in [k for k in store if k[0] == name]:
                del store[key]


_SESSIONS: dict[int, ViewerSession] = {}


def session_for(viewer: Any) -> ViewerSession:
    """The shared session of ``viewer`` (created on first use, dropped when the viewer is collected).

    napari hands plugins a proxy of the viewer (a new one per widget), so the key is the wrapped viewer.
    """
    viewer = getattr(viewer, "__wrapped__", viewer)
    key = id(viewer)
    session = _SESSIONS.get(key)
    if session is None:
        session = _SESSIONS[key] = ViewerSession()
        weakref.finalize(viewer, _SESSIONS.pop, key, None)
    return session
