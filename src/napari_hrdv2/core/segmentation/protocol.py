"""What the code that applies a trained model (batch, cluster, streaming, stacks, napari workers) uses of it.

:class:`Segmenter` is a :class:`typing.Protocol`: :class:`~.segmenter.LinearSegmenter` satisfies it, and
so does any object with these attributes and methods. :class:`LinearModel` adds the first linear map that
tile-by-tile segmentation (:mod:`..scale.streaming`) projects the features with, and the per-pixel head
after it (the identity for a linear model; :class:`~.mlp.MLPSegmenter`'s hidden layer and output layer).

Axis convention: features of an image ``(C, H, W)`` (an ``Encoding`` or a dense array), logits and
probabilities ``(n_classes, H, W)``, labels and uncertainty ``(H, W)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from ..config import FeatureConfig
    from ..features.encoding import Featurizer
    from .refine import RefineSettings


class Segmenter(Protocol):
    """A trained pixel classifier applied to the features of images.

    Attributes
    ----------
    feature_config : FeatureConfig or None
        The feature settings it was trained with (None: trained on plain arrays).
    channels : tuple of int or None
        The channels of multichannel image files it was trained on (None: images as stored).
    classes_ : (n_classes,) int array or None
        The label values it predicts, ascending (None before training).
    n_hr_features_ : int or None
        Backbone features per pixel it was trained on.
    backbone_family_ : str or None
        Family of the backbone it was trained with (``"dinov2"``, ...); None if unknown.
    backbone_fingerprint_ : (k,) float32 or None
        Fingerprint of the backbone weights it was trained with; None if unknown.
    class_names : dict of int to str
        Optional names of the classes.
    refine_settings : RefineSettings
        How its probabilities are refined along the image's edges (:mod:`.refine`); predict, predict_proba,
        uncertainty and outputs apply it, tile-by-tile segmentation with :func:`~.refine.halo` context.
    """

    feature_config: FeatureConfig | None
    channels: tuple[int, ...] | None
    classes_: np.ndarray | None
    n_hr_features_: int | None
    backbone_family_: str | None
    backbone_fingerprint_: np.ndarray | None
    class_names: dict[int, str]
    refine_settings: RefineSettings

    @property
    def is_fitted(self) -> bool:
        """True once trained (or loaded)."""
        ...

    @property
    def n_classes(self) -> int:
        """Number of classes (0 before training)."""
        ...

    def decision_function(self, features: Any) -> np.ndarray:
        """Class logits ``(n_classes, H, W)`` float32."""
        ...

    def predict(self, features: Any) -> np.ndarray:
        """Label image ``(H, W)`` with the values of ``classes_``."""
        ...

    def predict_proba(self, features: Any) -> np.ndarray:
        """Class probabilities ``(n_classes, H, W)`` float32."""
        ...

    def uncertainty(self, features: Any) -> np.ndarray:
        """Normalised entropy ``(H, W)`` float32, 0 = certain."""
        ...

    def outputs(self, features: Any, kinds: Any = ("labels",)) -> dict[str, np.ndarray]:
        """Some of ``"labels"``, ``"probabilities"``, ``"uncertainty"`` in one pass (refined once)."""
        ...

    def labels_from_logits(self, logits: np.ndarray) -> np.ndarray:
        """The class value of the largest logit ``(n_classes, H, W)`` per pixel: ``(H, W)`` (no refinement)."""
        ...

    def labels_from_probabilities(self, probabilities: np.ndarray) -> np.ndarray:
        """The most probable class value per pixel of (refined) probabilities ``(n_classes, H, W)``: ``(H, W)``."""
        ...

    def guide(self, features: Any, image: np.ndarray | None = None) -> np.ndarray:
        """The image guiding refinement, scaled like the features' image."""
        ...

    def featurizer(self, **runtime: Any) -> Featurizer:
        """A Featurizer computing the features it was trained on (``runtime`` settings may change)."""
        ...

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write it to a model file."""
        ...


class LinearModel(Segmenter, Protocol):
    """A :class:`Segmenter` whose logits are a per-pixel head of one linear map of the features:
    ``head_logits(coef_ @ features + intercept_)`` (the head is the identity for a linear classifier).

    Attributes
    ----------
    coef_ : (n_out, n_features) float32
        The first linear map (``n_out`` = n_classes for a linear classifier, the hidden units of an MLP).
    intercept_ : (n_out,) float32
    hybrid : bool
        Classical filters of the image are appended to the backbone features.
    majority_size, min_object_size : int
        Clean-up of the predicted labels (0 = off).
    """

    coef_: np.ndarray | None
    intercept_: np.ndarray | None
    hybrid: bool
    majority_size: int
    min_object_size: int

    def get_params(self) -> dict[str, Any]:
        """Hyper-parameters (JSON-safe)."""
        ...

    def first_layer(self) -> tuple[np.ndarray, np.ndarray]:
        """The first linear map: weight ``(n_out, n_features)`` and bias ``(n_out,)`` float32."""
        ...

    def head_logits(self, maps: np.ndarray) -> np.ndarray:
        """Class logits ``(n_classes, h, w)`` of first-layer maps ``(n_out, h, w)``, pixel by pixel."""
        ...

    def head_arrays(self) -> tuple[np.ndarray, ...]:
        """The head's weights after the first layer (none for a linear classifier)."""
        ...
