"""Stacks: lazy, cached, memory-bounded plane encoding; training on labelled planes; prediction with progress/cancel."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import napari_hrdv2 as hr
from conftest import two_texture_image
from napari_hrdv2.core.features.cache import EncodingCache
from napari_hrdv2.core.progress import run_steps
from napari_hrdv2.core.segmentation.stack import (
    StackEncoder,
    fit_stack,
    iter_fit_stack,
    iter_predict_stack,
    labelled_planes,
    predict_stack,
)


@pytest.fixture(scope="module")
def stack_and_truth():
    planes, truths = zip(*(two_texture_image(56, seed=s) for s in range(3)))
    return np.stack(planes), np.stack(truths)


def stroke_labels(truth: np.ndarray, planes: list[int]) -> np.ndarray:
    labels = np.zeros(truth.shape, dtype=np.uint8)
    for p in planes:
        labels[p, 8:48, 12:15] = 1
        labels[p, 8:48, 42:45] = 2
    return labels


def test_encoder_is_lazy_and_cached(stack_and_truth, tiny_config):
    stack, _ = stack_and_truth
    encoder = StackEncoder(stack, tiny_config)
    assert len(encoder) == 3 and encoder.plane_shape == (56, 56) and len(encoder.cache) == 0
    first = encoder.plane(1)
    assert len(encoder.cache) == 1
    assert encoder.plane(1) is first  # second use hits the cache
    np.testing.assert_allclose(first.features(), hr.Featurizer(tiny_config).encode(stack[1]).features(), atol=1e-5)
    with pytest.raises(hr.InputError, match="Plane 5 does not exist"):
        encoder.plane(5)


def test_single_image_is_a_one_plane_stack(stack_and_truth, tiny_config):
    stack, _ = stack_and_truth
    assert len(StackEncoder(stack[0], tiny_config)) == 1
    rgb = np.repeat(stack[0][..., None], 3, axis=-1)
    assert len(StackEncoder(rgb, tiny_config)) == 1  # (H, W, 3) is one RGB plane, not 56 planes


def test_cache_respects_memory_budget(stack_and_truth, tiny_config):
    stack, _ = stack_and_truth
    one = hr.Featurizer(tiny_config).encode(stack[0]).nbytes
    encoder = StackEncoder(stack, tiny_config, cache=EncodingCache(max_bytes=int(one * 1.5)))
    for index in range(3):
        encoder.plane(index)
    assert len(encoder.cache) == 1 and encoder.cache.nbytes <= 1.5 * one


def test_fit_uses_only_labelled_planes_and_predicts_all(stack_and_truth, tiny_config):
    stack, truth = stack_and_truth
    labels = stroke_labels(truth, [0, 2])
    before = labels.copy()
    updates = []
    seg = fit_stack(hr.LinearSegmenter(), stack, labels, tiny_config, progress=updates.append)
    np.testing.assert_array_equal(labels, before)
    assert seg.summary_.n_images == 2 and labelled_planes(labels) == [0, 2]
    assert updates[-1].fraction == 1.0 and all(0 <= u.fraction <= 1 for u in updates)
    predicted = predict_stack(seg, stack)
    assert predicted.shape == stack.shape and predicted.dtype == np.uint8
    assert np.mean(predicted == truth) >= 0.9


def test_prediction_can_be_cancelled(stack_and_truth, tiny_config):
    stack, truth = stack_and_truth
    seg = fit_stack(hr.LinearSegmenter(), stack, stroke_labels(truth, [0]), tiny_config)
    cancel = threading.Event()
    seen = []

    def on_progress(update):
        seen.append(update)
        cancel.set()

    with pytest.raises(hr.Cancelled):
        run_steps(iter_predict_stack(seg, StackEncoder(stack, tiny_config)), progress=on_progress, cancel=cancel)
    assert len(seen) == 1


def test_stack_errors(stack_and_truth, tiny_config):
    stack, truth = stack_and_truth
    with pytest.raises(hr.InputError, match="one label plane per image plane"):
        fit_stack(hr.LinearSegmenter(), stack, stroke_labels(truth, [0])[:2], tiny_config)
    with pytest.raises(hr.InputError, match="No plane holds labels"):
        fit_stack(hr.LinearSegmenter(), stack, np.zeros_like(truth), tiny_config)
    seg = fit_stack(hr.LinearSegmenter(), stack, stroke_labels(truth, [1]), tiny_config)
    with pytest.raises(hr.InputError, match="different feature settings"):
        predict_stack(seg, stack, config=tiny_config.replace(shift_distances=(2,)))


def test_training_step_is_announced_and_no_planes_predict_an_empty_stack(stack_and_truth, tiny_config):
    """Known answers: "training" at 1 of 2 steps after the one labelled plane; predicting no planes gives (0, H, W)."""
    stack, truth = stack_and_truth
    encoder = StackEncoder(stack, tiny_config)
    updates = []
    seg = run_steps(iter_fit_stack(hr.LinearSegmenter(), encoder, stroke_labels(truth, [1])), progress=updates.append)
    assert [(u.done, u.total, u.message) for u in updates[-2:]] == [(1, 2, "training"), (1, 1, "trained")]
    empty = run_steps(iter_predict_stack(seg, encoder, indices=[]))
    assert isinstance(empty, np.ndarray) and empty.shape == (0, 56, 56) and empty.dtype == np.uint8


def test_stack_prediction_refines_every_plane_as_predict(stack_and_truth, tiny_config):
    stack, truth = stack_and_truth
    seg = fit_stack(hr.LinearSegmenter(refine="guided"), stack, stroke_labels(truth, [0]), tiny_config)
    predicted = predict_stack(seg, stack)
    featurizer = hr.Featurizer(tiny_config)
    for index in range(len(stack)):
        encoding = featurizer.encode(stack[index], with_attention=False)
        np.testing.assert_array_equal(predicted[index], seg.predict(encoding))
    assert not np.array_equal(predicted[0], seg.predict(featurizer.encode(stack[0]), refine="none"))
