"""ONNX Runtime and OpenVINO as the backbone's runtime (``FeatureConfig.runtime="onnxruntime"`` / ``"openvino"``,
core/backbone/onnx_forward.py); the tests of a behaviour both share run for each.

Random-init tiny backbones (no real weights). Features are compared in float32 (compute and storage dtype
pinned), so the tests pass on any CPU (OpenVINO is told to infer in float32 even where bfloat16 is native).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

import napari_hrdv2 as hr
from conftest import two_texture_image
from napari_hrdv2.core.backbone.loading import load_backbone
from napari_hrdv2.core.backbone.onnx_forward import ONNX_CACHE_ENV, OnnxForward, install_hint, onnx_cache_folder
from napari_hrdv2.core.backbone.vit import forward_tokens
from napari_hrdv2.core.errors import InputError

RTOL = 1e-4


def installed(runtime: str):
    """``runtime`` as a test parameter, skipped where its optional packages are not installed."""
    packages = {"onnxruntime": ("onnxruntime", "onnx"), "openvino": ("openvino", "onnx")}[runtime]
    missing = [name for name in packages if importlib.util.find_spec(name) is None]
    return pytest.param(runtime, marks=pytest.mark.skipif(bool(missing), reason=f"{install_hint(runtime)} first"))


EXPORTED = [installed("onnxruntime"), installed("openvino")]


@pytest.fixture(autouse=True)
def onnx_cache(tmp_path, monkeypatch):
    """Every test exports into its own folder, never into the user's cache."""
    folder = tmp_path / "onnx-cache"
    monkeypatch.setenv(ONNX_CACHE_ENV, str(folder))
    return folder


def float32_config(backbone: str, **changes) -> hr.FeatureConfig:
    return hr.FeatureConfig(
        backbone=backbone, device="cpu", dtype="float32", storage_dtype="float32", shifts="neumann",
        shift_distances=(3,), tile_size=None, **changes,
    )  # fmt: skip


def relative_error(found: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(found - expected).max() / np.abs(expected).max())


def fresh_backbone(path: str):
    """A backbone object of its own (not the process cache's), so nothing made for another test is reused."""
    return load_backbone(path, device="cpu", dtype=torch.float32, cache=False)


@pytest.mark.parametrize("runtime", EXPORTED)
@pytest.mark.parametrize("family", ["tiny_backbone", "tiny_backbone_registers", "tiny_dinov3"])
def test_exported_runtime_features_equal_torch_features_at_two_image_sizes(family, runtime, request):
    path = request.getfixturevalue(family)
    config = float32_config(path)
    backbone = fresh_backbone(path)
    eager = hr.Featurizer(config, backbone=backbone)
    onnx = hr.Featurizer(config.replace(runtime=runtime), backbone=backbone)
    assert onnx.dtype_choice.dtype == torch.float32
    for shape in ((100, 90), (61, 130)):  # the second size runs the graph exported for the first (dynamic axes)
        image = (np.random.default_rng(shape[0]).random(shape) * 255).astype(np.uint8)
        expected, found = eager.encode(image), onnx.encode(image)
        assert relative_error(found.features(), expected.features()) < RTOL
        assert relative_error(found.attention(), expected.attention()) < RTOL
        for mine, theirs in zip(found.lowres_maps, expected.lowres_maps):
            assert relative_error(mine.numpy(), theirs.numpy()) < RTOL
    (forward,) = backbone.compiled.values()  # one export (one compiled graph) served both sizes
    assert forward.runtime == runtime


@pytest.mark.parametrize("runtime", EXPORTED)
def test_strided_key_facet_of_an_inner_block_and_a_batch_match_torch(tiny_dinov3, runtime):
    backbone = fresh_backbone(tiny_dinov3)
    forward = OnnxForward(backbone, runtime=runtime, stride=8, facet="key", layer=0)
    pixels = torch.randn(3, 3, 16 + 8 * 9, 16 + 8 * 6)
    with torch.inference_mode():
        tokens, attention = forward_tokens(backbone, pixels, stride=8, facet="key", layer=0)
    found_tokens, found_attention = forward(pixels)
    assert found_tokens.shape == tokens.shape == (3, 128, 10, 7) and found_tokens.dtype == torch.float32
    assert relative_error(found_tokens.numpy(), tokens.numpy()) < RTOL
    assert relative_error(found_attention.numpy(), attention.numpy()) < RTOL
    assert forward(pixels, with_attention=False)[1] is None


@pytest.mark.parametrize("runtime", EXPORTED)
def test_the_export_is_cached_on_disk_and_a_second_process_loads_it(tiny_backbone, onnx_cache, monkeypatch, runtime):
    first = OnnxForward(fresh_backbone(tiny_backbone), runtime=runtime)
    assert first.exported and first.path.parent == onnx_cache == onnx_cache_folder()
    assert first.path.exists() and first.path.with_suffix(".json").exists()

    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(torch.onnx, "export", no_export)
    config = float32_config(tiny_backbone, runtime=runtime)
    featurizer = hr.Featurizer(config, backbone=fresh_backbone(tiny_backbone))  # as in a new process
    image, _ = two_texture_image(56)
    expected = hr.Featurizer(float32_config(tiny_backbone)).encode(image).features()
    assert relative_error(featurizer.encode(image).features(), expected) < RTOL
    (second,) = featurizer.backbone.compiled.values()
    assert not second.exported and second.path == first.path and second.runtime == runtime


@pytest.mark.parametrize("runtime", EXPORTED)
def test_one_export_serves_both_runtimes(tiny_backbone, runtime, monkeypatch):
    other = "openvino" if runtime == "onnxruntime" else "onnxruntime"
    if importlib.util.find_spec(other) is None:
        pytest.skip(f"{install_hint(other)} first")
    first = OnnxForward(fresh_backbone(tiny_backbone), runtime=other)
    monkeypatch.setattr(torch.onnx, "export", lambda *args, **kwargs: pytest.fail("exported again"))
    backbone = fresh_backbone(tiny_backbone)
    second = OnnxForward(backbone, runtime=runtime)
    assert first.exported and not second.exported and second.path == first.path
    pixels = torch.randn(2, 3, 70, 56)
    with torch.inference_mode():
        expected, _ = forward_tokens(backbone, pixels)
    assert relative_error(second(pixels)[0].numpy(), expected.numpy()) < RTOL


@pytest.mark.parametrize("runtime", EXPORTED)
@pytest.mark.parametrize("damage", ["truncated", "flipped byte", "no record", "garbage record"])
def test_a_damaged_cache_file_is_exported_again(tiny_backbone, damage, runtime):
    first = OnnxForward(fresh_backbone(tiny_backbone), runtime=runtime)
    path, record = first.path, first.path.with_suffix(".json")
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flipped byte":
        path.write_bytes(data[:-100] + bytes([data[-100] ^ 0xFF]) + data[-99:])
    elif damage == "no record":
        record.unlink()
    else:
        record.write_text("{not json")
    backbone = fresh_backbone(tiny_backbone)
    again = OnnxForward(backbone, runtime=runtime)
    assert again.exported and again.path == path and path.read_bytes() == data
    pixels = torch.randn(1, 3, 56, 42)
    with torch.inference_mode():
        expected, _ = forward_tokens(backbone, pixels)
    assert relative_error(again(pixels)[0].numpy(), expected.numpy()) < RTOL


@pytest.mark.parametrize("runtime", EXPORTED)
def test_an_unloadable_cache_file_with_a_matching_record_is_exported_again(tiny_backbone, runtime):
    from napari_hrdv2.core.files.atomic import write_json
    from napari_hrdv2.core.files.checksums import file_sha256

    first = OnnxForward(fresh_backbone(tiny_backbone), runtime=runtime)
    first.path.write_bytes(b"not an onnx graph")
    write_json(first.path.with_suffix(".json"), {"size": 17, "sha256": file_sha256(first.path)}, overwrite=True)
    assert OnnxForward(fresh_backbone(tiny_backbone), runtime=runtime).exported


@pytest.mark.parametrize("runtime", EXPORTED)
def test_a_cache_folder_that_cannot_be_written_still_runs_for_this_session(tmp_path, monkeypatch, tiny_backbone, runtime):
    blocker = tmp_path / "a file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(ONNX_CACHE_ENV, str(blocker / "cache"))
    backbone = fresh_backbone(tiny_backbone)
    with pytest.warns(RuntimeWarning, match=rf"for this session only.*Set {ONNX_CACHE_ENV} to a writable folder"):
        forward = OnnxForward(backbone, runtime=runtime)
    assert forward.exported and forward.path.is_file() and forward.path.parent != blocker / "cache"
    pixels = torch.randn(1, 3, 42, 56)
    with torch.inference_mode():
        expected, _ = forward_tokens(backbone, pixels)
    assert relative_error(forward(pixels)[0].numpy(), expected.numpy()) < RTOL


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_an_exported_runtime_refuses_a_gpu_device_with_the_fix(runtime):
    for device in ("cuda", "cuda:1", "mps"):
        with pytest.raises(InputError, match=f"runtime='{runtime}' runs on the CPU only.*device='cpu'"):
            hr.Featurizer(hr.FeatureConfig(device=device, runtime=runtime))


@pytest.mark.parametrize(("runtime", "title"), [("onnxruntime", "ONNX Runtime"), ("openvino", "OpenVINO")])
def test_an_exported_runtime_computes_float32_only(tiny_backbone, runtime, title):
    from napari_hrdv2.core.runtime.devices import describe_precision

    for dtype in ("bfloat16", "float16"):
        with pytest.raises(InputError, match=f"runtime='{runtime}' computes in float32, not {dtype}"):
            hr.Featurizer(float32_config(tiny_backbone, runtime=runtime).replace(dtype=dtype))
    assert f"float32 (auto: float32 under {title})" in describe_precision("auto", "auto", runtime=runtime)
    assert describe_precision("auto", "auto", runtime=runtime).startswith(f"cpu, {title}")


@pytest.mark.parametrize(("runtime", "extra"), [("onnxruntime", "onnx"), ("openvino", "openvino")])
def test_an_exported_runtime_not_installed_says_how_to_install(tiny_backbone, monkeypatch, runtime, extra):
    real_find_spec = importlib.util.find_spec

    def without_the_runtime(name, *args, **kwargs):
        return None if name == runtime else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", without_the_runtime)
    with pytest.raises(InputError, match=f"needs the optional package {runtime}:") as error:
        hr.Featurizer(float32_config(tiny_backbone, runtime=runtime))
    assert install_hint(runtime) == f"pip install 'napari-hrdv2[{extra}]'" and install_hint(runtime) in str(error.value)


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_a_failed_import_of_the_runtime_says_how_to_install(tiny_backbone, monkeypatch, runtime):
    import importlib

    real_import = importlib.import_module

    def failing_import(name, *args, **kwargs):
        if name == runtime:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", failing_import)
    with pytest.raises(InputError, match=f"runtime='{runtime}' needs the optional package {runtime}: "):
        OnnxForward(fresh_backbone(tiny_backbone), runtime=runtime)


def test_importing_the_package_does_not_import_an_exported_runtime():
    import subprocess
    import sys

    code = (
        "import sys, napari_hrdv2, napari_hrdv2.core, napari_hrdv2.core.features.encoding; "
        "assert not {'onnxruntime', 'onnx', 'openvino'} & set(sys.modules), sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("runtime", EXPORTED)
def test_a_model_trained_on_torch_features_predicts_the_same_labels_from_exported_runtime_features(
    tiny_backbone, runtime
):
    image, truth = two_texture_image(112)
    strokes = np.zeros_like(truth)
    strokes[::4, 10:40], strokes[::4, 70:100] = truth[::4, 10:40], truth[::4, 70:100]
    config = float32_config(tiny_backbone)
    model = hr.LinearSegmenter().fit(hr.Featurizer(config).encode(image), strokes)
    expected = model.predict(hr.Featurizer(config).encode(image))
    assert (expected == truth).mean() > 0.9  # the known answer: the two textures
    found = model.predict(model.featurizer(runtime=runtime).encode(image))
    np.testing.assert_array_equal(found, expected)
