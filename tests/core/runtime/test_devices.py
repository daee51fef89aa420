"""dtype="auto": bfloat16 on the CPU exactly where it is native; float16 on CUDA; bf16 features agree with float32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_hrdv2 as hr
from napari_hrdv2.core.runtime import devices
from napari_hrdv2.core.runtime.devices import Bfloat16Support, choose_dtype, detect_cpu_bfloat16

X86_AVX2 = {"architecture": "x86_64", "avx2": True, "avx512_f": False, "avx512_bf16": False, "amx_bf16": False}
X86_AVX512 = {**X86_AVX2, "avx512_f": True}
X86_AVX512_BF16 = {**X86_AVX512, "avx512_bf16": True}
X86_AMX = {**X86_AVX512_BF16, "amx_bf16": True, "amx_tile": True}
ARM = {"architecture": "aarch64", "neon": True, "bf16": False, "sve_bf16": False}
ARM_BF16 = {**ARM, "bf16": True, "sve_bf16": True}


def _no_measure() -> float:
    raise AssertionError("the flags are conclusive: nothing should be timed")


@pytest.mark.parametrize(
    ("capabilities", "mkldnn_bf16", "native", "words"),
    [
        (X86_AMX, True, True, "AMX-BF16"),
        (X86_AVX512_BF16, True, True, "AVX512-BF16"),
        (X86_AVX2, False, False, "without AMX-BF16 or AVX512-BF16"),
        (ARM_BF16, True, True, "Arm BF16"),
        (ARM, False, False, "without the BF16 extension"),
    ],
)
def test_capability_flags_decide_without_timing(capabilities, mkldnn_bf16, native, words):
    support = detect_cpu_bfloat16(capabilities, mkldnn_bf16=mkldnn_bf16, measure=_no_measure)
    assert support.native is native and support.method == "capabilities" and words in support.detail


@pytest.mark.parametrize(
    ("capabilities", "mkldnn_bf16"),
    [
        (X86_AVX512, True),  # oneDNN emulates bfloat16 on plain AVX-512
        (ARM_BF16, False),  # BF16 hardware but no oneDNN bfloat16 kernels in this torch
        ({}, False),  # torch could not query the CPU
        ({"architecture": "riscv64"}, False),
    ],
)
@pytest.mark.parametrize(("ratio", "native"), [(0.4, True), (1.3, False)])
def test_inconclusive_flags_fall_back_to_a_timing(capabilities, mkldnn_bf16, ratio, native):
    calls = []
    support = detect_cpu_bfloat16(capabilities, mkldnn_bf16=mkldnn_bf16, measure=lambda: calls.append(1) or ratio)
    assert calls == [1]
    assert support.native is native and support.method == "measured" and f"{ratio:.2f}x" in support.detail


def test_measured_speedup_is_a_positive_ratio():
    assert 0 < devices.measure_bfloat16_speedup(repeats=1) < 100


def test_measured_speedup_is_the_bfloat16_time_over_the_float32_time(monkeypatch):
    """With a clock on which every float32 product takes 4 s and every bfloat16 one 1 s, the ratio is 1/4."""
    seconds = {torch.float32: 4.0, torch.bfloat16: 1.0}
    clock = {"now": 0.0, "started": False}
    real_linear = torch.nn.functional.linear

    def timed_linear(x, w):
        if clock["started"]:  # the timed calls (not the warm-up) advance the clock by their dtype's time
            clock["now"] += seconds[x.dtype]
        return real_linear(x, w)

    def perf_counter():
        clock["started"] = True
        return clock["now"]

    monkeypatch.setattr(devices, "time", type("FakeTime", (), {"perf_counter": staticmethod(perf_counter)}))
    monkeypatch.setattr(torch.nn.functional, "linear", timed_linear)
    assert devices.measure_bfloat16_speedup(repeats=2) == pytest.approx(0.25)


@pytest.fixture
def fresh_detection():
    """Forget the cached CPU bfloat16 detection before and after the test (it then follows the restored env)."""
    devices.cpu_bfloat16_support.cache_clear()
    yield
    devices.cpu_bfloat16_support.cache_clear()


def test_this_cpu_is_detected_once_and_consistently_with_torch(monkeypatch, fresh_detection):
    monkeypatch.delenv(devices.CPU_BFLOAT16_ENV, raising=False)  # the real detection, even in a forced run
    support = devices.cpu_bfloat16_support()
    assert devices.cpu_bfloat16_support() is support  # cached per process
    capabilities = torch.cpu.get_capabilities()
    if capabilities.get("amx_bf16") or capabilities.get("avx512_bf16"):
        assert support.native
    elif capabilities.get("architecture") == "x86_64" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        assert not support.native and support.method == "capabilities"


@pytest.fixture(params=[True, False], ids=["bf16-native", "bf16-emulated"])
def native_bf16(request, monkeypatch):
    """Pretend this CPU computes bfloat16 natively (or not)."""
    support = Bfloat16Support(request.param, "capabilities", "mocked CPU")
    monkeypatch.setattr(devices, "cpu_bfloat16_support", lambda: support)
    return request.param


def test_auto_resolves_to_bfloat16_on_the_cpu_exactly_when_native(native_bf16):
    choice = choose_dtype("auto", torch.device("cpu"))
    assert choice.dtype == (torch.bfloat16 if native_bf16 else torch.float32)
    assert "mocked CPU" in choice.reason and choice.name in str(choice)
    # Other devices and explicit dtypes do not look at the CPU.
    assert choose_dtype("auto", torch.device("cuda")).dtype == torch.float16
    assert choose_dtype("auto", torch.device("mps")).dtype == torch.float32
    for name in ("float32", "float16", "bfloat16"):
        assert choose_dtype(name, torch.device("cpu")) == devices.DtypeChoice(getattr(torch, name), "given")
    assert devices.resolve_storage_dtype("auto", choice.dtype) == (torch.bfloat16 if native_bf16 else torch.float16)


@pytest.mark.parametrize(("value", "expected"), [("1", torch.bfloat16), ("0", torch.float32)])
def test_environment_variable_decides_the_cpu_auto_dtype(monkeypatch, fresh_detection, value, expected):
    """NAPARI_HRDV2_CPU_BFLOAT16=1 / 0 (how the suite is run as on a bfloat16 CPU / a float32 one) replaces the
    detection; it reaches every process started with that environment (distributed workers included)."""
    monkeypatch.setenv(devices.CPU_BFLOAT16_ENV, value)
    monkeypatch.setattr(devices, "detect_cpu_bfloat16", lambda *a, **k: pytest.fail("detected despite the variable"))
    choice = choose_dtype("auto", torch.device("cpu"))
    assert choice.dtype == expected and f"{devices.CPU_BFLOAT16_ENV}={value}" in choice.reason
    assert devices.cpu_bfloat16_support().method == "environment"
    assert choose_dtype("float32", torch.device("cpu")).dtype == torch.float32  # an explicit dtype is kept
    assert choose_dtype("auto", torch.device("cuda")).dtype == torch.float16  # CUDA does not look at the CPU


def test_environment_variable_with_another_value_is_an_input_error(monkeypatch, fresh_detection):
    monkeypatch.setenv(devices.CPU_BFLOAT16_ENV, "yes")
    with pytest.raises(hr.InputError, match="NAPARI_HRDV2_CPU_BFLOAT16='yes'"):
        choose_dtype("auto", torch.device("cpu"))


def test_featurizer_reports_the_chosen_dtype_and_float32_stays_exact(tiny_backbone, native_bf16):
    image = np.random.default_rng(3).random((42, 56)).astype(np.float32)
    config = hr.FeatureConfig(backbone=tiny_backbone, device="cpu", shifts="none", tile_size=None)
    auto = hr.Featurizer(config)
    expected = "bfloat16" if native_bf16 else "float32"
    assert auto.dtype == getattr(torch, expected)
    assert f"dtype={expected} (auto: " in repr(auto) and "mocked CPU" in repr(auto)
    assert auto.precision.startswith(f"cpu, {expected}")
    exact = hr.Featurizer(config.replace(dtype="float32", storage_dtype="float32"))
    assert exact.dtype == torch.float32 and "float32 (given)" in repr(exact)
    reference = hr.Featurizer(config.replace(dtype="float32", storage_dtype="float32"), backbone=exact.backbone)
    np.testing.assert_array_equal(exact.encode(image).features(), reference.encode(image).features())


def _pixel_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of the (C,) feature vectors of two (C, H, W) maps, per pixel: (H, W)."""
    dots = np.einsum("chw,chw->hw", a.astype(np.float64), b.astype(np.float64))
    return dots / (np.linalg.norm(a, axis=0) * np.linalg.norm(b, axis=0))


@pytest.fixture(scope="module")
def vits14_backbone(tmp_path_factory) -> str:
    """A random-init DINOv2 ViT-S/14 (384 dims, 12 layers, 6 heads) saved with save_pretrained."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4,
                          patch_size=14, image_size=518)  # fmt: skip
    path = tmp_path_factory.mktemp("models") / "vits14"
    Dinov2Model(config).save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("model", ["tiny", "vits14"])
def test_bfloat16_features_agree_with_float32(model, request):
    """bfloat16 compute (what auto picks on AMX / AVX512-BF16 CPUs): per-pixel cosine to float32 >= 0.999."""
    backbone = request.getfixturevalue("tiny_backbone" if model == "tiny" else "vits14_backbone")
    image = np.random.default_rng(5).random((70, 84)).astype(np.float32)
    shifts = {"shifts": "neumann", "shift_distances": (3,)} if model == "tiny" else {"shifts": "none"}  # keep it fast
    config = hr.FeatureConfig(backbone=backbone, device="cpu", tile_size=None, **shifts)
    full = hr.Featurizer(config.replace(dtype="float32")).encode(image)
    half = hr.Featurizer(config.replace(dtype="bfloat16")).encode(image)
    assert half.tiles[0].maps.dtype == torch.bfloat16
    cosine = _pixel_cosine(half.features(), full.features())
    print(f"{model}: per-pixel cosine bf16 vs float32 min {cosine.min():.6f} mean {cosine.mean():.6f}")
    assert cosine.min() >= 0.999, f"min per-pixel cosine {cosine.min():.5f}"
    # Attention is computed in float32 from the bfloat16 queries and keys: close, and a distribution.
    attention = half.attention()
    assert attention.dtype == np.float32
    np.testing.assert_allclose(attention, full.attention(), atol=0.02)


def test_cli_verbose_says_which_dtype_and_why(tmp_path, capsys, tiny_backbone, native_bf16):
    import tifffile

    from conftest import two_texture_image
    from napari_hrdv2.cli import main

    image, truth = two_texture_image(56)
    labels = np.where(truth == 1, 1, 2).astype(np.uint8) * (np.arange(56)[None, :] % 7 == 0)
    tifffile.imwrite(tmp_path / "img.tif", image)
    tifffile.imwrite(tmp_path / "labels.tif", labels)
    opts = ["--backbone", tiny_backbone, "--device", "cpu", "--shifts", "none", "--tile-size", "none", "-q"]
    expected = "bfloat16 (auto: native bfloat16 on this mocked CPU)" if native_bf16 else "float32 (auto: mocked CPU"
    runs = {
        "features": ["features", tmp_path / "img.tif", "-o", tmp_path / "f.npy"],
        "train": ["train", tmp_path / "img.tif", "--labels", tmp_path / "labels.tif", "-o", tmp_path / "m.hrdv2"],
    }
    for command, args in runs.items():
        assert main([str(a) for a in [*args, *opts, "-v"]]) == 0, command
        err = capsys.readouterr().err
        assert f"device and compute dtype: cpu, {expected}" in err, (command, err)
    assert main([str(a) for a in [*runs["features"], *opts, "--overwrite"]]) == 0
    assert "compute dtype" not in capsys.readouterr().err  # only with --verbose


@pytest.mark.gui
def test_features_widget_shows_the_chosen_dtype(make_napari_viewer, tiny_backbone, native_bf16):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-hrdv2", "HR-Dv2 Features")
    widget.set_settings(hr.FeatureConfig(backbone=tiny_backbone, device="cpu", tile_size=None))
    expected = "bfloat16 (auto: native bfloat16" if native_bf16 else "float32 (auto: mocked CPU"
    assert widget._precision.value.startswith(f"cpu, {expected}")
    assert widget._precision.value == hr.Featurizer(widget.settings).precision
    if not torch.cuda.is_available():
        widget._device.value = "cuda"
        assert "no usable CUDA" in widget._precision.value
