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
    "Featurizer": "core.features.encoding",
    "Encoding": "core.features.encoding",
    "ChannelEncoding": "core.features.channels",
    "Progress": "core.progress",
    "encode": "core.features.encoding",
    "PCABasis": "core.analysis.pca",
    "fit_pca": "core.analysis.pca",
    "pca_rgb": "core.analysis.pca",
    "feature_norm": "core.analysis.pca",
    "cosine_similarity_map": "core.analysis.pca",
    "similarity_maps": "core.analysis.similarity",
    "similarity_to": "core.analysis.similarity",
    "region_vector": "core.analysis.similarity",
    "pixel_vector": "core.analysis.similarity",
    "cls_vector": "core.analysis.similarity",
    "match_patches": "core.analysis.match",
    "BackboneSpec": "core.backbone.loading",
    "BACKBONES": "core.backbone.loading",
    "load_backbone": "core.backbone.loading",
    "Transform": "core.transforms",
    "make_transforms": "core.transforms",
    "LinearSegmenter": "core.segmentation.segmenter",
    "MLPSegmenter": "core.segmentation.mlp",
    "load_segmenter": "core.segmentation.heads",
    "EncodingCache": "core.features.cache",
    "StackEncoder": "core.segmentation.stack",
    "fit_stack": "core.segmentation.stack",
    "predict_stack": "core.segmentation.stack",
    "segment_files": "core.scale.batch",
    "open_lazy": "core.files.lazy",
    "segment_region": "core.scale.streaming",
    "stream_segment": "core.scale.streaming",
    "fit_lazy": "core.scale.streaming",
    "HRDv2Error": "core.errors",
    "InputError": "core.errors",
    "WeightsNotFoundError": "core.errors",
    "ModelFileError": "core.errors",
    "Cancelled": "core.errors",
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:  # pragma: no cover
    from .core.analysis.match import match_patches
    from .core.analysis.pca import PCABasis, cosine_similarity_map, feature_norm, fit_pca, pca_rgb
    from .core.analysis.similarity import cls_vector, pixel_vector, region_vector, similarity_maps, similarity_to
    from .core.backbone.loading import BACKBONES, BackboneSpec, load_backbone
    from .core.config import PRESETS, FeatureConfig
    from .core.errors import Cancelled, HRDv2Error, InputError, ModelFileError, WeightsNotFoundError
    from .core.features.cache import EncodingCache
    from .core.features.channels import ChannelEncoding
    from .core.features.encoding import Encoding, Featurizer, encode
    from .core.files.lazy import open_lazy
    from .core.progress import Progress
    from .core.scale.batch import segment_files
    from .core.scale.streaming import fit_lazy, segment_region, stream_segment
    from .core.segmentation.heads import load_segmenter
    from .core.segmentation.mlp import MLPSegmenter
    from .core.segmentation.segmenter import LinearSegmenter
    from .core.segmentation.stack import StackEncoder, fit_stack, predict_stack
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
