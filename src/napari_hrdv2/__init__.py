"""napari-hrdv2: pixel-resolution DINOv2 (HR-Dv2) features and weakly supervised segmentation.

``import napari_hrdv2`` is cheap: torch, transformers, Qt and napari are imported
only when a public name that needs them is first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "FeatureConfig": "core.config",
    "PRESETS": "core.config",
    "Featurizer": "core.encoding",
    "Encoding": "core.encoding",
    "Progress": "core.progress",
    "encode": "core.encoding",
    "PCABasis": "core.pca",
    "fit_pca": "core.pca",
    "pca_rgb": "core.pca",
    "feature_norm": "core.pca",
    "cosine_similarity_map": "core.pca",
    "similarity_maps": "core.similarity",
    "similarity_to": "core.similarity",
    "region_vector": "core.similarity",
    "pixel_vector": "core.similarity",
    "cls_vector": "core.similarity",
    "match_patches": "core.match",
    "BackboneSpec": "core.backbones",
    "BACKBONES": "core.backbones",
    "load_backbone": "core.backbones",
    "Transform": "core.transforms",
    "make_transforms": "core.transforms",
    "LinearSegmenter": "core.segmenter",
    "EncodingCache": "core.cache",
    "StackEncoder": "core.stack",
    "fit_stack": "core.stack",
    "predict_stack": "core.stack",
    "segment_files": "core.batch",
    "open_lazy": "core.lazy_io",
    "segment_region": "core.streaming",
    "stream_segment": "core.streaming",
    "fit_lazy": "core.streaming",
    "HRDv2Error": "core.errors",
    "InputError": "core.errors",
    "WeightsNotFoundError": "core.errors",
    "ModelFileError": "core.errors",
    "Cancelled": "core.errors",
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:  # pragma: no cover
    from .core.backbones import BACKBONES, BackboneSpec, load_backbone
    from .core.batch import segment_files
    from .core.cache import EncodingCache
    from .core.config import PRESETS, FeatureConfig
    from .core.encoding import Encoding, Featurizer, encode
    from .core.errors import Cancelled, HRDv2Error, InputError, ModelFileError, WeightsNotFoundError
    from .core.lazy_io import open_lazy
    from .core.match import match_patches
    from .core.pca import PCABasis, cosine_similarity_map, feature_norm, fit_pca, pca_rgb
    from .core.progress import Progress
    from .core.segmenter import LinearSegmenter
    from .core.similarity import cls_vector, pixel_vector, region_vector, similarity_maps, similarity_to
    from .core.stack import StackEncoder, fit_stack, predict_stack
    from .core.streaming import fit_lazy, segment_region, stream_segment
    from .core.transforms import Transform, make_transforms


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'napari_hrdv2' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
