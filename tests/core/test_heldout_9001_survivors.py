"""Survivors of the held-out sample seed 9001, written after its score was recorded.

One test per non-equivalent survivor of that sample (benchmarks/README.md, mutation section); a later sample must
use another seed.
"""

from __future__ import annotations

import json
import shutil
import types

import numpy as np
import pytest
import tifffile
import torch

import napari_hrdv2 as hr
from conftest import two_texture_image
from napari_hrdv2.core.analysis.similarity import similarity_to
from napari_hrdv2.core.backbone import loading
from napari_hrdv2.core.backbone.onnx_forward import onnx_forward
from napari_hrdv2.core.backbone.structure import vit_parts
from napari_hrdv2.core.errors import InputError
from napari_hrdv2.core.files import atomic
from napari_hrdv2.core.files.atomic import ArrayStreamWriter
from napari_hrdv2.core.progress import run_steps
from napari_hrdv2.core.runtime import memory
from napari_hrdv2.core.scale import streaming
from napari_hrdv2.core.segmentation import mlp as mlp_module
from napari_hrdv2.core.segmentation.stack import StackEncoder, fit_stack, iter_predict_stack


def test_similarity_of_an_exactly_opposite_feature_is_clipped_to_minus_one():
    """Mutation killed: ``similarity_to`` 60 (clipped to [-2, 1]: float32 rounding gave -1.0000001)."""
    vector = np.random.default_rng(0).normal(size=8).astype(np.float32)
    scales = np.array([0.37, 1.7, 3.3, 7.1, 0.013, 113.0], np.float32)  # awkward factors: rounding below -1
    features = (-vector[:, None] * scales[None, :]).reshape(8, 2, 3).astype(np.float32)
    similarity = similarity_to(features, vector)
    assert similarity.shape == (2, 3) and similarity.dtype == np.float32
    assert similarity.min() >= -1.0
    np.testing.assert_allclose(similarity, -1.0, atol=1e-6)


def test_a_transformers_folder_with_its_own_image_std_loads_with_that_std(tiny_backbone, tmp_path):
    """Mutation killed: ``_from_folder`` 111 (the folder's std dropped: ImageNet's used)."""
    folder = tmp_path / "custom"
    shutil.copytree(tiny_backbone, folder)
    (folder / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.5, 0.4, 0.3], "image_std": [0.25, 0.2, 0.125]})
    )
    backbone = loading.load_backbone(str(folder), device="cpu", dtype=torch.float32)
    assert backbone.mean == (0.5, 0.4, 0.3)
    assert backbone.std == (0.25, 0.2, 0.125)


def test_streaming_an_rgba_image_drops_alpha(tiny_backbone):
    """Mutation killed: ``TileEncoder.iter_encode`` 15 (an RGBA tile replaced by ``None`` instead of its RGB)."""
    config = hr.FeatureConfig(
        backbone=tiny_backbone, device="cpu", shifts="none", tile_size=112, tile_overlap=28, storage_dtype="float32"
    )
    featurizer = hr.Featurizer(config)
    grey, truth = two_texture_image(112)
    rgb = np.stack([grey, grey // 2, 255 - grey], axis=-1).astype(np.uint8)
    labels = np.zeros(truth.shape, np.uint8)
    labels[10:100, 20:23], labels[10:100, 80:83] = 1, 2
    model = hr.LinearSegmenter().fit(featurizer.encode(rgb, with_attention=False), labels)
    image = np.tile(rgb, (2, 2, 1))[:150, :140]  # 2 x 2 tiles
    rgba = np.concatenate([image, np.full((*image.shape[:2], 1), 9, np.uint8)], axis=-1)
    outputs = ("labels", "probabilities")
    expected = streaming.segment_region(model, image, featurizer=featurizer, outputs=outputs)
    got = streaming.segment_region(model, rgba, featurizer=featurizer, outputs=outputs)
    np.testing.assert_array_equal(got["labels"], expected["labels"])
    np.testing.assert_array_equal(got["probabilities"], expected["probabilities"])


def test_a_model_without_embeddings_is_refused_by_name():
    """Mutation killed: ``vit_parts`` 11 (the missing part called ``EMBEDDINGS``)."""
    with pytest.raises(RuntimeError) as caught:
        vit_parts(torch.nn.Linear(2, 2))
    assert str(caught.value) == (
        "This transformers version names the embeddings differently (looked for ['embeddings'] in Linear); "
        "napari-hrdv2 does not know its layout."
    )


def test_mlp_logits_in_hidden_unit_groups_equal_the_ungrouped_logits(monkeypatch):
    """Mutation killed: ``MLPSegmenter.decision_function`` 16 (group size ``BYTES // (4 / H * W)``).

    With ``HIDDEN_MAP_BYTES = 2 * 4 * H * W`` the 4 hidden units are reconstructed two at a time.
    """
    rng = np.random.default_rng(1)
    model = mlp_module.MLPSegmenter(hidden=4)
    model.coef_ = rng.standard_normal((4, 3)).astype(np.float32)
    model.intercept_ = rng.standard_normal(4).astype(np.float32)
    model.output_weight_ = rng.standard_normal((2, 4)).astype(np.float32)
    model.output_bias_ = np.array([0.25, -0.5], np.float32)
    model.classes_ = np.array([1, 2])
    model.n_hr_features_ = 3
    height, width = 7, 5
    features = rng.standard_normal((3, height, width)).astype(np.float32)
    whole = model.decision_function(features)
    calls = []
    real = mlp_module.MLPSegmenter._first_layer_maps

    def spy(self, features, units=slice(None)):
        calls.append(units)
        return real(self, features, units)

    monkeypatch.setattr(mlp_module.MLPSegmenter, "_first_layer_maps", spy)
    monkeypatch.setattr(mlp_module, "HIDDEN_MAP_BYTES", 2 * 4 * height * width)
    np.testing.assert_allclose(model.decision_function(features), whole, rtol=1e-5, atol=1e-5)
    assert calls == [slice(0, 2), slice(2, 4)]


@pytest.mark.parametrize(
    ("architecture", "heads"),
    [
        ("vit_7b_patch16_dinov3", 32),
        ("vit_small_patch14_dinov2", None),
        ("vit_large_patch16_dinov3", None),
    ],
)
def test_timm_heads_of_the_7b_architecture(architecture, heads):
    """Mutation killed: ``_timm_heads`` 4 (``XX_7b_XX`` never found)."""
    assert loading._timm_heads(architecture) == heads


@pytest.mark.parametrize("shape", [(3, 4, 5), (4, 5)])
def test_a_streamed_tif_is_converted_page_by_page(tmp_path, monkeypatch, shape):
    """Mutation killed: ``ArrayStreamWriter.commit`` 34 (a 3-D array handed to the TIFF writer as one block).

    The staged array is read back one ``(H, W)`` page at a time (the class docstring), and the file holds one page
    per leading index.
    """
    handed = []
    real_write_tif = atomic.write_tif

    def spy(path, data, **options):
        pages = list(data)
        handed.extend(page.shape for page in pages)
        return real_write_tif(path, iter(pages), **options)

    monkeypatch.setattr(atomic, "write_tif", spy)
    data = np.arange(np.prod(shape), dtype=np.uint16).reshape(shape)
    with ArrayStreamWriter(tmp_path / "a.tif", shape, np.uint16) as out:
        out.write(data)
        out.commit()
    n_pages = shape[0] if len(shape) == 3 else 1
    assert handed == [shape[-2:]] * n_pages
    with tifffile.TiffFile(tmp_path / "a.tif") as tif:
        assert len(tif.pages) == n_pages
        np.testing.assert_array_equal(tif.asarray(), data)


def test_onnx_forward_refuses_a_layer_outside_the_blocks():
    """Mutation killed: ``onnx_forward`` 17 (the error without a message)."""
    backbone = types.SimpleNamespace(depth=4, patch_size=14, compiled={})
    with pytest.raises(ValueError) as caught:
        onnx_forward(backbone, layer=4)
    assert str(caught.value) == "layer=4 is outside this backbone's 4 blocks (0..3)."
    with pytest.raises(ValueError, match=r"layer=-5 is outside this backbone's 4 blocks \(0\.\.3\)\."):
        onnx_forward(backbone, layer=-5)


def test_predicting_a_three_plane_stack_reports_each_plane(tiny_config):
    """Mutation killed: ``iter_predict_stack`` 41 (``done`` one plane ahead)."""
    planes, truths = zip(*(two_texture_image(56, seed=s) for s in range(3)))
    stack, truth = np.stack(planes), np.stack(truths)
    labels = np.zeros(truth.shape, np.uint8)
    labels[0, 8:48, 12:15], labels[0, 8:48, 42:45] = 1, 2
    seg = fit_stack(hr.LinearSegmenter(), stack, labels, tiny_config)
    updates = []
    run_steps(iter_predict_stack(seg, StackEncoder(stack, tiny_config)), progress=updates.append)
    planes_done = [(u.done, u.total) for u in updates if u.message.startswith("predicted plane")]
    assert planes_done == [(1, 3), (2, 3), (3, 3)]
    assert [u.message for u in updates if u.message.startswith("predicted plane")] == [
        "predicted plane 1",
        "predicted plane 2",
        "predicted plane 3",
    ]


class _CudaDevice:
    """Like ``torch.device("cuda:0")``: ``.type`` is "cuda", ``str()`` is "cuda:0"."""

    type = "cuda"

    def __str__(self) -> str:
        return "cuda:0"


def test_a_cuda_device_object_is_checked_against_gpu_memory(monkeypatch):
    """Mutation killed: ``check_encoding_memory`` 9 (``str(device)`` "cuda:0" compared, not ``device.type``)."""
    gib = 2**30
    asked = []
    monkeypatch.setattr(memory, "available_host_bytes", lambda: 100 * gib)
    monkeypatch.setattr(memory, "available_device_bytes", lambda device: asked.append(device) or 1 * gib)
    device = _CudaDevice()
    with pytest.raises(InputError, match="of GPU memory but about"):
        memory.check_encoding_memory(64, 64, device_bytes=8 * gib, host_bytes=gib, device=device, n_transforms=1)
    assert asked == [device]
