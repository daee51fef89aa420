"""The maths of :class:`~.segmenter.LinearSegmenter`'s training, on feature vectors (torch only).

:func:`standardize` the training vectors, weigh them (:func:`class_weights`), solve a weighted
multinomial logistic regression with an L2 penalty (:func:`fit_logistic`: L-BFGS with hand-written
exact gradients), then :func:`fold_scaler` into the weights so that prediction is one linear map
of the raw features.
"""

from __future__ import annotations

from typing import Any

from ..runtime.threads import interactive_threads

#: Rows per block of the gradient's matrix product in :func:`fit_logistic`.
_GRADIENT_BLOCK_ROWS = 512

#: Default stop of :func:`fit_logistic`: the largest gradient entry of the (mean, weights-sum-to-1) objective.
GRADIENT_TOLERANCE = 1e-5

#: Cold fits on more rows than this first solve a random ``1 / COARSE_FRACTION`` of them (see :func:`fit_logistic`).
COARSE_MIN_ROWS = 8192
COARSE_FRACTION = 8


@interactive_threads()
def fit_logistic(
    z: Any,
    y: Any,
    sample_weight: Any,
    *,
    l2: float,
    max_iter: int,
    start: tuple[Any, Any] | None = None,
    tolerance: float = GRADIENT_TOLERANCE,
    coarse_start: bool = True,
) -> tuple[Any, Any, int, float]:
    """Weighted multinomial logistic regression with an L2 penalty, by L-BFGS with exact gradients.

    Minimises ``sum_i w_i CE(W z_i + b, y_i) + l2 / 2 ||W||^2``. The loss and its gradient are
    written out (two matrix products per evaluation, no autograd graph), which is what makes
    retraining on ~50k pixels fast enough for live updates.

    Stops after ``max_iter`` iterations, or earlier once no gradient entry exceeds ``tolerance``
    (a warm start near the optimum then costs a few iterations). A cold fit (``start=None``) of more
    than :data:`COARSE_MIN_ROWS` rows first runs up to ``max_iter`` iterations on a seeded random
    ``1 / COARSE_FRACTION`` of the rows (each 1/8 of the cost), then at most ``max_iter // 2`` on all
    of them from there. On bench_cpu's 1022 x 1022 retrain (~11k rows, two label sets) that ended as close
    to the objective's exact minimum as 100 cold iterations or closer (label pixels that differ: 5.2e-4 and
    1.6e-4 vs 6.3e-4 and 1.2e-3) in 60-85 % of their time; 50 coarse iterations were not enough.

    Parameters
    ----------
    z : (N, D) float32 tensor
        Standardised features.
    y : (N,) int64 tensor
        Class indices in ``[0, n_classes)``; every class must occur.
    sample_weight : (N,) float32 tensor
        Non-negative weights summing to 1.
    start : (W, b) or None
        Initial weights ``(n_classes, D)`` and bias ``(n_classes,)``.
    tolerance : float
        Stop once ``max |gradient| <= tolerance``.
    coarse_start : bool
        Allow the coarse first solve described above.

    Returns
    -------
    weight (n_classes, D), bias (n_classes,), iterations (on all rows), final loss.
    """
    import torch

    n_classes = int(y.max()) + 1
    fine_iter = max_iter
    if start is None and coarse_start and z.shape[0] > COARSE_MIN_ROWS:
        subset = torch.randperm(z.shape[0], generator=torch.Generator().manual_seed(0))[::COARSE_FRACTION]
        subset = subset.sort().values
        sub_weight = sample_weight[subset]
        sub_y = y[subset]
        if int(torch.bincount(sub_y, minlength=n_classes).min()) > 0 and float(sub_weight.sum()) > 0:
            weight, bias, _, _ = _lbfgs(
                z[subset], sub_y, sub_weight / sub_weight.sum(), n_classes,
                l2=l2, max_iter=max_iter, start=None, tolerance=tolerance,
            )  # fmt: skip
            start = (weight, bias)
            fine_iter = max(1, max_iter // 2)
    return _lbfgs(z, y, sample_weight, n_classes, l2=l2, max_iter=fine_iter, start=start, tolerance=tolerance)


def _lbfgs(
    z: Any,
    y: Any,
    sample_weight: Any,
    n_classes: int,
    *,
    l2: float,
    max_iter: int,
    start: tuple[Any, Any] | None,
    tolerance: float,
) -> tuple[Any, Any, int, float]:
    """The L-BFGS solve of :func:`fit_logistic` (same arguments and results), from ``start`` or zeros."""
    import torch

    n_dims = z.shape[1]
    one_hot = torch.zeros((z.shape[0], n_classes), dtype=z.dtype)
    one_hot[torch.arange(z.shape[0]), y] = 1.0
    theta = torch.zeros(n_classes * (n_dims + 1), dtype=z.dtype)
    if start is not None:
        theta[: n_classes * n_dims] = start[0].reshape(-1)
        theta[n_classes * n_dims :] = start[1]
    theta.requires_grad_(True)
    column_weight = sample_weight[:, None]
    sample_weight_64 = sample_weight.double()
    y_column = y[:, None]
    z = z.contiguous()
    # The gradient's (n_classes, N) @ (N, D) product is much faster on the CPU as a batch of 512-row blocks
    # summed afterwards than as one product with a long inner dimension (benchmarks/bench_segment.py latency:
    # fit on 20k pixels 0.67 s -> 0.42 s).
    n_blocked = z.shape[0] // _GRADIENT_BLOCK_ROWS * _GRADIENT_BLOCK_ROWS
    z_blocks = z[:n_blocked].view(-1, _GRADIENT_BLOCK_ROWS, n_dims)

    def weight_gradient(residual: torch.Tensor) -> torch.Tensor:
        """``residual.T @ z`` for residual (N, n_classes): (n_classes, D)."""
        blocks = residual[:n_blocked].view(-1, _GRADIENT_BLOCK_ROWS, n_classes).transpose(1, 2)
        total = torch.bmm(blocks, z_blocks).sum(0)
        if n_blocked < z.shape[0]:
            total += residual[n_blocked:].T @ z[n_blocked:]
        return total

    def loss_and_grad() -> torch.Tensor:
        with torch.no_grad():
            weight = theta[: n_classes * n_dims].view(n_classes, n_dims)
            bias = theta[n_classes * n_dims :]
            logits = torch.addmm(bias, z, weight.T)
            log_norm = torch.logsumexp(logits, dim=1, keepdim=True)
            # Summed in float64: the stop on small loss changes then sees changes below float32's resolution.
            data_loss = torch.dot(sample_weight_64, (log_norm[:, 0] - logits.gather(1, y_column)[:, 0]).double())
            loss = data_loss + 0.5 * l2 * (weight.double() ** 2).sum()
            residual = (torch.exp(logits - log_norm) - one_hot) * column_weight  # d loss / d logits
            grad = torch.empty_like(theta)
            grad[: n_classes * n_dims] = (weight_gradient(residual) + l2 * weight).reshape(-1)
            grad[n_classes * n_dims :] = residual.sum(0)
        theta.grad = grad
        return loss

    optimizer = torch.optim.LBFGS(
        [theta], lr=1.0, max_iter=max_iter, history_size=20,
        tolerance_grad=tolerance, tolerance_change=1e-9, line_search_fn="strong_wolfe",
    )  # fmt: skip
    optimizer.step(loss_and_grad)
    final_loss = float(loss_and_grad())
    theta = theta.detach()
    weight = theta[: n_classes * n_dims].view(n_classes, n_dims).clone()
    return (
        weight,
        theta[n_classes * n_dims :].clone(),
        int(optimizer.state[optimizer.param_groups[0]["params"][0]].get("n_iter", 0)),
        final_loss,
    )


def standardize(x: Any) -> tuple[Any, Any, Any]:
    """``(z, mean, std)`` with ``z = (x - mean) / std`` per column of ``x`` (N, D); ``std`` is at least 1e-6."""
    import torch

    std, mean = torch.std_mean(x, dim=0, correction=0)
    std = std.clamp_min(1e-6)
    return (x - mean) / std, mean, std


def class_weights(y: Any, n_classes: int, *, balanced: bool) -> Any:
    """Per-sample weights (N,) float32 summing to 1 for class indices ``y`` (N,).

    ``balanced=True`` gives every class the same total weight (``1 / n_classes``) however many
    samples it has; otherwise every sample weighs the same.
    """
    import torch

    if balanced:
        present = torch.bincount(y, minlength=n_classes).float()
        weight = (y.numel() / (n_classes * present))[y]
    else:
        weight = torch.ones(y.numel())
    return weight / weight.sum()


def fold_scaler(weight: Any, bias: Any, mean: Any, std: Any) -> tuple[Any, Any]:
    """Weights on raw features from weights on standardised ones.

    ``W (x - m) / s + b = (W / s) x + (b - (W / s) m)``: returns ``(W / s, b - (W / s) m)`` for
    ``weight`` (n_classes, D), ``bias`` (n_classes,), ``mean`` and ``std`` (D,).
    """
    coef = weight / std
    return coef, bias - coef @ mean
