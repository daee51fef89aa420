"""Edge-aware refinement of class probabilities, guided by the image: a local dense CRF or a guided filter.

A linear head on HR-Dv2 features gives class probabilities whose boundaries are a little soft and
may sit a few pixels off the image's edges. Both refinements here move them onto the edges of the
image, in torch (CPU, CUDA, MPS), vectorised over pixels and classes:

``"crf"``
    Mean-field inference of a dense CRF restricted to a local ``(2r+1)^2`` window (ConvCRF style).
    Unary: ``-log p`` of the model's probabilities; pairwise: Potts with a bilateral kernel
    ``k(i, j) = exp(-|x_i - x_j|^2 / 2 spatial_sigma^2) * exp(-|I_i - I_j|^2 / 2 intensity_sigma^2)``
    (for colour guides ``|I_i - I_j|`` is the distance of the colours). Each of ``iterations`` steps is
    ``Q = softmax(log p + weight * M)``, ``M_c(i) = sum_j k(i, j) Q_c(j) / sum_j k_s(j)``: the message of
    the neighbours ``j != i`` inside the window, divided by the sum of the spatial kernel over a full
    window (a constant), so ``weight`` is the logit bonus of a pixel whose similar neighbours all agree.
``"guided"``
    He et al.'s guided filter of every probability channel with the image as guide, ``O(N)`` whatever
    the radius (box means from cumulative sums), then clipped to ``[1e-6, 1]`` and renormalised.
    Colour guides are turned to grey (the mean of the channels): the grey-guide filter.
``"none"``
    The probabilities unchanged.

**Exact across tiles.** Only real pixels count: the windows (CRF) and box means (guided filter) use the
pixels of the image inside them and are normalised by their count (CRF: pixels outside give no message),
so a pixel's result depends only on the pixels within :func:`halo` of it. Refining a tile that holds
``halo(settings)`` pixels of context on every side where the image goes on (none at the image's own
border) and cropping the context away gives the result of refining the whole image (up to float
rounding; labels identical). ``halo`` is ``iterations * radius`` for the CRF and ``2 * radius`` for the
guided filter. Large images are refined in row bands with that halo (bounded memory, same result).

**The guide image** must be scaled to ``[0, 1]`` the same way for a whole image and for any tile of it:
the scaling of the feature pipeline over the whole image (:func:`guide_image` for an image in memory;
:meth:`~..files.lazy.IntensityRange.apply` of the whole plane's range for tiles of a lazy image). The
CRF's ``intensity_sigma`` and the guided filter's ``eps`` are in these units.

Axis convention: probabilities ``(n_classes, H, W)``; guide images ``(H, W)`` or ``(H, W, C)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import Normalize
from ..errors import InputError
from ..features.preprocess import scale_channels, scale_intensities, validate_image
from ..features.sources import is_encoding

if TYPE_CHECKING:  # pragma: no cover
    import torch  # imported where used: ``import napari_hrdv2`` stays free of torch

#: The refinement methods, in the order offered to users.
REFINE_METHODS: tuple[str, ...] = ("none", "crf", "guided")

#: Defaults of every option per method (chosen from ``benchmarks/bench_quality.py``'s grid, see benchmarks/README.md).
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "none": {},
    "crf": {"iterations": 5, "radius": 3, "spatial_sigma": 3.0, "intensity_sigma": 0.1, "weight": 10.0},
    "guided": {"radius": 8, "eps": 1e-3},
}

#: Smallest probability kept by the guided filter before renormalising (its output may leave [0, 1]).
MIN_PROBABILITY = 1e-6
#: Row bands hold at most about this many float32 values per intermediate (bounded memory).
BAND_VALUES = 1 << 25


def _positive(name: str, value: Any, *, integer: bool = False, minimum: float = 0.0) -> Any:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or number <= minimum or (integer and number != int(number)):
        kind = "a whole number" if integer else "a number"
        raise InputError(f"refine option {name}={value!r} must be {kind} > {minimum:g}.")
    return int(number) if integer else number


@dataclass(frozen=True)
class RefineSettings:
    """How class probabilities are refined (see the module docstring).

    Create with :meth:`create` (fills the method's defaults, checks the values) or :meth:`from_dict`.

    Attributes
    ----------
    method : {"none", "crf", "guided"}
    iterations : int
        CRF mean-field steps.
    radius : int
        CRF window half-width / guided-filter box radius, in pixels.
    spatial_sigma : float
        CRF: width of the spatial Gaussian (pixels).
    intensity_sigma : float
        CRF: width of the intensity/colour Gaussian (guide units, [0, 1]).
    weight : float
        CRF: strength of the pairwise term (logit bonus of full agreement).
    eps : float
        Guided filter: regularisation (an intensity variance, guide units squared); larger = smoother.
    """

    method: str = "none"
    iterations: int = 0
    radius: int = 0
    spatial_sigma: float = 0.0
    intensity_sigma: float = 0.0
    weight: float = 0.0
    eps: float = 0.0

    @classmethod
    def create(cls, method: str = "none", **options: Any) -> RefineSettings:
        """Settings of ``method`` with its defaults (:data:`METHOD_DEFAULTS`) overridden by ``options``.

        Raises
        ------
        InputError
            An unknown method, an option the method does not use, or a value out of range.
        """
        if not isinstance(method, str) or method not in REFINE_METHODS:
            raise InputError(f"refine={method!r} is not one of {', '.join(map(repr, REFINE_METHODS))}.")
        defaults = METHOD_DEFAULTS[method]
        unknown = sorted(set(options) - set(defaults))
        if unknown:
            allowed = ", ".join(defaults) or "none"
            raise InputError(f"refine={method!r} takes no option {', '.join(unknown)} (options: {allowed}).")
        values = {**defaults, **options}
        checked: dict[str, Any] = {}
        for name, value in values.items():
            integer = name in ("iterations", "radius")
            checked[name] = _positive(name, value, integer=integer)
        if method == "crf" and checked["radius"] > 32:
            raise InputError(f"refine option radius={checked['radius']} is too large for the CRF window (<= 32).")
        return cls(method=method, **checked)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | str | None) -> RefineSettings:
        """Inverse of :meth:`to_dict` (a bare method name or None = "none" are accepted too)."""
        if values is None:
            return cls.create("none")
        if isinstance(values, str):
            return cls.create(values)
        if not isinstance(values, Mapping):
            raise InputError(f"refine settings must be a method name or a dict, got {type(values).__name__}.")
        options = dict(values)
        return cls.create(options.pop("method", "none"), **options)

    def options(self) -> dict[str, Any]:
        """The options the method uses (JSON-safe), without ``method``."""
        return {name: getattr(self, name) for name in METHOD_DEFAULTS[self.method]}

    def to_dict(self) -> dict[str, Any]:
        """``{"method": ..., **options}`` (JSON-safe)."""
        return {"method": self.method, **self.options()}

    @property
    def active(self) -> bool:
        return self.method != "none"

    def describe(self) -> str:
        """One line for messages, e.g. ``crf (iterations=5, radius=3, ...)``."""
        options = ", ".join(f"{k}={v:g}" for k, v in self.options().items())
        return f"{self.method} ({options})" if options else self.method


def halo(settings: RefineSettings) -> int:
    """Pixels of context a tile needs on each side so that refining it equals refining the whole image.

    ``iterations * radius`` for ``"crf"`` (every mean-field step reaches ``radius`` pixels further),
    ``2 * radius`` for ``"guided"`` (two box means), 0 for ``"none"``. At the image's own border no
    context is needed (only real pixels count).
    """
    if settings.method == "crf":
        return settings.iterations * settings.radius
    if settings.method == "guided":
        return 2 * settings.radius
    return 0


def guide_image(image: np.ndarray, *, normalize: Normalize = "minmax", separate: bool = False) -> np.ndarray:
    """The guide of a whole image in memory: scaled to [0, 1] as the feature pipeline scales it.

    Returns ``(H, W)`` float32 for grey images, ``(H, W, 3)`` for colour (alpha dropped); with ``separate``
    (``channel_mode="separate"``) ``(H, W, C)`` with every channel scaled on its own (:func:`scale_channels`).
    """
    if separate:
        image = np.asarray(image)
        if not np.isfinite(image).all():
            raise InputError("The image contains NaN or infinite values.")
        return scale_channels(image, normalize=normalize)
    image = validate_image(image)
    if image.ndim == 3 and image.shape[-1] == 4:
        image = image[..., :3]
    return np.ascontiguousarray(scale_intensities(image, normalize=normalize), dtype=np.float32)


def guide_of(
    features: Any, image: np.ndarray | None = None, *, normalize: Normalize = "minmax", separate: bool = False
) -> np.ndarray:
    """The guide of features ``(C, H, W)`` or an Encoding: ``image`` if given, else the image the Encoding keeps,
    scaled by :func:`guide_image`; an :class:`InputError` saying what to pass when there is none or it does not fit.
    """
    if image is None and is_encoding(features):
        image = getattr(features, "image", None)
    if image is None:
        raise InputError(
            "Refining the probabilities (refine='crf' or 'guided') needs the image: pass an Encoding made by "
            "Featurizer.encode (it keeps the image) or the image itself with image=..., or use refine='none'."
        )
    guide = guide_image(image, normalize=normalize, separate=separate)
    shape = tuple(features.shape) if is_encoding(features) else tuple(np.asarray(features).shape[1:])
    if guide.shape[:2] != shape:
        raise InputError(f"The image {guide.shape[:2]} does not match the features {shape}: pass the same image.")
    return guide


def refine_probabilities(
    probabilities: np.ndarray | torch.Tensor,
    image: np.ndarray | torch.Tensor,
    settings: RefineSettings,
    *,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Refine class probabilities along the edges of ``image``.

    Parameters
    ----------
    probabilities : (n_classes, H, W) float array
        Per-pixel class probabilities (each pixel sums to 1), e.g. ``LinearSegmenter.predict_proba``.
    image : (H, W) or (H, W, C) float array
        The guide, scaled to [0, 1] like the features' image (see the module docstring, :func:`guide_image`).
    settings : RefineSettings
    device : str or torch.device, optional
        Where to compute (default: the device of a tensor ``probabilities``, else the CPU).

    Returns
    -------
    (n_classes, H, W) float32 numpy array; every pixel sums to 1. ``"none"`` returns the input as float32.
    """
    import torch

    if not isinstance(settings, RefineSettings):
        raise InputError(f"settings must be a RefineSettings, got {type(settings).__name__}.")
    probs = torch.as_tensor(probabilities)
    if device is None:
        device = probs.device
    probs = probs.to(device=device, dtype=torch.float32)
    guide = torch.as_tensor(np.asarray(image, dtype=np.float32) if isinstance(image, np.ndarray) else image)
    guide = guide.to(device=device, dtype=torch.float32)
    if probs.ndim != 3 or probs.shape[0] < 1:
        raise InputError(f"probabilities must be (n_classes, H, W), got shape {tuple(probs.shape)}.")
    if guide.ndim == 2:
        guide = guide[..., None]
    if guide.ndim != 3 or tuple(guide.shape[:2]) != tuple(probs.shape[1:]):
        raise InputError(
            f"The guide image {tuple(image.shape)} does not match the probabilities {tuple(probs.shape)}: "
            "pass the (H, W) or (H, W, C) image the probabilities were predicted on."
        )
    if not settings.active or probs.shape[0] == 1:
        return probs.cpu().numpy()
    guide = guide.permute(2, 0, 1).contiguous()  # (C, H, W)
    step = _refine_crf if settings.method == "crf" else _refine_guided
    result = _in_row_bands(step, probs, guide, settings)
    return result.cpu().numpy()


def _in_row_bands(step: Any, probs: torch.Tensor, guide: torch.Tensor, settings: RefineSettings) -> torch.Tensor:
    """``step(probs, guide, settings)`` on row bands with :func:`halo` rows of context (bounded memory, exact)."""
    import torch

    n, height, width = probs.shape
    context = halo(settings)
    if settings.method == "crf":  # one kernel per window offset, a few (n, W) rows of Q and messages
        per_row = width * ((2 * settings.radius + 1) ** 2 + 4 * n)
    else:  # about eight float64 (n + 1, W) intermediates
        per_row = width * 16 * (n + 1)
    rows = max(1, BAND_VALUES // max(per_row, 1))
    if rows >= height:
        return step(probs, guide, settings)
    rows = max(rows, context)  # at least as many rows as context, or bands would mostly be context
    out = torch.empty_like(probs)
    for top in range(0, height, rows):
        stop = min(top + rows, height)
        a, b = max(0, top - context), min(height, stop + context)
        refined = step(probs[:, a:b], guide[:, a:b], settings)
        out[:, top:stop] = refined[:, top - a : stop - a]
    return out


def _refine_crf(probs: torch.Tensor, guide: torch.Tensor, settings: RefineSettings) -> torch.Tensor:
    """Local dense-CRF mean field (see the module docstring) on one band; shifted slices, no unfold copies."""
    import torch

    n, height, width = probs.shape
    r = settings.radius
    offsets = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if (dy, dx) != (0, 0)]
    spatial = {o: math.exp(-(o[0] ** 2 + o[1] ** 2) / (2 * settings.spatial_sigma**2)) for o in offsets}
    norm = 1.0 + sum(spatial.values())  # a full window's spatial kernel (centre included): a constant
    log_p = torch.log(probs.clamp_min(MIN_PROBABILITY))
    kernels = _bilateral_kernels(guide, offsets, spatial, settings.intensity_sigma, norm)
    # Messages of the first n - 1 classes; the last one's is the total kernel weight of the real neighbours minus
    # theirs (the Q of every real pixel sums to 1), which saves a class's worth of work per step.
    valid = torch.zeros((height + 2 * r, width + 2 * r), dtype=probs.dtype, device=probs.device)
    valid[r : r + height, r : r + width] = 1.0
    total = torch.zeros_like(probs[0])
    for (dy, dx), kernel in kernels.items():
        total.addcmul_(valid[r + dy : r + dy + height, r + dx : r + dx + width], kernel)
    q = probs
    padded_q = torch.zeros((n - 1, height + 2 * r, width + 2 * r), dtype=probs.dtype, device=probs.device)
    message = torch.empty_like(probs)
    for _ in range(settings.iterations):
        padded_q[:, r : r + height, r : r + width] = q[:-1]
        head = message[:-1].zero_()
        for (dy, dx), kernel in kernels.items():
            head.addcmul_(padded_q[:, r + dy : r + dy + height, r + dx : r + dx + width], kernel[None])
        torch.sub(total, head.sum(dim=0), out=message[-1])
        q = torch.softmax(message.mul_(settings.weight).add_(log_p), dim=0)
    return q


def _bilateral_kernels(
    guide: torch.Tensor,
    offsets: list[tuple[int, int]],
    spatial: dict[tuple[int, int], float],
    intensity_sigma: float,
    norm: float,
) -> dict[tuple[int, int], torch.Tensor]:
    """``k(i, i + o) / norm`` as ``(H, W)`` views for every offset ``o``, each exponential computed once.

    The kernel is symmetric, ``k(i, i - o) = k(i - o, i)``, so only half the offsets are computed, on the image
    grown by ``r`` pixels (the guide replicated outwards: those values only ever meet the zero Q outside the
    image), and the other half are shifted views of them.
    """
    import torch

    _, height, width = guide.shape
    r = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    grown = torch.nn.functional.pad(guide[None], (2 * r, 2 * r, 2 * r, 2 * r), mode="replicate")[0]
    centre = grown[:, r : r + height + 2 * r, r : r + width + 2 * r]
    kernels: dict[tuple[int, int], torch.Tensor] = {}
    for dy, dx in offsets:
        if (dy, dx) < (0, 0):
            continue  # the mirror of a computed offset
        neighbour = grown[:, r + dy : r + dy + height + 2 * r, r + dx : r + dx + width + 2 * r]
        distance = torch.sub(centre, neighbour).square_()
        distance = distance[0] if distance.shape[0] == 1 else distance.sum(dim=0)
        scale = math.log(spatial[(dy, dx)] / norm)
        table = distance.mul_(-1.0 / (2 * intensity_sigma**2)).add_(scale).exp_()  # indices -r .. H + r
        kernels[(dy, dx)] = table[r : r + height, r : r + width]
        kernels[(-dy, -dx)] = table[r - dy : r - dy + height, r - dx : r - dx + width]
    return kernels


def _box_mean(values: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean of ``values (..., H, W)`` over the ``(2r+1)^2`` window of each pixel, only real pixels counted.

    Cumulative sums make it O(N) whatever the radius (pass float64 values where the device has them: the
    sums are then exact enough that a tile and the whole image agree).
    """
    import torch

    out = values
    for axis in (out.ndim - 2, out.ndim - 1):
        size = out.shape[axis]
        zero = torch.zeros_like(out.narrow(axis, 0, 1))
        running = torch.cat([zero, out.cumsum(dim=axis)], dim=axis)  # running[k] = sum of the first k
        shape = list(running.shape)
        shape[axis] = radius
        # extended[j] = running[clamp(j - r, 0, size)]: a window's sum is extended[i + 2r + 1] - extended[i]
        extended = torch.cat(
            [zero.expand(shape), running, running.narrow(axis, size, 1).expand(shape)], dim=axis
        )
        sums = extended.narrow(axis, 2 * radius + 1, size) - extended.narrow(axis, 0, size)
        index = torch.arange(size, device=values.device)
        count = ((index + radius + 1).clamp_max(size) - (index - radius).clamp_min(0)).to(values.dtype)
        out = sums.div_(count[:, None] if axis == out.ndim - 2 else count)
    return out


def _refine_guided(probs: torch.Tensor, guide: torch.Tensor, settings: RefineSettings) -> torch.Tensor:
    """He et al.'s guided filter of every channel of ``probs`` with the grey of ``guide`` (one band)."""
    import torch

    r, eps = settings.radius, settings.eps
    wide = torch.float32 if probs.device.type == "mps" else torch.float64
    grey = guide.to(wide).mean(dim=0)
    probs = probs.to(wide)
    mean_i = _box_mean(grey, r)
    var_i = _box_mean(grey * grey, r) - mean_i * mean_i
    # The filter is linear in p and keeps constants, so the last class is 1 minus the others (one channel less).
    part = probs[:-1]
    mean_p = _box_mean(part, r)
    cov_ip = _box_mean(part * grey, r) - mean_i * mean_p
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    filtered = _box_mean(a, r) * grey + _box_mean(b, r)
    q = torch.cat([filtered, 1.0 - filtered.sum(dim=0, keepdim=True)]).clamp_(MIN_PROBABILITY, 1.0)
    return (q / q.sum(dim=0, keepdim=True)).to(torch.float32)
