"""ONNX Runtime as the backbone's runtime (``FeatureConfig.runtime="onnxruntime"``, core/backbone/onnx_forward.py).

Random-init tiny backbones (no real weights). Features are compared in float32 (compute and storage dtype
pinned), so the tests pass on any CPU.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

import napari_hrdv2 as hr
from conftest import two_texture_image
from napari_hrdv2.core.backbone.loading import load_backbone
from napari_hrdv2.core.backbone.onnx_forward import ONNX_CACHE_ENV, ONNX_INSTALL_HINT, OnnxForward, onnx_cache_folder
from napari_hrdv2.core.backbone.vit import forward_tokens
from napari_hrdv2.core.errors import InputError

needs_onnxruntime = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None,
    reason="the optional runtime is not installed (pip install 'napari-hrdv2[onnx]')",
)
RTOL = 1e-4


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


@needs_onnxruntime
@pytest.mark.parametrize("family", ["tiny_backbone", "tiny_backbone_registers", "tiny_dinov3"])
def test_onnxruntime_features_equal_torch_features_at_two_image_sizes(family, request):
    path = request.getfixturevalue(family)
    config = float32_config(path)
    backbone = fresh_backbone(path)
    eager = hr.Featurizer(config, backbone=backbone)
    onnx = hr.Featurizer(config.replace(runtime="onnxruntime"), backbone=backbone)
    assert onnx.dtype_choice.dtype == torch.float32
    for shape in ((100, 90), (61, 130)):  # the second size runs the graph exported for the first (dynamic axes)
        image = (np.random.default_rng(shape[0]).random(shape) * 255).astype(np.uint8)
        expected, found = eager.encode(image), onnx.encode(image)
        assert relative_error(found.features(), expected.features()) < RTOL
        assert relative_error(found.attention(), expected.attention()) < RTOL
        for mine, theirs in zip(found.lowres_maps, expected.lowres_maps):
            assert relative_error(mine.numpy(), theirs.numpy()) < RTOL
    assert len(backbone.compiled) == 1  # one export served both sizes


@needs_onnxruntime
def test_strided_key_facet_of_an_inner_block_and_a_batch_match_torch(tiny_dinov3):
    backbone = fresh_backbone(tiny_dinov3)
    forward = OnnxForward(backbone, stride=8, facet="key", layer=0)
    pixels = torch.randn(3, 3, 16 + 8 * 9, 16 + 8 * 6)
    with torch.inference_mode():
        tokens, attention = forward_tokens(backbone, pixels, stride=8, facet="key", layer=0)
    found_tokens, found_attention = forward(pixels)
    assert found_tokens.shape == tokens.shape == (3, 128, 10, 7) and found_tokens.dtype == torch.float32
    assert relative_error(found_tokens.numpy(), tokens.numpy()) < RTOL
    assert relative_error(found_attention.numpy(), attention.numpy()) < RTOL
    assert forward(pixels, with_attention=False)[1] is None


@needs_onnxruntime
def test_the_export_is_cached_on_disk_and_a_second_process_loads_it(tiny_backbone, onnx_cache, monkeypatch):
    first = OnnxForward(fresh_backbone(tiny_backbone))
    assert first.exported and first.path.parent == onnx_cache == onnx_cache_folder()
    assert first.path.exists() and first.path.with_suffix(".json").exists()

    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(torch.onnx, "export", no_export)
    config = float32_config(tiny_backbone, runtime="onnxruntime")
    featurizer = hr.Featurizer(config, backbone=fresh_backbone(tiny_backbone))  # as in a new process
    image, _ = two_texture_image(56)
    expected = hr.Featurizer(float32_config(tiny_backbone)).encode(image).features()
    assert relative_error(featurizer.encode(image).features(), expected) < RTOL
    (second,) = featurizer.backbone.compiled.values()
    assert not second.exported and second.path == first.path


@needs_onnxruntime
@pytest.mark.parametrize("damage", ["truncated", "flipped byte", "no record", "garbage record"])
def test_a_damaged_cache_file_is_exported_again(tiny_backbone, damage):
    first = OnnxForward(fresh_backbone(tiny_backbone))
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
    again = OnnxForward(backbone)
    assert again.exported and again.path == path and path.read_bytes() == data
    pixels = torch.randn(1, 3, 56, 42)
    with torch.inference_mode():
        expected, _ = forward_tokens(backbone, pixels)
    assert relative_error(again(pixels)[0].numpy(), expected.numpy()) < RTOL


@needs_onnxruntime
def test_an_unloadable_cache_file_with_a_matching_record_is_exported_again(tiny_backbone):
    from napari_hrdv2.core.files.atomic import write_json
    from napari_hrdv2.core.files.checksums import file_sha256

    first = OnnxForward(fresh_backbone(tiny_backbone))
    first.path.write_bytes(b"not an onnx graph")
    write_json(first.path.with_suffix(".json"), {"size": 17, "sha256": file_sha256(first.path)}, overwrite=True)
    assert OnnxForward(fresh_backbone(tiny_backbone)).exported


def test_onnxruntime_refuses_a_gpu_device_with_the_fix():
    for device in ("cuda", "cuda:1", "mps"):
        with pytest.raises(InputError, match="runs on the CPU only.*device='cpu'"):
            hr.Featurizer(hr.FeatureConfig(device=device, runtime="onnxruntime"))


def test_onnxruntime_computes_float32_only(tiny_backbone):
    from napari_hrdv2.core.runtime.devices import describe_precision

    for dtype in ("bfloat16", "float16"):
        with pytest.raises(InputError, match=f"computes in float32, not {dtype}"):
            hr.Featurizer(float32_config(tiny_backbone, runtime="onnxruntime").replace(dtype=dtype))
    assert "float32 (auto: float32 under ONNX Runtime)" in describe_precision("auto", "auto", runtime="onnxruntime")
    assert describe_precision("auto", "auto", runtime="onnxruntime").startswith("cpu, ONNX Runtime")


def test_onnxruntime_not_installed_says_how_to_install(tiny_backbone, monkeypatch):
    real_find_spec = importlib.util.find_spec

    def without_onnxruntime(name, *args, **kwargs):
        return None if name == "onnxruntime" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", without_onnxruntime)
    with pytest.raises(InputError, match="needs the optional package onnxruntime") as error:
        hr.Featurizer(float32_config(tiny_backbone, runtime="onnxruntime"))
    assert ONNX_INSTALL_HINT in str(error.value)


def test_importing_the_package_does_not_import_onnxruntime():
    import subprocess
    import sys

    code = (
        "import sys, napari_hrdv2, napari_hrdv2.core, napari_hrdv2.core.features.encoding; "
        "assert 'onnxruntime' not in sys.modules and 'onnx' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@needs_onnxruntime
def test_a_model_trained_on_torch_features_predicts_the_same_labels_from_onnxruntime_features(tiny_backbone):
    image, truth = two_texture_image(112)
    strokes = np.zeros_like(truth)
    strokes[::4, 10:40], strokes[::4, 70:100] = truth[::4, 10:40], truth[::4, 70:100]
    config = float32_config(tiny_backbone)
    model = hr.LinearSegmenter().fit(hr.Featurizer(config).encode(image), strokes)
    expected = model.predict(hr.Featurizer(config).encode(image))
    assert (expected == truth).mean() > 0.9  # the known answer: the two textures
    found = model.predict(model.featurizer(runtime="onnxruntime").encode(image))
    np.testing.assert_array_equal(found, expected)
