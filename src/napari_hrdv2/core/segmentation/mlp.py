"""``MLPSegmenter``: a small nonlinear head on HR-Dv2 features that stays exact and light.

A one-hidden-layer perceptron ``logits = W2 act(W1 x + b1) + b2`` over the (optionally hybrid)
features ``x`` of a pixel. Its first layer is linear, so it is a :class:`LinearSegmenter` whose
linear map has ``hidden`` outputs instead of ``n_classes``: :meth:`Encoding.project` applies it to the
low-resolution per-transform maps and reconstructs only ``hidden`` full-resolution channels, which
equal ``W1 @ Encoding.features() + b1`` (projection commutes with resizing, unshifting and averaging);
classical channels of a hybrid model add their part one filter at a time. The nonlinearity and the
output layer then act on each pixel (:meth:`MLPSegmenter.head_logits`, in row bands). The full
``(C, H, W)`` features are never built; tile-by-tile segmentation blends the tiles' hidden
pre-activations, before the nonlinearity, so it stays exact too.

Training (:func:`fit_mlp`) is a full-batch L-BFGS in torch on the sampled labelled pixels
(standardised; the scaler is folded into ``W1``), with the class-balanced cross-entropy and an L2
penalty on both weight matrices, from a seeded initialisation: deterministic for a given ``seed``
(and thread count). Prediction, probabilities, uncertainty, clean-up, files and feature checks are
those of :class:`LinearSegmenter`.

Axis convention: feature maps ``(C, H, W)``; hidden maps ``(hidden, H, W)``; logits ``(n_classes, H, W)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np

from ..errors import InputError, ModelFileError
from ..features.sources import FeatureSource, source_shape
from ..runtime.threads import interactive_threads
from .model_file import ModelRecord
from .segmenter import LinearSegmenter
from .solver import COARSE_FRACTION, COARSE_MIN_ROWS, GRADIENT_TOLERANCE, class_weights, fold_scaler, standardize
from .training import LinearFit, TrainingSet

#: The nonlinearities of the hidden layer.
ACTIVATIONS = ("relu", "gelu")
#: Hidden units by default.
DEFAULT_HIDDEN = 32
#: Largest hidden layer accepted.
MAX_HIDDEN = 1024
#: Pixels per band of the per-pixel head (bounds its temporary arrays: ``hidden x BAND_PIXELS`` float32).
BAND_PIXELS = 1 << 18
#: Memory for the full-resolution hidden maps of one prediction; more hidden units are done in groups.
HIDDEN_MAP_BYTES = 256 << 20


@dataclass(frozen=True)
class MLPFit(LinearFit):
    """A fitted MLP over raw features: ``coef`` / ``intercept`` its first layer ``(hidden, C)`` / ``(hidden,)``
    (scaler folded in), ``output_weight`` ``(n_classes, hidden)`` and ``output_bias`` ``(n_classes,)`` float32.

    ``standardized`` keeps the torch weights on standardised features ``(W1, b1, W2, b2)`` (a warm start).
    """

    output_weight: np.ndarray
    output_bias: np.ndarray


def _activate(hidden: Any, activation: str) -> Any:
    import torch

    return torch.relu(hidden) if activation == "relu" else torch.nn.functional.gelu(hidden)


def _initial_weights(n_dims: int, hidden: int, n_classes: int, seed: int) -> list[Any]:
    """Seeded He-style initial ``[W1, b1, W2, b2]`` on standardised features (a local generator)."""
    import torch

    generator = torch.Generator().manual_seed(int(seed))
    w1 = torch.randn((hidden, n_dims), generator=generator) * math.sqrt(2.0 / n_dims)
    w2 = torch.randn((n_classes, hidden), generator=generator) * math.sqrt(1.0 / hidden)
    return [w1, torch.zeros(hidden), w2, torch.zeros(n_classes)]


def _lbfgs_mlp(
    z: Any, y: Any, sample_weight: Any, params: list[Any], *, activation: str, l2: float, max_iter: int
) -> tuple[list[Any], int, float]:
    """L-BFGS (strong Wolfe) on ``sum_i w_i CE + l2 / 2 (||W1||^2 + ||W2||^2)`` from ``params``."""
    import torch

    params = [p.detach().clone().requires_grad_(True) for p in params]
    w1, b1, w2, b2 = params
    y_column = y[:, None]

    def objective() -> Any:
        hidden = _activate(torch.addmm(b1, z, w1.T), activation)
        log_p = torch.log_softmax(torch.addmm(b2, hidden, w2.T), dim=1)
        data = -(sample_weight * log_p.gather(1, y_column)[:, 0]).sum()
        return data + 0.5 * l2 * ((w1 * w1).sum() + (w2 * w2).sum())

    optimizer = torch.optim.LBFGS(
        params, lr=1.0, max_iter=max_iter, history_size=20,
        tolerance_grad=GRADIENT_TOLERANCE, tolerance_change=1e-9, line_search_fn="strong_wolfe",
    )  # fmt: skip

    def closure() -> Any:
        optimizer.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        final_loss = float(objective())
    iterations = int(optimizer.state[optimizer.param_groups[0]["params"][0]].get("n_iter", 0))
    return [p.detach() for p in params], iterations, final_loss


@interactive_threads()
def fit_mlp(
    pixels: TrainingSet,
    *,
    hidden: int,
    activation: str,
    l2: float,
    max_iter: int,
    balanced: bool,
    seed: int,
    start: tuple[Any, ...] | None = None,
) -> MLPFit:
    """Fit a one-hidden-layer MLP to the training vectors; the standardisation folded into its first layer.

    A cold fit (``start=None``) of more than :data:`~.solver.COARSE_MIN_ROWS` rows first solves a seeded
    random ``1 / COARSE_FRACTION`` of them (``max_iter`` iterations), then at most ``max_iter // 2`` on all
    rows from there, as :func:`~.solver.fit_logistic` does. Autograd runs even inside ``inference_mode``.
    """
    import torch

    with torch.inference_mode(False), torch.enable_grad():
        x = torch.from_numpy(np.ascontiguousarray(pixels.vectors, dtype=np.float32))
        y = torch.from_numpy(np.ascontiguousarray(pixels.targets, dtype=np.int64))
        n_classes = int(pixels.classes.size)
        z, mean, std = standardize(x)
        z = z.contiguous()
        sample_weight = class_weights(y, n_classes, balanced=balanced)
        options = {"activation": activation, "l2": l2}
        fine_iter = max_iter
        if start is not None:
            params = [p.clone() for p in start]
        else:
            params = _initial_weights(z.shape[1], hidden, n_classes, seed)
            if z.shape[0] > COARSE_MIN_ROWS:
                order = torch.randperm(z.shape[0], generator=torch.Generator().manual_seed(int(seed)))
                subset = order[::COARSE_FRACTION].sort().values
                sub_y, sub_weight = y[subset], sample_weight[subset]
                if int(torch.bincount(sub_y, minlength=n_classes).min()) > 0:
                    sub_weight = sub_weight / sub_weight.sum()
                    params, _, _ = _lbfgs_mlp(z[subset], sub_y, sub_weight, params, max_iter=max_iter, **options)
                    fine_iter = max(1, max_iter // 2)
        params, iterations, final_loss = _lbfgs_mlp(z, y, sample_weight, params, max_iter=fine_iter, **options)
        w1, b1, w2, b2 = params
        with torch.no_grad():
            predicted = torch.addmm(b2, _activate(torch.addmm(b1, z, w1.T), activation), w2.T).argmax(1)
            accuracy = float((predicted == y).float().mean())
            coef, intercept = fold_scaler(w1, b1, mean, std)
    return MLPFit(
        coef=coef.numpy().astype(np.float32),
        intercept=intercept.numpy().astype(np.float32),
        standardized=tuple(params),
        iterations=iterations,
        final_loss=final_loss,
        training_accuracy=accuracy,
        output_weight=w2.numpy().astype(np.float32),
        output_bias=b2.numpy().astype(np.float32),
    )


class MLPSegmenter(LinearSegmenter):
    """A one-hidden-layer MLP on HR-Dv2 (optionally hybrid) features, trained from scribbles.

    Same interface as :class:`LinearSegmenter` (``fit``, ``predict``, ``predict_proba``, ``uncertainty``,
    ``save``, ``load``), and the same exact low-resolution prediction: only ``hidden`` channels are ever
    reconstructed at full resolution.

    Parameters
    ----------
    hidden : int
        Hidden units (32-64 are plenty for a few classes; each costs one reconstructed channel).
    activation : {"relu", "gelu"}
        The nonlinearity of the hidden layer.
    l2 : float
        L2 penalty (weight decay) on both weight matrices (standardised features), added to the mean
        class-balanced cross-entropy as ``l2 / 2 * (||W1||^2 + ||W2||^2)``.
    max_iter : int
        L-BFGS iterations at most (see :func:`fit_mlp`).
    **options
        The other :class:`LinearSegmenter` options: ``class_balanced``, ``hybrid``, ``classical_sigmas``,
        ``max_pixels_per_class``, ``majority_size``, ``min_object_size``, ``warm_start``, ``seed`` (which
        also seeds the initial weights).

    Attributes (after :meth:`fit` or :meth:`load`)
    ----------------------------------------------
    coef_ : (hidden, n_features) float32
        The first layer's weights on the raw features (the scaler folded in); ``intercept_`` (hidden,).
    output_weight_ : (n_classes, hidden) float32
        The output layer; ``output_bias_`` (n_classes,).
    classes_, feature_config, summary_ ... : as :class:`LinearSegmenter`.
    """

    HEAD: ClassVar[str] = "mlp"

    def __init__(
        self,
        *,
        hidden: int = DEFAULT_HIDDEN,
        activation: str = "relu",
        l2: float = 1e-3,
        max_iter: int = 100,
        **options: Any,
    ):
        if isinstance(hidden, bool) or not isinstance(hidden, (int, np.integer)) or not 1 <= hidden <= MAX_HIDDEN:
            raise InputError(f"hidden must be a whole number of units in 1..{MAX_HIDDEN}, got {hidden!r}.")
        if activation not in ACTIVATIONS:
            raise InputError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}.")
        super().__init__(l2=l2, max_iter=max_iter, **options)
        self.hidden = int(hidden)
        self.activation = str(activation)
        self.output_weight_: np.ndarray | None = None
        self.output_bias_: np.ndarray | None = None

    def get_params(self) -> dict[str, Any]:
        """Hyper-parameters, as passed to ``__init__`` (JSON-safe)."""
        return {**super().get_params(), "hidden": self.hidden, "activation": self.activation}

    def __repr__(self) -> str:
        state = f"classes={self.classes_.tolist()}" if self.is_fitted else "not fitted"
        return f"MLPSegmenter(hidden={self.hidden}, {self.activation}, {'hybrid, ' if self.hybrid else ''}{state})"

    # ------------------------------------------------------------------ training
    def _solve(self, pixels: TrainingSet) -> MLPFit:
        start = None
        if (
            self.warm_start
            and self._standardized is not None
            and np.array_equal(self.classes_, pixels.classes)
            and tuple(self._standardized[0].shape) == (self.hidden, pixels.vectors.shape[1])
        ):
            start = self._standardized
        fitted = fit_mlp(
            pixels, hidden=self.hidden, activation=self.activation, l2=self.l2, max_iter=self.max_iter,
            balanced=self.class_balanced, seed=self.seed, start=start,
        )  # fmt: skip
        self.output_weight_, self.output_bias_ = fitted.output_weight, fitted.output_bias
        return fitted

    # ------------------------------------------------------------------ prediction
    def head_arrays(self) -> tuple[np.ndarray, ...]:
        """The output layer ``(output_weight_, output_bias_)`` (after the first layer, :meth:`first_layer`)."""
        self._check_fitted()
        return self.output_weight_, self.output_bias_

    def _add_head(self, maps: np.ndarray, units: slice, out: np.ndarray, *, with_bias: bool) -> None:
        """``out (n_classes, h, w) += W2[:, units] @ act(maps (k, h, w))`` (+ ``b2``), in bands of rows."""
        import torch

        weight = torch.from_numpy(np.ascontiguousarray(self.output_weight_[:, units]))
        bias = torch.from_numpy(self.output_bias_ if with_bias else np.zeros_like(self.output_bias_))[:, None]
        n_units, height, width = maps.shape
        rows = max(1, BAND_PIXELS // max(width, 1))
        with torch.inference_mode():
            for top in range(0, height, rows):
                band = torch.from_numpy(maps[:, top : top + rows]).reshape(n_units, -1)
                logits = torch.addmm(bias, weight, _activate(band, self.activation))
                out[:, top : top + rows] += logits.numpy().reshape(out.shape[0], -1, width)

    def head_logits(self, maps: np.ndarray) -> np.ndarray:
        """Class logits ``(n_classes, h, w)`` float32 of hidden pre-activations ``(hidden, h, w)``, pixel by pixel."""
        self._check_fitted()
        maps = np.asarray(maps, dtype=np.float32)
        if maps.ndim != 3 or maps.shape[0] != self.hidden:
            raise InputError(f"The hidden maps must have shape ({self.hidden}, h, w), got {maps.shape}.")
        out = np.zeros((self.n_classes, *maps.shape[1:]), dtype=np.float32)
        self._add_head(maps, slice(None), out, with_bias=True)
        return out

    def decision_function(self, features: FeatureSource) -> np.ndarray:
        """Class logits ``(n_classes, H, W)`` float32; only hidden channels are reconstructed, in groups that
        fit :data:`HIDDEN_MAP_BYTES` on large images (the output layer is linear in the activations)."""
        self.check_compatible(features)
        height, width = source_shape(features)
        group = max(1, min(self.hidden, HIDDEN_MAP_BYTES // (4 * height * width)))
        if group >= self.hidden:
            return self.head_logits(self._first_layer_maps(features))
        out = np.zeros((self.n_classes, height, width), dtype=np.float32)
        for start in range(0, self.hidden, group):
            units = slice(start, min(start + group, self.hidden))
            self._add_head(self._first_layer_maps(features, units), units, out, with_bias=start == 0)
        return out

    def hidden_activations(self, features: FeatureSource) -> np.ndarray:
        """The hidden layer's activations ``act(W1 x + b1)``: ``(hidden, H, W)`` float32 (small images, tests)."""
        import torch

        maps = torch.from_numpy(self.first_layer_maps(features))
        return _activate(maps, self.activation).numpy()

    # ------------------------------------------------------------------ files
    def to_record(self) -> ModelRecord:
        """The trained model as the plain values of its file (head ``"mlp"``, first layer in ``coef``)."""
        return replace(
            super().to_record(), head=self.HEAD, output_weight=self.output_weight_, output_bias=self.output_bias_
        )

    @classmethod
    def from_record(
        cls, record: ModelRecord, tensors: dict[str, np.ndarray] | None = None, *, name: str = "model"
    ) -> MLPSegmenter:
        """The model of a file's ``record`` (see :meth:`LinearSegmenter.from_record`)."""
        raw = tensors
        if raw is None:
            raw = {"coef": record.coef, "intercept": record.intercept, "classes": record.classes,
                   "output_weight": record.output_weight, "output_bias": record.output_bias}  # fmt: skip
        model = super().from_record(record, raw, name=name)
        if record.coef.shape[0] != model.hidden:
            raise ModelFileError(
                f"'{name}' is damaged: its hidden layer has {record.coef.shape[0]} units, its settings say {model.hidden}."
            )
        model.output_weight_, model.output_bias_ = record.output_weight, record.output_bias
        return model
