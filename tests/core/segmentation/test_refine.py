"""Edge-aware refinement of class probabilities: known answers on a step edge, tiles equal the whole, options."""

from __future__ import annotations

import numpy as np
import pytest

from napari_hrdv2.core.errors import InputError
from napari_hrdv2.core.segmentation import refine as rf
from napari_hrdv2.core.segmentation.refine import RefineSettings, halo, refine_probabilities

EDGE, CENTRE = 20, 26
#: Options that reach from the blurred boundary (column 26) to the image edge (column 20), 6 px away.
STEP_OPTIONS = {
    "crf": {"iterations": 10, "radius": 8, "spatial_sigma": 8.0, "intensity_sigma": 0.1, "weight": 10.0},
    "guided": {"radius": 16, "eps": 1e-4},
}


def step_edge(height: int = 40, width: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """A grey image with a sharp vertical edge at column 20 and probabilities of a blurred step centred at 26."""
    image = np.zeros((height, width), dtype=np.float32)
    image[:, EDGE:] = 1.0
    columns = np.arange(width, dtype=np.float32)
    right = 1.0 / (1.0 + np.exp(-(columns - CENTRE + 0.5) / 3.0))  # 0.5 between columns 25 and 26
    probabilities = np.stack([1.0 - right, right])[:, None, :].repeat(height, axis=1)
    return probabilities.astype(np.float32), image


def first_right_column(probabilities: np.ndarray) -> np.ndarray:
    """Per row, the first column where class 1 is the more probable."""
    return np.argmax(probabilities[1] > 0.5, axis=1)


def test_step_edge_unrefined_boundary_is_off_the_edge():
    probabilities, _ = step_edge()
    assert (first_right_column(probabilities) == CENTRE).all()


@pytest.mark.parametrize("method", ["crf", "guided"])
def test_refinement_moves_the_boundary_onto_the_image_edge(method):
    probabilities, image = step_edge()
    refined = refine_probabilities(probabilities, image, RefineSettings.create(method, **STEP_OPTIONS[method]))
    assert refined.shape == probabilities.shape and refined.dtype == np.float32
    assert np.abs(first_right_column(refined) - EDGE).max() <= 1
    np.testing.assert_allclose(refined.sum(axis=0), 1.0, atol=1e-5)


@pytest.mark.parametrize("method", ["crf", "guided"])
def test_refinement_with_the_defaults_keeps_a_boundary_that_sits_on_the_edge(method):
    probabilities, image = step_edge()
    image = np.zeros_like(image)
    image[:, CENTRE:] = 1.0  # the edge where the probabilities already put the boundary
    refined = refine_probabilities(probabilities, image, RefineSettings.create(method))
    assert (first_right_column(refined) == CENTRE).all()


def random_problem(shape=(3, 70, 64), seed=0, colour=False):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=shape).astype(np.float32) * 2
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=0)
    image = rng.random((*shape[1:], 3) if colour else shape[1:]).astype(np.float32)
    return probabilities.astype(np.float32), image


@pytest.mark.parametrize(
    ("method", "colour"), [("crf", False), ("crf", True), ("guided", False), ("guided", True)]
)
def test_tiles_refined_with_the_halo_equal_the_whole_image(method, colour):
    probabilities, image = random_problem(colour=colour)
    settings = RefineSettings.create(method, iterations=3, radius=2) if method == "crf" else RefineSettings.create(
        method, radius=3
    )
    whole = refine_probabilities(probabilities, image, settings)
    context = halo(settings)
    assert context == (6 if method == "crf" else 6)
    height, width = image.shape[:2]
    tiled = np.zeros_like(whole)
    for top in range(0, height, 25):
        for left in range(0, width, 30):
            a, b = max(0, top - context), min(height, top + 25 + context)
            c, d = max(0, left - context), min(width, left + 30 + context)
            part = refine_probabilities(probabilities[:, a:b, c:d], image[a:b, c:d], settings)
            tiled[:, top : top + 25, left : left + 30] = part[:, top - a : top - a + 25, left - c : left - c + 30]
    np.testing.assert_array_equal(np.argmax(tiled, axis=0), np.argmax(whole, axis=0))
    np.testing.assert_allclose(tiled, whole, atol=1e-6)
    np.testing.assert_allclose(whole.sum(axis=0), 1.0, atol=1e-5)


def test_too_little_context_changes_the_result():
    """The halo is needed: a tile with less context differs from the whole image (the test above is not vacuous)."""
    probabilities, image = random_problem()
    settings = RefineSettings.create("crf", iterations=3, radius=2)
    whole = refine_probabilities(probabilities, image, settings)
    part = refine_probabilities(probabilities[:, :30], image[:30], settings)
    assert not np.allclose(part[:, :30], whole[:, :30], atol=1e-6)


@pytest.mark.parametrize("method", ["crf", "guided"])
def test_row_bands_equal_one_pass(monkeypatch, method):
    probabilities, image = random_problem(shape=(2, 90, 40), seed=1)
    settings = RefineSettings.create(method)
    whole = refine_probabilities(probabilities, image, settings)
    monkeypatch.setattr(rf, "BAND_VALUES", 1)  # bands of `halo` rows
    banded = refine_probabilities(probabilities, image, settings)
    np.testing.assert_allclose(banded, whole, atol=1e-6)


def test_none_returns_the_probabilities():
    probabilities, image = random_problem()
    np.testing.assert_array_equal(refine_probabilities(probabilities, image, RefineSettings.create("none")), probabilities)


def test_settings_round_trip_and_defaults():
    crf = RefineSettings.create("crf", weight=2)
    assert crf.weight == 2.0 and crf.iterations == rf.METHOD_DEFAULTS["crf"]["iterations"]
    assert RefineSettings.from_dict(crf.to_dict()) == crf
    assert RefineSettings.from_dict("guided") == RefineSettings.create("guided")
    assert RefineSettings.from_dict(None).method == "none"
    assert halo(crf) == crf.iterations * crf.radius
    assert halo(RefineSettings.create("guided", radius=5)) == 10
    assert halo(RefineSettings.create("none")) == 0


@pytest.mark.parametrize(
    ("method", "options", "match"),
    [
        ("blur", {}, "not one of 'none', 'crf', 'guided'"),
        ("crf", {"eps": 0.1}, "takes no option eps"),
        ("guided", {"iterations": 3}, "takes no option iterations"),
        ("crf", {"iterations": 0}, "iterations=0 must be a whole number > 0"),
        ("crf", {"radius": 2.5}, "radius=2.5 must be a whole number"),
        ("crf", {"weight": float("nan")}, "weight=nan must be a number > 0"),
        ("guided", {"eps": -1}, "eps=-1 must be a number > 0"),
        ("crf", {"radius": 40}, "too large"),
        ("crf", {"intensity_sigma": "wide"}, "intensity_sigma='wide'"),
    ],
)
def test_bad_options_raise_input_error(method, options, match):
    with pytest.raises(InputError, match=match):
        RefineSettings.create(method, **options)


def test_mismatched_guide_raises_input_error():
    probabilities, image = random_problem()
    with pytest.raises(InputError, match="does not match"):
        refine_probabilities(probabilities, image[:10], RefineSettings.create("crf"))
