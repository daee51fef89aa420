"""``LinearSegmenter``: weakly supervised segmentation from brush labels on HR-Dv2 features.

A multinomial logistic regression (class-balanced, L2) is trained on the exact
HR-Dv2 features of the labelled pixels only (:meth:`Encoding.sample`). The
standardisation of the features is folded into the weights, so prediction is
one linear map: :meth:`Encoding.project` applies it to the low-resolution
per-transform maps and upsamples only ``n_classes`` logit channels; a dense
``(C, H, W)`` feature map is never built.

Optional *hybrid* features append classical multiscale filters of the image
(:mod:`.classical`); they are computed at full resolution, so their logit
contribution is accumulated one filter at a time and the trick stays exact.

Axis convention: label images ``(H, W)`` integers (0 = unlabelled); feature
maps ``(C, H, W)``; probabilities ``(n_classes, H, W)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..config import RUNTIME_FIELDS, FeatureConfig
from ..errors import InputError
from ..features import hybrid
from ..features.classical import (
    DEFAULT_SIGMAS,
    check_sigmas,
    n_classical_features,
)
from ..features.hybrid import ClassicalChannels
from ..features.sources import FeatureSource, is_encoding
from ..files.label_images import label_dtype
from . import compatibility
from .compatibility import common_feature_config
from .labels import clean_labels
from .model_file import ModelRecord, check_head, check_record, damaged, read_model_file, write_model_file
from .refine import RefineSettings, guide_of, refine_probabilities
from .training import LinearFit, TrainingSet, TrainingSummary, first_known, fit_linear, paired_images, training_set

#: What :meth:`LinearSegmenter.predict` and friends refine with when ``refine=None`` is passed: the model's own.
RefineChoice = str | RefineSettings | None


def softmax_inplace(logits: np.ndarray) -> np.ndarray:
    """Softmax over the class axis of ``(n_classes, H, W)`` float32 logits, in place; returns them."""
    logits -= logits.max(axis=0, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=0, keepdims=True)
    return logits


def normalized_entropy(probabilities: np.ndarray) -> np.ndarray:
    """Entropy of ``(n_classes, H, W)`` probabilities divided by ``log(n_classes)``: (H, W) in [0, 1]."""
    p = np.clip(probabilities, 1e-12, 1.0)
    entropy = -(p * np.log(p)).sum(axis=0)
    return np.clip(entropy / math.log(max(probabilities.shape[0], 2)), 0.0, 1.0).astype(np.float32)


class LinearSegmenter:
    """Multinomial logistic regression on HR-Dv2 (optionally hybrid) features, trained from scribbles.

    Parameters
    ----------
    l2 : float
        L2 penalty on the weights (standardised features), added to the mean
        class-balanced cross-entropy as ``l2 / 2 * ||W||^2``. Independent of the
        number of labelled pixels.
    class_balanced : bool
        Weight every class equally however many pixels were painted.
    hybrid : bool
        Append classical multiscale filters of the image (intensity, edges,
        blobs, ridges, texture) to the HR-Dv2 features.
    classical_sigmas : sequence of float
        Gaussian scales of the classical filters (hybrid only).
    max_pixels_per_class : int
        Training uses at most this many labelled pixels per class (a seeded random
        subset); more add time, not accuracy (bench_cpu's 1022 x 1022 retrain, 2 label sets x 3
        seeds: 5000 instead of 10000 halves every L-BFGS step; accuracy on the unlabelled pixels
        changed by less than the seed alone, ~0.1 %).
    max_iter : int
        L-BFGS iterations at most (fewer once the gradient is below
        :data:`~.solver.GRADIENT_TOLERANCE`; see :func:`~.solver.fit_logistic`).
    majority_size, min_object_size : int
        Optional clean-up of :meth:`predict` (see :func:`clean_labels`); 0 = off.
    refine : {"none", "crf", "guided"}
        Edge-aware refinement of the class probabilities guided by the image (:mod:`.refine`): a local
        dense CRF, a guided filter, or none. :meth:`predict`, :meth:`predict_proba` and
        :meth:`uncertainty` apply it (``refine=`` overrides it for one call); saved in the model file.
    refine_options : dict, optional
        Options of the refinement method (:class:`~.refine.RefineSettings`: ``iterations``, ``radius``,
        ``spatial_sigma``, ``intensity_sigma``, ``weight`` for "crf"; ``radius``, ``eps`` for "guided");
        missing ones take the method's defaults.
    warm_start : bool
        Start :meth:`fit` from the previous solution when the classes are unchanged
        (fewer iterations when retraining after every brush stroke).
    seed : int
        Seed of the pixel subsampling.

    Attributes (after :meth:`fit` or :meth:`load`)
    ----------------------------------------------
    classes_ : (n_classes,) int array
        The label values seen, ascending; predictions use them.
    coef_ : (n_classes, n_features) float32
        Weights on the raw (unstandardised) features; the scaler is folded in.
    intercept_ : (n_classes,) float32
    feature_config : FeatureConfig or None
        The feature pipeline the model was trained with (None if trained on dense arrays).
    summary_ : TrainingSummary

    Prediction is ``head_logits(first_layer_maps(features))``: a linear map of the features computed on the
    low-resolution maps (:meth:`first_layer`), then a per-pixel head (:meth:`head_logits`, the identity here;
    :class:`~.mlp.MLPSegmenter` puts a small MLP there).
    """

    #: The model file's ``head`` entry this class reads and writes (:data:`.model_file.HEAD_KINDS`).
    HEAD: ClassVar[str] = "linear"

    def __init__(
        self,
        *,
        l2: float = 1e-3,
        class_balanced: bool = True,
        hybrid: bool = False,
        classical_sigmas: Sequence[float] = DEFAULT_SIGMAS,
        max_pixels_per_class: int = 5_000,
        max_iter: int = 100,
        majority_size: int = 0,
        min_object_size: int = 0,
        refine: str = "none",
        refine_options: Mapping[str, Any] | None = None,
        warm_start: bool = False,
        seed: int = 0,
    ):
        if not (l2 >= 0 and math.isfinite(l2)):
            raise InputError(f"l2 must be a non-negative number, got {l2}.")
        if max_pixels_per_class < 1 or max_iter < 1:
            raise InputError("max_pixels_per_class and max_iter must be at least 1.")
        if majority_size < 0 or min_object_size < 0:
            raise InputError("majority_size and min_object_size must be >= 0.")
        self.l2 = float(l2)
        self.class_balanced = bool(class_balanced)
        self.hybrid = bool(hybrid)
        self.classical_sigmas = check_sigmas(classical_sigmas)
        self.max_pixels_per_class = int(max_pixels_per_class)
        self.max_iter = int(max_iter)
        self.majority_size = int(majority_size)
        self.min_object_size = int(min_object_size)
        if refine_options is not None and not isinstance(refine_options, Mapping):
            raise InputError(f"refine_options must be a dict of options, got {type(refine_options).__name__}.")
        #: The refinement applied by predict / predict_proba / uncertainty (:attr:`refine` is its method).
        self.refine_settings = RefineSettings.create(refine, **dict(refine_options or {}))
        self.warm_start = bool(warm_start)
        self.seed = int(seed)
        self._standardized: tuple[Any, Any] | None = None
        self.classes_: np.ndarray | None = None
        self.coef_: np.ndarray | None = None
        self.intercept_: np.ndarray | None = None
        self.feature_config: FeatureConfig | None = None
        self.n_hr_features_: int | None = None
        #: Fingerprint of the backbone weights the model was trained with (:mod:`.backbone_identity`).
        self.backbone_fingerprint_: np.ndarray | None = None
        #: Family of that backbone ("dinov2", "dinov2_reg", "dinov3"); None if unknown (old model files).
        self.backbone_family_: str | None = None
        self.summary_: TrainingSummary | None = None
        #: Optional names of the classes (label -> name), saved in the model file and used for exported metadata.
        self.class_names: dict[int, str] = {}
        #: Channels of multichannel image files the model was trained on (``io.read_image(channels=)``), saved
        #: in the model file; batch segmentation reads files with them. None: images as stored.
        self.channels: tuple[int, ...] | None = None

    # ------------------------------------------------------------------ parameters
    def get_params(self) -> dict[str, Any]:
        """Hyper-parameters, as passed to ``__init__`` (JSON-safe)."""
        return {
            "l2": self.l2,
            "class_balanced": self.class_balanced,
            "hybrid": self.hybrid,
            "classical_sigmas": list(self.classical_sigmas),
            "max_pixels_per_class": self.max_pixels_per_class,
            "max_iter": self.max_iter,
            "majority_size": self.majority_size,
            "min_object_size": self.min_object_size,
            "refine": self.refine,
            "refine_options": self.refine_settings.options(),
            "warm_start": self.warm_start,
            "seed": self.seed,
        }

    @property
    def refine(self) -> str:
        """The refinement method, ``"none"``, ``"crf"`` or ``"guided"``; setting it takes that method's defaults."""
        return self.refine_settings.method

    @refine.setter
    def refine(self, method: str | RefineSettings) -> None:
        self.refine_settings = method if isinstance(method, RefineSettings) else RefineSettings.create(method)

    @property
    def is_fitted(self) -> bool:
        return self.coef_ is not None

    @property
    def n_classes(self) -> int:
        return 0 if self.classes_ is None else int(self.classes_.size)

    @property
    def n_classical(self) -> int:
        return n_classical_features(self.classical_sigmas) if self.hybrid else 0

    def __repr__(self) -> str:
        state = f"classes={self.classes_.tolist()}" if self.is_fitted else "not fitted"
        return f"LinearSegmenter({'hybrid, ' if self.hybrid else ''}{state})"

    # ------------------------------------------------------------------ features
    @property
    def _classical(self) -> ClassicalChannels | None:
        """The classical channels a hybrid model appends (scaled like the HR features' image), else None."""
        if not self.hybrid:
            return None
        normalize = self.feature_config.normalize if self.feature_config is not None else "minmax"
        return ClassicalChannels(self.classical_sigmas, normalize)

    def _sample(self, features: FeatureSource, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Training vectors (N, n_features) at pixels: HR features, then classical filters if hybrid."""
        return hybrid.sample_vectors(features, rows, cols, self._classical)

    # ------------------------------------------------------------------ training
    def fit(
        self,
        features: Sequence[FeatureSource] | FeatureSource,
        labels: Sequence[np.ndarray] | np.ndarray,
    ) -> LinearSegmenter:
        """Train on the labelled pixels of one or several images.

        Parameters
        ----------
        features : Encoding or (C, H, W) array, or a sequence of them
            All with the same feature definition (the same FeatureConfig for encodings).
            With ``hybrid=True``, dense arrays must already hold the classical channels
            (see :meth:`dense_features`).
        labels : (H, W) int array or a sequence of them, one per image
            0 = unlabelled; any positive values name the classes. Never modified.

        Returns
        -------
        self
        """
        sources, label_list = paired_images(features, labels)
        self.feature_config = self._common_config(sources)
        n_features = {hybrid.n_features(s, self._classical) for s in sources}
        if len(n_features) > 1:
            raise InputError(f"The images have different numbers of features {sorted(n_features)}.")
        pixels = training_set(
            sources, label_list, sample=self._sample, max_per_class=self.max_pixels_per_class, seed=self.seed
        )
        fitted = self._solve(pixels)
        self._standardized = fitted.standardized
        self.classes_ = pixels.classes.astype(np.int64)
        self.coef_, self.intercept_ = fitted.coef, fitted.intercept
        self.n_hr_features_ = self.coef_.shape[1] - self.n_classical
        self.backbone_fingerprint_ = first_known(getattr(s, "backbone_fingerprint", None) for s in sources)
        self.backbone_family_ = first_known(getattr(s, "backbone_family", None) for s in sources)
        self.summary_ = TrainingSummary(
            n_images=len(sources),
            pixels_per_class=pixels.counts,
            pixels_used=int(pixels.targets.shape[0]),
            iterations=fitted.iterations,
            final_loss=fitted.final_loss,
            training_accuracy=fitted.training_accuracy,
        )
        return self

    def _solve(self, pixels: TrainingSet) -> LinearFit:
        """The weights fitted to the training vectors (``coef`` / ``intercept``: the first linear map)."""
        start = None
        if self.warm_start and self._standardized is not None and np.array_equal(self.classes_, pixels.classes):
            start = self._standardized if self._standardized[0].shape[1] == pixels.vectors.shape[1] else None
        return fit_linear(pixels, l2=self.l2, max_iter=self.max_iter, balanced=self.class_balanced, start=start)

    @staticmethod
    def _common_config(sources: Sequence[FeatureSource]) -> FeatureConfig | None:
        return common_feature_config([getattr(s, "config", None) for s in sources if is_encoding(s)])

    # ------------------------------------------------------------------ prediction
    def _check_fitted(self) -> None:
        compatibility.check_fitted(self)

    def check_compatible_config(self, config: FeatureConfig | None) -> None:
        """Raise :class:`InputError` if ``config`` defines other features than the training features
        (:func:`.compatibility.check_model_features`)."""
        compatibility.check_model_features(self, config)

    def check_backbone_family(self, family: str | None, *, source: str | None = None) -> None:
        """Raise :class:`InputError` if ``family`` (of the backbone of some features) is not the model's
        (:func:`.compatibility.check_backbone_family`; unknown families pass)."""
        compatibility.check_backbone_family(self, family, source=source)

    def check_backbone(self, backbone: Any) -> None:
        """Raise :class:`InputError` if a loaded ``backbone`` cannot give the features the model was trained on:
        another family, another width or other weights (:func:`.compatibility.check_backbone`).
        """
        compatibility.check_backbone(self, backbone)

    def check_backbone_weights(self, fingerprint: np.ndarray | None) -> None:
        """Raise :class:`InputError` if ``fingerprint`` (of a backbone) is not the one the model was trained with
        (:func:`.compatibility.check_backbone_weights`; unknown fingerprints pass)."""
        compatibility.check_backbone_weights(self, fingerprint)

    def check_compatible(self, features: FeatureSource) -> None:
        """Raise :class:`InputError` if ``features`` were not made like the training features."""
        self._check_fitted()
        if is_encoding(features):
            self.check_compatible_config(getattr(features, "config", None))
            self.check_backbone_family(getattr(features, "backbone_family", None))
            self.check_backbone_weights(getattr(features, "backbone_fingerprint", None))
        if getattr(features, "n_channels", None) is not None and hasattr(features, "block_width"):
            compatibility.check_channel_count(self, features.n_channels, features.block_width)
        n = hybrid.n_features(features, self._classical)
        if n != self.coef_.shape[1]:
            raise InputError(
                f"The features have {n} channels but the model expects {self.coef_.shape[1]} "
                f"({self.n_hr_features_} HR-Dv2 + {self.n_classical} classical): wrong backbone or feature setting?"
            )

    def first_layer(self) -> tuple[np.ndarray, np.ndarray]:
        """The linear map of the raw features that prediction starts with: weight ``(n_out, n_features)``, bias
        ``(n_out,)`` float32 (the classifier itself here, ``n_out = n_classes``; an MLP's hidden layer).

        Being linear, it commutes with the reconstruction of full-resolution features, so
        :meth:`Encoding.project` applies it to the low-resolution maps, and tiles may be blended after it.
        """
        self._check_fitted()
        return self.coef_, self.intercept_

    def first_layer_maps(self, features: FeatureSource) -> np.ndarray:
        """``weight @ features + bias`` of :meth:`first_layer`: ``(n_out, H, W)`` float32, features never materialised."""
        self.check_compatible(features)
        return self._first_layer_maps(features)

    def _first_layer_maps(self, features: FeatureSource, units: slice = slice(None)) -> np.ndarray:
        """Rows ``units`` of :meth:`first_layer_maps` (the features already checked)."""
        weight, bias = self.coef_[units], self.intercept_[units]
        if not is_encoding(features):
            dense = np.asarray(features, dtype=np.float32)
            if not np.isfinite(dense).all():
                raise InputError("The features contain NaN or infinite values.")
            maps = np.einsum("oc,chw->ohw", weight, dense, optimize=True)
            return (maps + bias[:, None, None]).astype(np.float32)
        n_hr = self.n_hr_features_
        maps = features.project(weight[:, :n_hr], bias)
        if self._classical is not None:
            hybrid.add_classical_logits(maps, weight[:, n_hr:], features, self._classical)
        return maps

    def head_logits(self, maps: np.ndarray) -> np.ndarray:
        """Class logits ``(n_classes, h, w)`` of :meth:`first_layer` maps ``(n_out, h, w)``, pixel by pixel.

        The identity for this linear model (the maps are the logits, returned as they are).
        """
        return maps

    def head_arrays(self) -> tuple[np.ndarray, ...]:
        """The weights of the per-pixel head after :meth:`first_layer` (none for this linear model)."""
        return ()

    def decision_function(self, features: FeatureSource) -> np.ndarray:
        """Class logits ``(n_classes, H, W)`` float32, computed without materialising the features."""
        self.check_compatible(features)
        return self.head_logits(self._first_layer_maps(features))

    def refinement(self, refine: RefineChoice = None) -> RefineSettings:
        """The refinement of one call: the model's for None (or its own method name), else ``refine``'s defaults."""
        if refine is None or refine == self.refine:
            return self.refine_settings
        return refine if isinstance(refine, RefineSettings) else RefineSettings.create(refine)

    def guide(self, features: FeatureSource, image: np.ndarray | None = None) -> np.ndarray:
        """The image that guides refinement, scaled like the features' image (:func:`~.refine.guide_image`).

        ``image`` (the raw ``(H, W[, C])`` image of the features) wins; otherwise the image an Encoding keeps.
        """
        config = self.feature_config
        normalize = config.normalize if config is not None else "minmax"
        separate = config is not None and config.channel_mode == "separate"
        return guide_of(features, image, normalize=normalize, separate=separate)

    def predict_proba(
        self, features: FeatureSource, *, refine: RefineChoice = None, image: np.ndarray | None = None
    ) -> np.ndarray:
        """Class probabilities ``(n_classes, H, W)`` float32 (softmax of the logits; sums to 1), refined.

        ``refine`` overrides the model's refinement for this call (None: the model's); ``image`` is the
        features' image when they are not an Encoding (which keeps it) and refinement is on.
        """
        settings = self.refinement(refine)
        probabilities = softmax_inplace(self.decision_function(features))
        if not settings.active:
            return probabilities
        return refine_probabilities(probabilities, self.guide(features, image), settings)

    def predict(
        self, features: FeatureSource, *, refine: RefineChoice = None, image: np.ndarray | None = None
    ) -> np.ndarray:
        """Label image ``(H, W)`` with the class values of :attr:`classes_`: uint8, or uint16 above 255.

        With refinement (the model's, or ``refine`` for this call) the labels are the most probable classes of
        the refined probabilities (:meth:`predict_proba`), else of the logits.
        """
        if self.refinement(refine).active:
            labels = self.labels_from_probabilities(self.predict_proba(features, refine=refine, image=image))
        else:
            labels = self.labels_from_logits(self.decision_function(features))
        return self.clean(labels)

    def clean(self, labels: np.ndarray) -> np.ndarray:
        """The model's clean-up of predicted labels (``majority_size``, ``min_object_size``; none when both off)."""
        if self.majority_size > 1 or self.min_object_size > 0:
            labels = clean_labels(labels, majority_size=self.majority_size, min_object_size=self.min_object_size)
        return labels

    def outputs(
        self,
        features: FeatureSource,
        kinds: Sequence[str] = ("labels",),
        *,
        refine: RefineChoice = None,
        image: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """Some of ``"labels"``, ``"probabilities"``, ``"uncertainty"`` from one pass (refinement computed once).

        Each equals :meth:`predict`, :meth:`predict_proba` and :meth:`uncertainty` of the same arguments.
        """
        settings = self.refinement(refine)
        out: dict[str, np.ndarray] = {}
        logits = self.decision_function(features)
        if "labels" in kinds and not settings.active:
            out["labels"] = self.clean(self.labels_from_logits(logits))
        if settings.active or "uncertainty" in kinds or "probabilities" in kinds:
            probabilities = softmax_inplace(logits)
            if settings.active:
                probabilities = refine_probabilities(probabilities, self.guide(features, image), settings)
            if "labels" in kinds and settings.active:
                out["labels"] = self.clean(self.labels_from_probabilities(probabilities))
            if "uncertainty" in kinds:
                out["uncertainty"] = normalized_entropy(probabilities)
            if "probabilities" in kinds:
                out["probabilities"] = probabilities
        return {kind: out[kind] for kind in kinds}

    def labels_from_logits(self, logits: np.ndarray) -> np.ndarray:
        """The class value of the largest logit ``(n_classes, H, W)`` per pixel: ``(H, W)`` in :func:`label_dtype`.

        Raw: no refinement, no clean-up (:meth:`predict` adds them when set).
        """
        return self.classes_.astype(label_dtype(int(self.classes_.max())))[np.argmax(logits, axis=0)]

    def labels_from_probabilities(self, probabilities: np.ndarray) -> np.ndarray:
        """The most probable class value per pixel of ``(n_classes, H, W)`` probabilities: ``(H, W)``, no clean-up."""
        return self.labels_from_logits(probabilities)

    def uncertainty(
        self, features: FeatureSource, *, refine: RefineChoice = None, image: np.ndarray | None = None
    ) -> np.ndarray:
        """Normalised entropy of the (refined) class probabilities: (H, W) float32, 0 = certain, 1 = uniform."""
        return normalized_entropy(self.predict_proba(features, refine=refine, image=image))

    def dense_features(self, encoding: Any) -> np.ndarray:
        """The full feature array this model works on, ``(n_features, H, W)``: for small images and tests."""
        return hybrid.dense_features(encoding, self._classical)

    def featurizer(self, **runtime: Any) -> Any:
        """A :class:`Featurizer` that computes the features this model was trained on.

        ``runtime`` may change how they are computed (``device``, ``dtype``, ``storage_dtype``,
        ``tile_size``, ``tile_overlap``, ``batch_size``), not what they are.
        """
        from ..features.encoding import Featurizer

        self._check_fitted()
        if self.feature_config is None:
            raise InputError("This model was trained on dense arrays and does not know its feature pipeline.")
        defining = sorted(set(runtime) - set(RUNTIME_FIELDS))
        if defining:
            raise InputError(
                f"{defining} are not runtime settings ({', '.join(RUNTIME_FIELDS)}); "
                "a trained model computes its features with its own values."
            )
        return Featurizer(self.feature_config.replace(**runtime))

    # ------------------------------------------------------------------ files
    def to_record(self) -> ModelRecord:
        """The trained model as the plain values of its file (:class:`.model_file.ModelRecord`)."""
        self._check_fitted()
        return ModelRecord(
            params=self.get_params(),
            coef=self.coef_,
            intercept=self.intercept_,
            classes=self.classes_,
            n_hr_features=int(self.n_hr_features_),
            feature_config=self.feature_config,
            summary=asdict(self.summary_) if self.summary_ else None,
            class_names=dict(self.class_names or {}),
            backbone_fingerprint=self.backbone_fingerprint_,
            backbone_family=self.backbone_family_,
            channels=self.channels,
        )

    @classmethod
    def from_record(
        cls, record: ModelRecord, tensors: dict[str, np.ndarray] | None = None, *, name: str = "model"
    ) -> LinearSegmenter:
        """The model of a file's ``record`` (``tensors``: the file's raw tensors, for the dtype checks).

        Raises
        ------
        ModelFileError
            Parameters or arrays that cannot make a model that predicts valid labels (``name`` in the message),
            or a file of another head (:func:`.model_file.check_head`).
        """
        check_head(record, cls.HEAD, name=name)
        try:
            model = cls(**record.params)
            summary = TrainingSummary(**record.summary) if record.summary else None
        except (KeyError, TypeError, ValueError) as err:
            raise damaged(name, err) from err
        raw = (
            tensors
            if tensors is not None
            else {"coef": record.coef, "intercept": record.intercept, "classes": record.classes}
        )
        check_record(record, raw, n_classical=model.n_classical, name=name)
        model.feature_config = record.feature_config
        model.coef_ = record.coef
        model.intercept_ = record.intercept
        model.classes_ = record.classes
        model.n_hr_features_ = record.n_hr_features
        model.class_names = dict(record.class_names)
        model.backbone_family_ = record.backbone_family
        model.backbone_fingerprint_ = record.backbone_fingerprint
        model.channels = record.channels
        model.summary_ = summary
        return model

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the model to one safetensors file (no pickle): weights, classes, config, version.

        Refuses to replace an existing file unless ``overwrite=True``. The layout is defined in
        :mod:`.model_file`.
        """
        return write_model_file(self.to_record(), path, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | Path) -> LinearSegmenter:
        """Read a model written by :meth:`save`; raises :class:`ModelFileError` for anything else."""
        record, tensors, name = read_model_file(path)
        return cls.from_record(record, tensors, name=name)
