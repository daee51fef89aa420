"""Device and dtype resolution (``"auto"`` = CUDA, then MPS, then CPU).

``dtype="auto"`` picks float16 on CUDA, float32 on MPS, and on the CPU bfloat16 exactly where the
processor computes it natively (:func:`cpu_bfloat16_support`), float32 elsewhere: where bfloat16 is
emulated it is slower than float32 (this project's AVX2 AMD EPYC: one ViT-S/14 forward at 518 x 518
took 1.8x longer in bfloat16, 4.7x longer under CPU autocast; ``benchmarks/bench_cpu.py``).
The environment variable ``NAPARI_HRDV2_CPU_BFLOAT16`` (``1`` or ``0``) overrides that detection
(:data:`CPU_BFLOAT16_ENV`): e.g. ``NAPARI_HRDV2_CPU_BFLOAT16=1 pytest`` runs the tests as on a
bfloat16 CPU, ``=0`` as on a float32 one, in every process they start.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..config import DTYPE_OPTIONS, EXPORTED_RUNTIMES
from ..errors import InputError

#: torch dtype of every name in :data:`.config.DTYPE_OPTIONS` but "auto".
_DTYPES = {name: getattr(torch, name) for name in DTYPE_OPTIONS if name != "auto"}


def inference_mode() -> torch.inference_mode:
    """The context every encode, projection and prediction runs under (no autograd bookkeeping).

    Thread-local: enter it in the thread that computes (napari worker threads included). Training
    (:func:`.solver.fit_logistic`) runs outside it: its optimiser needs autograd tensors.
    """
    return torch.inference_mode()


def resolve_device(device: str | torch.device = "auto", *, runtime: str = "torch") -> torch.device:
    """Return the torch device for ``device`` (``"auto"``, ``"cpu"``, ``"cuda[:i]"``, ``"mps"``).

    Under an exported runtime (``FeatureConfig.runtime`` "onnxruntime" or "openvino",
    :data:`.config.EXPORTED_RUNTIMES`) "auto" is the CPU, and another device raises :class:`InputError`:
    those runtimes run on the CPU only.
    """
    if runtime in EXPORTED_RUNTIMES:
        try:
            resolved = torch.device("cpu" if device == "auto" else device)
        except (RuntimeError, TypeError) as err:
            raise InputError(f"Unknown device {device!r}: use 'auto' or 'cpu' with runtime={runtime!r}.") from err
        if resolved.type != "cpu":
            raise InputError(
                f"runtime={runtime!r} runs on the CPU only, not on {resolved}: use device='cpu' (or 'auto'), "
                "or runtime='torch' to compute on the GPU."
            )
        return resolved
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise InputError(f"Unknown device {device!r}: use 'auto', 'cpu', 'cuda', 'cuda:1' or 'mps'.") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError(
            f"Device {device!r} was requested but this PyTorch has no usable CUDA "
            f"(torch {torch.__version__}). Use device='cpu' or install a CUDA build of PyTorch."
        )
    return resolved


def _named_dtype(value: str, option: str) -> torch.dtype:
    try:
        return _DTYPES[value]
    except KeyError:
        raise InputError(f"Unknown {option} {value!r}: use one of {', '.join(map(repr, DTYPE_OPTIONS))}.") from None


@dataclass(frozen=True)
class DtypeChoice:
    """The compute dtype a Featurizer uses and why (shown in its repr, the widget and ``--verbose``)."""

    dtype: torch.dtype
    reason: str

    @property
    def name(self) -> str:
        """``"float32"``, ``"float16"`` or ``"bfloat16"``."""
        return str(self.dtype).removeprefix("torch.")

    def __str__(self) -> str:
        return f"{self.name} ({self.reason})"


@dataclass(frozen=True)
class Bfloat16Support:
    """Whether this CPU computes bfloat16 natively, how that was decided, and in words."""

    native: bool
    method: str  # "capabilities" (torch's CPU capability flags), "measured" (a short timing) or "environment"
    detail: str


#: Native bfloat16 matrix instructions torch's CPU kernels (oneDNN, ACL, KleidiAI) use, by flag in
#: ``torch.cpu.get_capabilities()``: x86 AMX-BF16 and AVX512-BF16, Arm BF16 (BFMMLA/BFDOT) and SVE-BF16.
_X86_BF16_FLAGS = {"amx_bf16": "AMX-BF16", "avx512_bf16": "AVX512-BF16"}
_ARM_BF16_FLAGS = {"bf16": "Arm BF16", "sve_bf16": "SVE-BF16"}
_ARM_NAMES = ("arm64", "aarch64", "arm")
#: Overrides the detection when set: "1" (bfloat16 is native here) or "0" (it is not).
CPU_BFLOAT16_ENV = "NAPARI_HRDV2_CPU_BFLOAT16"
#: The measured fallback picks bfloat16 when its matrix product takes at most this fraction of float32's.
_MEASURED_SPEEDUP_NEEDED = 0.75


def _cpu_capabilities() -> Mapping[str, Any]:
    """``torch.cpu.get_capabilities()`` (torch >= 2.9), or ``{}`` where torch cannot tell."""
    query = getattr(getattr(torch, "cpu", None), "get_capabilities", None)
    if query is None:
        return {}
    try:
        return query()
    except Exception:  # cpuinfo failed to initialise (unusual kernels, sandboxes): measure instead
        return {}


def _mkldnn_bf16_supported() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:
        return False


def measure_bfloat16_speedup(repeats: int = 5) -> float:
    """Time of a ViT-S-sized matrix product in bfloat16 divided by float32 (min of interleaved repeats).

    ``(1369, 384) @ (384, 1536)``: one 518 x 518 tile through a ViT-S/14 MLP layer, ~0.8 GFLOP, a few
    tens of milliseconds in all. Below 1 means bfloat16 is faster.
    """
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(1369, 384, generator=generator)
    weight = torch.randn(1536, 384, generator=generator)
    pairs = {dtype: (inputs.to(dtype), weight.to(dtype)) for dtype in (torch.float32, torch.bfloat16)}
    best = dict.fromkeys(pairs, float("inf"))
    with torch.inference_mode():
        for x, w in pairs.values():  # warm-up: first calls pick kernels and allocate
            torch.nn.functional.linear(x, w)
        for _ in range(repeats):
            for dtype, (x, w) in pairs.items():
                start = time.perf_counter()
                torch.nn.functional.linear(x, w)
                best[dtype] = min(best[dtype], time.perf_counter() - start)
    return best[torch.bfloat16] / max(best[torch.float32], 1e-9)


def detect_cpu_bfloat16(
    capabilities: Mapping[str, Any],
    *,
    mkldnn_bf16: bool,
    measure: Callable[[], float] = measure_bfloat16_speedup,
) -> Bfloat16Support:
    """Decide whether bfloat16 is native on a CPU with these capability flags (pure; see :func:`cpu_bfloat16_support`).

    Parameters
    ----------
    capabilities : mapping
        ``torch.cpu.get_capabilities()``: flag name -> bool, plus ``"architecture"``.
    mkldnn_bf16 : bool
        ``torch.ops.mkldnn._is_mkldnn_bf16_supported()``: torch's oneDNN can run bfloat16 here
        (natively or emulated: on x86 it is also true on plain AVX-512 CPUs).
    measure : callable
        Returns the bfloat16 / float32 time ratio; called only when the flags are inconclusive.
    """
    architecture = str(capabilities.get("architecture", "")).lower()
    if architecture in ("x86_64", "x86", "amd64", "i386", "i686") and "avx2" in capabilities:
        native = [name for flag, name in _X86_BF16_FLAGS.items() if capabilities.get(flag)]
        if native:
            return Bfloat16Support(True, "capabilities", f"{' and '.join(native)} CPU")
        if not mkldnn_bf16:
            return Bfloat16Support(False, "capabilities", "CPU without AMX-BF16 or AVX512-BF16")
        # Plain AVX-512: oneDNN emulates bfloat16 there; whether that beats float32 depends on the model.
    elif architecture in _ARM_NAMES and "bf16" in capabilities:
        native = [name for flag, name in _ARM_BF16_FLAGS.items() if capabilities.get(flag)]
        if not native:
            return Bfloat16Support(False, "capabilities", "Arm CPU without the BF16 extension")
        if mkldnn_bf16:  # oneDNN/ACL bfloat16 kernels on BF16 hardware (e.g. AWS Graviton 3/4)
            return Bfloat16Support(True, "capabilities", f"{' and '.join(native)} CPU with oneDNN bfloat16 kernels")
        # BF16 hardware without torch's oneDNN bfloat16 kernels (e.g. macOS builds): time it.
    ratio = measure()
    native = ratio <= _MEASURED_SPEEDUP_NEEDED
    verdict = "faster" if native else "not faster"
    return Bfloat16Support(
        native, "measured", f"capability flags inconclusive; bfloat16 matrix product {verdict} ({ratio:.2f}x float32)"
    )


@functools.lru_cache(maxsize=1)
def cpu_bfloat16_support() -> Bfloat16Support:
    """Whether this process's CPU computes bfloat16 natively (detected once per process).

    From torch's capability checks (``torch.cpu.get_capabilities()``: AMX-BF16 / AVX512-BF16 on x86,
    BF16 on Arm, and ``torch.ops.mkldnn._is_mkldnn_bf16_supported()``), or, when they are inconclusive
    (plain AVX-512, Arm BF16 without oneDNN kernels, unknown architecture), from a ~0.1 s timing of
    one matrix product in both dtypes (:func:`measure_bfloat16_speedup`). :data:`CPU_BFLOAT16_ENV`
    (``1`` / ``0``), when set, decides instead.
    """
    forced = os.environ.get(CPU_BFLOAT16_ENV, "").strip()
    if forced in ("1", "0"):
        detail = "CPU" if forced == "1" else "CPU without native bfloat16"
        return Bfloat16Support(forced == "1", "environment", f"{detail} ({CPU_BFLOAT16_ENV}={forced})")
    if forced:
        raise InputError(f"{CPU_BFLOAT16_ENV}={forced!r}: use 1 (bfloat16 is native here) or 0 (it is not).")
    return detect_cpu_bfloat16(_cpu_capabilities(), mkldnn_bf16=_mkldnn_bf16_supported())


def choose_dtype(dtype: str | torch.dtype, device: torch.device, *, runtime: str = "torch") -> DtypeChoice:
    """The compute dtype for ``dtype`` on ``device``, with the reason.

    ``"auto"``: float16 on CUDA; float32 on MPS; on the CPU bfloat16 where the processor computes it
    natively (:func:`cpu_bfloat16_support`), else float32. Under an exported runtime (``"onnxruntime"``,
    ``"openvino"``; CPU only) it is float32, the one precision those runtimes compute here (OpenVINO is told so:
    never bfloat16 or float16); another dtype raises :class:`InputError`.
    """
    if runtime in EXPORTED_RUNTIMES:
        title = EXPORTED_RUNTIMES[runtime][0]
        if dtype in ("auto", torch.float32, "float32"):
            return DtypeChoice(torch.float32, f"auto: float32 under {title}" if dtype == "auto" else "given")
        name = str(dtype).removeprefix("torch.")
        raise InputError(
            f"runtime={runtime!r} computes in float32, not {name}: use dtype='float32' (or 'auto'), "
            "or runtime='torch' for 16-bit precision."
        )
    if isinstance(dtype, torch.dtype):
        return DtypeChoice(dtype, "given")
    if dtype != "auto":
        return DtypeChoice(_named_dtype(dtype, "dtype"), "given")
    if device.type == "cuda":
        return DtypeChoice(torch.float16, "auto: float16 on CUDA")
    if device.type != "cpu":
        return DtypeChoice(torch.float32, f"auto: float32 on {device.type}")
    support = cpu_bfloat16_support()
    if support.native:
        return DtypeChoice(torch.bfloat16, f"auto: native bfloat16 on this {support.detail}")
    return DtypeChoice(torch.float32, f"auto: {support.detail}, so bfloat16 would be emulated and slower")


def describe_precision(
    device: str | torch.device = "auto", dtype: str | torch.dtype = "auto", *, runtime: str = "torch"
) -> str:
    """The device and compute dtype a FeatureConfig's ``device`` and ``dtype`` give here, with the reason.

    E.g. ``"cpu, float32 (auto: CPU without AMX-BF16 or AVX512-BF16, so bfloat16 would be emulated and
    slower)"``. Loads no model; raises :class:`InputError` for an unusable device.
    """
    resolved = resolve_device(device, runtime=runtime)
    exported = f", {EXPORTED_RUNTIMES[runtime][0]}" if runtime in EXPORTED_RUNTIMES else ""
    return f"{resolved}{exported}, {choose_dtype(dtype, resolved, runtime=runtime)}"


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """The compute dtype for ``dtype`` on ``device`` (:func:`choose_dtype` without the reason)."""
    return choose_dtype(dtype, device).dtype


def resolve_storage_dtype(storage_dtype: str | torch.dtype, compute_dtype: torch.dtype) -> torch.dtype:
    """``"auto"`` keeps a 16-bit compute dtype and stores float32 results as float16."""
    if isinstance(storage_dtype, torch.dtype):
        return storage_dtype
    if storage_dtype == "auto":
        return compute_dtype if compute_dtype in (torch.float16, torch.bfloat16) else torch.float16
    return _named_dtype(storage_dtype, "storage_dtype")


def is_out_of_memory(error: BaseException) -> bool:
    """True for CUDA/MPS out-of-memory errors (which are worth a retry with a smaller batch)."""
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(error, oom):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()
