"""The backbone's forward pass as an ONNX export run on the CPU by ONNX Runtime or OpenVINO
(``FeatureConfig.runtime="onnxruntime"`` or ``"openvino"``, :data:`.config.EXPORTED_RUNTIMES`).

:class:`OnnxForward` exports :func:`.vit.forward_tokens` of one loaded backbone, for one
(stride, facet, block), to an ONNX graph with dynamic batch, height and width, and runs it in an
ONNX Runtime CPU session or an OpenVINO model compiled for the CPU (float32 inference precision, never
bfloat16/float16; dynamic shapes, as one compiled model serves every tile shape). It is called like
``forward_tokens`` (float32 torch tensors in and out, the same shapes). The position tensors of a token grid (:func:`.vit.grid_positions`: the interpolated
DINOv2 table or the DINOv3 RoPE angles) are computed by torch for every shape and fed to the graph as
inputs, so one export is exact at every image size.

The export (seconds for a ViT-S, once per backbone and setting) is cached on disk, in
:func:`onnx_cache_folder`, under a key of the backbone's weights fingerprint, the setting, the torch
version, the opset and the source of the forward pass; a second process loads it. A cached file is
checked against the size and sha256 recorded beside it (and ONNX Runtime must load it); a damaged one
is exported again. Both runtimes read the same export file.

The runtimes are optional (``pip install 'napari-hrdv2[onnx]'``: onnxruntime and onnx;
``'napari-hrdv2[openvino]'``: openvino and onnx, which torch's exporter needs) and imported only here,
when a forward is made. ``benchmarks/bench_cpu.py --only runtimes`` measured one ViT-S/14 forward at
518 x 518 (float32, 2-core AVX-512 Xeon) in 0.86-0.91x the time of eager torch with OpenVINO and 1.02-1.05x
with ONNX Runtime when the cores are free, 0.5-0.7x for both at load 3-5 (benchmarks/README.md, "Runtimes").
"""

from __future__ import annotations

import atexit
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..config import EXPORTED_RUNTIMES, Facet
from ..errors import InputError
from ..files.atomic import atomic_path, write_json
from ..files.checksums import file_sha256
from . import vit
from .identity import backbone_family_of, backbone_fingerprint, family_title
from .vit import forward_tokens, grid_positions, token_grid

if TYPE_CHECKING:
    from .loading import Backbone

__all__ = [
    "ONNX_CACHE_ENV",
    "ONNX_OPSET",
    "OnnxForward",
    "export_key",
    "install_hint",
    "onnx_cache_folder",
    "onnx_forward",
    "require_runtime",
]

#: Folder of the cached exports, when set (else ``$XDG_CACHE_HOME/napari-hrdv2/onnx`` or ``~/.cache/...``).
ONNX_CACHE_ENV = "NAPARI_HRDV2_ONNX_CACHE"
#: The packages each exported runtime imports (onnx: torch's TorchScript exporter writes the graph with it).
_PACKAGES: dict[str, tuple[str, str]] = {"onnxruntime": ("onnxruntime", "onnx"), "openvino": ("openvino", "onnx")}
#: ONNX opset of the exported graphs.
ONNX_OPSET = 17
#: ONNX files hold at most 2 GiB of weights inline (protobuf limit); larger backbones are refused.
_MAX_WEIGHT_BYTES = 2**31 - 2**26
#: Bumped when the graph's inputs or outputs change (old cache files are then ignored).
_GRAPH_VERSION = 1


def onnx_cache_folder() -> Path:
    """Where exported graphs are kept: :data:`ONNX_CACHE_ENV`, else ``$XDG_CACHE_HOME/napari-hrdv2/onnx``
    (``~/.cache/napari-hrdv2/onnx`` without it)."""
    folder = os.environ.get(ONNX_CACHE_ENV, "").strip()
    if folder:
        return Path(folder).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(base).expanduser() if base else Path.home() / ".cache") / "napari-hrdv2" / "onnx"


def install_hint(runtime: str) -> str:
    """The command that installs an exported runtime (``"onnxruntime"`` or ``"openvino"``) with this package."""
    return f"pip install 'napari-hrdv2[{EXPORTED_RUNTIMES[runtime][1]}]'"


def _missing_message(runtime: str, missing: list[str]) -> str:
    return (
        f"runtime={runtime!r} needs the optional package{'s' if len(missing) > 1 else ''} {' and '.join(missing)}: "
        f"{install_hint(runtime)}, or use runtime='torch'."
    )


def require_runtime(runtime: str) -> None:
    """Raise :class:`InputError` with the install command when a package of an exported runtime is missing
    (imports none of them)."""
    missing = [name for name in _PACKAGES[runtime] if importlib.util.find_spec(name) is None]
    if missing:
        raise InputError(_missing_message(runtime, missing))


def _import_runtime(runtime: str) -> ModuleType:
    """The runtime's module (``onnxruntime`` or ``openvino``), after importing ``onnx`` for the exporter."""
    try:
        modules = [importlib.import_module(name) for name in _PACKAGES[runtime]]
    except ImportError as err:
        raise InputError(_missing_message(runtime, [err.name or str(err)])) from None
    return modules[0]


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _position_names(backbone: Backbone) -> tuple[str, ...]:
    return ("rope_cos", "rope_sin") if backbone.parts.rope_inv_freq is not None else ("positions",)


def _source_hash() -> str:
    """Hash of the forward pass's source: a changed forward pass is exported again."""
    digest = hashlib.sha256(str(_GRAPH_VERSION).encode())
    for module in (vit,):
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()


def export_key(backbone: Backbone, *, stride: int, facet: Facet, layer: int) -> str:
    """The cache key of one export: weights fingerprint, architecture, setting, torch/transformers versions, opset,
    code of the forward pass."""
    parameters = sorted((name, tuple(p.shape)) for name, p in backbone.model.named_parameters())
    digest = hashlib.sha256(np.ascontiguousarray(backbone_fingerprint(backbone.model), np.float32).tobytes())
    digest.update(
        json.dumps(
            {
                "parameters": parameters,
                "family": backbone_family_of(backbone),
                "patch": backbone.patch_size,
                "registers": backbone.num_registers,
                "heads": backbone.num_heads,
                "stride": stride,
                "facet": facet,
                "layer": layer,
                "torch": torch.__version__,
                "transformers": _version("transformers"),
                "opset": ONNX_OPSET,
                "code": _source_hash(),
            },
            sort_keys=True,
        ).encode()
    )
    return digest.hexdigest()[:24]


class _TokensGraph(torch.nn.Module):
    """``forward_tokens`` with the grid's position tensors as inputs (what is exported)."""

    def __init__(self, backbone: Backbone, *, stride: int, facet: Facet, layer: int) -> None:
        super().__init__()
        self.model = backbone.model
        self.backbone, self.stride, self.facet, self.layer = backbone, stride, facet, layer

    def forward(self, pixels: torch.Tensor, *positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return forward_tokens(
            self.backbone, pixels, stride=self.stride, with_attention=True, facet=self.facet, layer=self.layer,
            positions=positions,
        )  # fmt: skip


def _example_inputs(backbone: Backbone, stride: int) -> tuple[torch.Tensor, ...]:
    """A batch of 2 non-square padded images (5 x 4 tokens) and their positions: nothing shape-specific to trace."""
    patch = backbone.patch_size
    grid = (5, 4)
    pixels = torch.zeros(2, 3, patch + (grid[0] - 1) * stride, patch + (grid[1] - 1) * stride)
    with torch.no_grad():
        return (pixels, *(p.detach() for p in grid_positions(backbone, grid, stride=stride)))


def _export(backbone: Backbone, path: Path, *, stride: int, facet: Facet, layer: int) -> None:
    """Export the tokens graph of ``backbone`` to ``path`` atomically, with its size and sha256 beside it."""
    names = _position_names(backbone)
    axes: dict[str, dict[int, str]] = {
        "pixels": {0: "batch", 2: "height", 3: "width"},
        "tokens": {0: "batch", 2: "grid_height", 3: "grid_width"},
        "attention": {0: "batch", 2: "grid_height", 3: "grid_width"},
    }
    for name in names:  # DINOv2 table (1, 1 + n, C); RoPE (n, head_dim)
        axes[name] = {1: "positions"} if name == "positions" else {0: "positions"}
    graph = _TokensGraph(backbone, stride=stride, facet=facet, layer=layer).eval()
    with atomic_path(path, overwrite=True) as temporary, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings of the TorchScript exporter
        torch.onnx.export(
            graph, _example_inputs(backbone, stride), str(temporary), dynamo=False, opset_version=ONNX_OPSET,
            input_names=["pixels", *names], output_names=["tokens", "attention"], dynamic_axes=axes,
        )  # fmt: skip
    write_json(_record_path(path), {"size": path.stat().st_size, "sha256": file_sha256(path)}, overwrite=True)


_SESSION_FOLDER: list[Path] = []


def _session_folder() -> Path:
    """A private temporary folder for exports when the cache cannot be written, removed when Python exits."""
    if not _SESSION_FOLDER:
        folder = Path(tempfile.mkdtemp(prefix="napari-hrdv2-onnx-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        _SESSION_FOLDER.append(folder)
    return _SESSION_FOLDER[0]


def _record_path(path: Path) -> Path:
    return path.with_suffix(".json")


def _intact(path: Path) -> bool:
    """True when ``path`` and its record exist and the file has the recorded size and sha256."""
    try:
        record = json.loads(_record_path(path).read_text())
        if path.stat().st_size != record["size"]:
            return False
        return file_sha256(path) == record["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


#: A loaded graph: float32 feed by input name -> (tokens, attention) arrays.
GraphRun = Callable[[dict[str, np.ndarray]], tuple[np.ndarray, np.ndarray]]


def _onnxruntime_run(onnxruntime: ModuleType, path: Path, threads: int) -> GraphRun:
    """An ONNX Runtime CPU session of ``path``, all graph optimisations (its ``run`` is thread-safe)."""
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    # Idle threads sleep instead of spinning: kinder to napari's GUI thread and other processes (no slower here).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(feed: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        tokens, attention = session.run(["tokens", "attention"], feed)
        return tokens, attention

    return run


#: OpenVINO CPU settings: exact float32 (CPUs with AMX or AVX512-BF16 would otherwise infer in bfloat16) and one
#: stream for the lowest latency of one call (its default on the CPU; measured no slower than a static shape).
_OPENVINO_CONFIG = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}


def _openvino_run(openvino: ModuleType, path: Path, threads: int) -> GraphRun:
    """``path`` read by OpenVINO (its ONNX reader) and compiled for the CPU, dynamic shapes, float32."""
    core = openvino.Core()
    config = {**_OPENVINO_CONFIG, "INFERENCE_NUM_THREADS": max(1, threads)}
    compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
    request = compiled.create_infer_request()
    lock = threading.Lock()  # one infer request: one call at a time

    def run(feed: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        with lock:
            outputs = request.infer(feed)  # copies of the output tensors (share_outputs=False)
            return outputs["tokens"], outputs["attention"]

    return run


_RUNNERS: dict[str, Callable[[ModuleType, Path, int], GraphRun]] = {
    "onnxruntime": _onnxruntime_run,
    "openvino": _openvino_run,
}


class OnnxForward:
    """``forward_tokens`` of one backbone and (stride, facet, block), exported to ONNX and run on the CPU by
    ONNX Runtime or OpenVINO.

    Parameters
    ----------
    backbone : Backbone
        A float32 backbone on the CPU.
    runtime : {"onnxruntime", "openvino"}
        What runs the export (the same cached file serves both).
    stride : int or None
        Patch-embedding stride (``None``: the patch size).
    facet, layer
        As in :func:`.vit.forward_tokens`.
    cache_folder : path or None
        Where exports are kept (default :func:`onnx_cache_folder`).
    threads : int or None
        The runtime's threads (default: torch's thread count now).

    Raises
    ------
    InputError
        The runtime's packages are missing, or the backbone is not float32 on the CPU or too large for one file.
    """

    def __init__(
        self,
        backbone: Backbone,
        *,
        runtime: str = "onnxruntime",
        stride: int | None = None,
        facet: Facet = "token",
        layer: int | None = None,
        cache_folder: str | Path | None = None,
        threads: int | None = None,
    ) -> None:
        if runtime not in _RUNNERS:
            raise ValueError(f"runtime={runtime!r} is not one of {tuple(_RUNNERS)}.")
        module = _import_runtime(runtime)
        if backbone.device.type != "cpu" or backbone.dtype != torch.float32:
            raise InputError(
                f"runtime={runtime!r} runs float32 on the CPU; this {family_title(backbone_family_of(backbone))} "
                f"backbone is {str(backbone.dtype).removeprefix('torch.')} on {backbone.device}. "
                "Use device='cpu' and dtype='float32' (or 'auto'), or runtime='torch'."
            )
        n_bytes = sum(p.numel() * p.element_size() for p in backbone.model.parameters())
        if n_bytes > _MAX_WEIGHT_BYTES:
            raise InputError(
                f"This {family_title(backbone_family_of(backbone))} backbone has {n_bytes / 2**30:.1f} GiB of weights, "
                "more than one ONNX file holds (2 GiB): use runtime='torch' or a smaller backbone."
            )
        depth = backbone.depth
        if layer is not None and not -depth <= int(layer) < depth:
            raise ValueError(f"layer={layer} is outside this backbone's {depth} blocks (0..{depth - 1}).")
        self.backbone = backbone
        self.runtime = runtime
        self.stride = int(stride or backbone.patch_size)
        self.facet: Facet = facet
        self.layer = (depth - 1 if layer is None else int(layer)) % depth
        self.threads = int(threads or torch.get_num_threads())
        folder = Path(cache_folder) if cache_folder is not None else onnx_cache_folder()
        key = export_key(backbone, stride=self.stride, facet=facet, layer=self.layer)
        #: The exported graph (``<key>.onnx``, its size and sha256 in ``<key>.json`` beside it).
        self.path = folder / f"{key}.onnx"
        #: True when this object exported the graph (False: a cached export was loaded).
        self.exported = False
        self._names = _position_names(backbone)
        self._run = self._load_or_export(module)

    def _load_or_export(self, module: ModuleType) -> GraphRun:
        load = _RUNNERS[self.runtime]
        if _intact(self.path):
            try:
                return load(module, self.path, self.threads)
            except Exception:  # noqa: BLE001  (an unreadable cache file: export it again)
                pass
        try:
            _export(self.backbone, self.path, stride=self.stride, facet=self.facet, layer=self.layer)
        except OSError as err:  # OutputError too: the cache folder cannot be written
            folder = _session_folder()
            warnings.warn(
                f"{err}: the exported backbone was written to {folder} for this session only (exported again in "
                f"the next). Set {ONNX_CACHE_ENV} to a writable folder to keep it.",
                RuntimeWarning,
                stacklevel=3,
            )
            self.path = folder / self.path.name
            _export(self.backbone, self.path, stride=self.stride, facet=self.facet, layer=self.layer)
        self.exported = True
        return load(module, self.path, self.threads)

    def __call__(
        self, pixels: torch.Tensor, *, with_attention: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Tokens (B, C, gh, gw) and CLS attention (B, heads, gh, gw) of (B, 3, Hp, Wp) pixels, as ``forward_tokens``."""
        patch = self.backbone.patch_size
        grid = token_grid(pixels.shape[-2], pixels.shape[-1], patch_size=patch, stride=self.stride)
        with torch.no_grad():
            positions = grid_positions(self.backbone, grid, stride=self.stride)
        feed = {"pixels": np.ascontiguousarray(pixels.detach().cpu().numpy(), dtype=np.float32)}
        feed.update({name: p.detach().numpy() for name, p in zip(self._names, positions)})
        tokens, attention = self._run(feed)
        return torch.from_numpy(tokens), (torch.from_numpy(attention) if with_attention else None)


_FORWARDS_LOCK = threading.Lock()


def onnx_forward(
    backbone: Backbone,
    *,
    runtime: str = "onnxruntime",
    stride: int | None = None,
    facet: Facet = "token",
    layer: int | None = None,
) -> OnnxForward:
    """The :class:`OnnxForward` of a backbone, runtime and setting, made once per backbone and torch thread count.

    Kept in ``backbone.compiled``, so it lives as long as the loaded backbone.
    """
    depth = backbone.depth
    index = depth - 1 if layer is None else int(layer)
    if not -depth <= index < depth:
        raise ValueError(f"layer={layer} is outside this backbone's {depth} blocks (0..{depth - 1}).")
    key = (runtime, int(stride or backbone.patch_size), facet, index % depth, torch.get_num_threads())
    with _FORWARDS_LOCK:
        if key not in backbone.compiled:
            backbone.compiled[key] = OnnxForward(backbone, runtime=runtime, stride=stride, facet=facet, layer=index)
        return backbone.compiled[key]
