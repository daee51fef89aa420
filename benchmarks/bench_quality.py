"""Segmentation quality with and without edge-aware refinement of the probabilities; prints Markdown tables.

On every labelled set in ``../shared/data`` (``HRDV2_DATA``): the two ``tldr_scribbles`` images with their
real human scribbles, and ``--images`` images each of ``nasa_super`` and ``nasa_ebc`` with scribbles drawn
from the dense ground truth (a few thin strokes per class, ``bench_segment.sample_scribbles``, fixed
``--seed``). ``nasa_ebc`` images (1024 px) are cropped to their central ``--crop`` pixels to keep the run
short (the timing section uses a whole 1024x1024 image). Features: the ``--preset`` (default ``fast``:
5 transforms) of HR-Dv2 with random-init ViT-S/14 weights unless ``--backbone`` is given, so **the mIoU
figures are random-init: only the differences between rows mean anything**.

Sections:

quality
    mean IoU (over the classes in the ground truth, all pixels) per set for ``linear``, ``linear + guided``,
    ``linear + crf`` (the library's default options of each method), ``hybrid`` and ``hybrid + guided / crf``
    (and ``mlp``, ``mlp + guided / crf`` when ``napari_hrdv2.MLPSegmenter`` exists), and the mean gain of each
    refinement in mIoU points.
grid
    a small grid over the CRF and guided-filter options on the linear model's probabilities (one option
    varied at a time from the defaults for the CRF, radius x eps for the guided filter): mean gain and the
    worst set's gain, and the best setting that loses no set by more than 0.5 points. The defaults in
    ``refine.METHOD_DEFAULTS`` come from two rounds of it (benchmarks/README.md): guided radius 8, eps 1e-3
    (radius 16 gains more on the mean but less on the human-scribbled tldr set, with twice the halo); crf
    weight 10 (20 gains more, at the edge of the grid, where the noise of random-init features rewards
    smoothing that real features may not need).
timing
    one 1024x1024 ``nasa_ebc`` micrograph: ``LinearSegmenter.predict`` on its cached encoding (median of 3) and
    each refinement at the defaults (median of 3), as a ratio to ``predict``, and to encode + predict.

Goals (issue 18): the default refinement adds >= 2 mIoU points on average over the sets, loses no set by
more than 0.5 points and costs <= 1x ``predict`` at 1024x1024 on the CPU.

    HRDV2_DATA=/work/shared/data python benchmarks/bench_quality.py [--images 2] [--crop 512] [--no-grid]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import napari_hrdv2 as hr
from _common import (
    RANDOM_WEIGHTS_NOTE,
    SHARED_DATA,
    backbone_or_random,
    machine_line,
    median,
    nasa_pairs,
    print_table,
    read_grey,
)
from bench_segment import index_classes, mean_iou, sample_scribbles
from napari_hrdv2.core.config import PRESETS
from napari_hrdv2.core.segmentation.refine import METHOD_DEFAULTS, RefineSettings, guide_image, refine_probabilities

#: Largest loss of any set (mIoU points) a default refinement may cause.
MAX_LOSS = 0.5
#: Smallest mean gain (mIoU points) a default refinement must bring.
MIN_GAIN = 2.0


def datasets(n_images: int, seed: int, crop: int) -> list[tuple[str, str, np.ndarray, np.ndarray, np.ndarray]]:
    """``(set, name, image, scribbles, truth)`` with classes 1..N."""
    items = []
    folder = SHARED_DATA / "tldr_scribbles"
    for name in ("tests_data_0", "tests_data_1"):
        scribbles = index_classes(read_grey(folder / f"{name}_labels.tif"))
        truth = index_classes(read_grey(folder / f"{name}_ground_truth.tif"))
        items.append(("tldr", name, read_grey(folder / f"{name}.tif"), scribbles, truth))
    for dataset in ("nasa_super", "nasa_ebc"):
        for image_path, label_path in nasa_pairs(dataset, limit=n_images):
            image, truth = read_grey(image_path), read_grey(label_path).astype(np.int64) + 1
            if max(image.shape) > crop:
                top, left = (image.shape[0] - crop) // 2, (image.shape[1] - crop) // 2
                image, truth = image[top : top + crop, left : left + crop], truth[top : top + crop, left : left + crop]
            items.append((dataset, image_path.stem, image, sample_scribbles(truth, seed=seed), truth))
    return items


def heads() -> dict[str, Callable[[], Any]]:
    """The models compared: linear, hybrid, and the MLP head when this version has one."""
    made = {"linear": lambda: hr.LinearSegmenter(), "hybrid": lambda: hr.LinearSegmenter(hybrid=True)}
    if hasattr(hr, "MLPSegmenter"):
        made["mlp"] = lambda: hr.MLPSegmenter()
    return made


def grid_settings() -> list[RefineSettings]:
    """The CRF varied one option at a time around its defaults; the guided filter over radius x eps."""
    crf = [RefineSettings.create("crf")]
    for name, values in (
        ("weight", (3.0, 6.0, 20.0)),
        ("intensity_sigma", (0.05, 0.2)),
        ("radius", (2, 5)),
        ("spatial_sigma", (1.5, 6.0)),
        ("iterations", (2, 10)),
    ):
        crf += [RefineSettings.create("crf", **{name: value}) for value in values]
    guided = [RefineSettings.create("guided", radius=r, eps=e) for r in (4, 8, 16) for e in (1e-4, 1e-3, 1e-2)]
    return crf + guided


def label_of(classes: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    return classes[np.argmax(probabilities, axis=0)]


def evaluate(items, featurizer, with_grid: bool) -> tuple[dict, dict, list]:
    """mIoU per (row, set) and per (grid setting, set); also per-image rows."""
    scores: dict[str, dict[str, list[float]]] = {}
    grid_scores: dict[RefineSettings, dict[str, list[float]]] = {}
    defaults = {m: RefineSettings.create(m) for m in ("guided", "crf")}
    per_image = []
    for dataset, name, image, scribbles, truth in items:
        start = time.perf_counter()
        encoding = featurizer.encode(image, with_attention=False)
        guide = guide_image(image, normalize=featurizer.config.normalize)
        row = [dataset, name[:24], f"{image.shape[0]}x{image.shape[1]}"]
        for head, make in heads().items():
            model = make().fit(encoding, scribbles)
            probabilities = model.predict_proba(encoding, refine="none")
            refinements = {"": None, " + guided": defaults["guided"], " + crf": defaults["crf"]}
            for suffix, settings in refinements.items():
                refined = probabilities if settings is None else refine_probabilities(probabilities, guide, settings)
                score = mean_iou(truth, label_of(model.classes_, refined))
                scores.setdefault(head + suffix, {}).setdefault(dataset, []).append(score)
                row.append(score)
            if head == "linear" and with_grid:
                for settings in grid_settings():
                    score = mean_iou(truth, label_of(model.classes_, refine_probabilities(probabilities, guide, settings)))
                    grid_scores.setdefault(settings, {}).setdefault(dataset, []).append(score)
        per_image.append(row)
        print(f"  done {dataset} {name}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return scores, grid_scores, per_image


def gains(by_set: dict[str, list[float]], base: dict[str, list[float]], sets: list[str]) -> tuple[list[float], float]:
    """Per-set gain in mIoU points over ``base`` and the mean over the sets."""
    per_set = [100 * (float(np.mean(by_set[s])) - float(np.mean(base[s]))) for s in sets]
    return per_set, float(np.mean(per_set))


def report_quality(scores: dict, per_image: list, note: str) -> list[str]:
    rows = list(scores)
    sets = list(dict.fromkeys(row[0] for row in per_image))
    print_table(per_image, ["set", "image", "size", *rows], title=f"mIoU per image{note}")
    table = []
    for name in rows:
        base = scores[name.split(" + ")[0]]
        per_set, mean_gain = gains(scores[name], base, sets)
        means = [float(np.mean(scores[name][s])) for s in sets]
        table.append([name, *means, float(np.mean(means)), mean_gain, min(per_set)])
    print_table(
        table,
        ["model", *(f"{s} ({len(scores[rows[0]][s])} img)" for s in sets), "mean of sets",
         "gain vs unrefined (points)", "worst set's gain"],
        title=f"mIoU per set{note}",
    )  # fmt: skip
    if "mlp" not in scores:
        print("mlp / mlp + crf: napari_hrdv2.MLPSegmenter is not available in this version.")
    return sets


def report_grid(grid_scores: dict, scores: dict, sets: list[str]) -> dict[str, RefineSettings | None]:
    rows, best = [], {"crf": None, "guided": None}
    best_gain = {"crf": -np.inf, "guided": -np.inf}
    for settings, by_set in grid_scores.items():
        per_set, mean_gain = gains(by_set, scores["linear"], sets)
        rows.append([settings.describe(), *per_set, mean_gain, min(per_set)])
        if min(per_set) >= -MAX_LOSS and mean_gain > best_gain[settings.method]:
            best[settings.method], best_gain[settings.method] = settings, mean_gain
    print_table(
        rows,
        ["linear + setting", *(f"{s} gain" for s in sets), "mean gain (points)", "worst set"],
        title="Grid: refinement options on the linear model (gain in mIoU points over linear)",
    )
    for method, settings in best.items():
        text = settings.describe() if settings else f"none (every setting loses a set by > {MAX_LOSS} points)"
        print(f"best {method} losing no set by > {MAX_LOSS} points: {text}")
    return best


def timing(featurizer, seed: int, repeats: int = 3) -> dict[str, float]:
    image_path, label_path = nasa_pairs("nasa_ebc", limit=1)[0]
    image, truth = read_grey(image_path), read_grey(label_path).astype(np.int64) + 1
    start = time.perf_counter()
    encoding = featurizer.encode(image, with_attention=False)
    encode_s = time.perf_counter() - start
    model = hr.LinearSegmenter().fit(encoding, sample_scribbles(truth, seed=seed))
    out = {"encode": encode_s}

    def med(fn: Callable[[], Any]) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return median(times)

    out["predict"] = med(lambda: model.predict(encoding, refine="none"))
    probabilities = model.predict_proba(encoding, refine="none")
    guide = guide_image(image, normalize=featurizer.config.normalize)
    for method in ("guided", "crf"):
        settings = RefineSettings.create(method)
        out[method] = med(lambda settings=settings: refine_probabilities(probabilities, guide, settings))
    rows = [["LinearSegmenter.predict (cached encoding)", out["predict"], 1.0, out["predict"] / (encode_s + out["predict"])]]
    for method in ("guided", "crf"):
        rows.append([f"refine {RefineSettings.create(method).describe()}", out[method], out[method] / out["predict"],
                     out[method] / (encode_s + out["predict"])])  # fmt: skip
    print_table(
        rows,
        ["step (1024x1024, 3 classes, CPU)", f"seconds (median of {repeats})", "x predict", "x (encode + predict)"],
        title=f"Timing (same run; encode of this image: {encode_s:.1f} s)",
    )
    return out


def verdict(scores: dict, sets: list[str], times: dict[str, float] | None) -> None:
    for method in ("guided", "crf"):
        per_set, mean_gain = gains(scores[f"linear + {method}"], scores["linear"], sets)
        cost = times[method] / times["predict"] if times else float("nan")
        checks = [mean_gain >= MIN_GAIN, min(per_set) >= -MAX_LOSS, cost <= 1.0]
        print(
            f"linear + {method} (defaults): mean gain {mean_gain:+.2f} points (goal >= {MIN_GAIN}), worst set "
            f"{min(per_set):+.2f} (goal >= -{MAX_LOSS}), cost {cost:.2f}x predict (goal <= 1): "
            + ("ALL GOALS MET" if all(checks) else "goals NOT met")
        )


def boundaries(labels: np.ndarray) -> np.ndarray:
    """Pixels whose right or lower neighbour has another label."""
    edge = np.zeros(labels.shape, dtype=bool)
    edge[:, :-1] |= labels[:, 1:] != labels[:, :-1]
    edge[:-1] |= labels[1:] != labels[:-1]
    return edge


def figure(featurizer, path: str, *, size: int = 192, zoom: int = 2) -> None:
    """A before/after PNG: ``tests_data_0`` (tldr, human scribbles) with the class boundaries of linear,
    linear + crf and linear + guided (default options) and the ground truth, on a ``size`` crop, ``zoom``-ed."""
    from PIL import Image, ImageDraw

    folder = SHARED_DATA / "tldr_scribbles"
    image = read_grey(folder / "tests_data_0.tif")
    scribbles = index_classes(read_grey(folder / "tests_data_0_labels.tif"))
    truth = index_classes(read_grey(folder / "tests_data_0_ground_truth.tif"))
    encoding = featurizer.encode(image, with_attention=False)
    model = hr.LinearSegmenter().fit(encoding, scribbles)
    probabilities = model.predict_proba(encoding, refine="none")
    guide = guide_image(image, normalize=featurizer.config.normalize)
    panels = {"linear": label_of(model.classes_, probabilities)}
    for method in ("crf", "guided"):
        refined = refine_probabilities(probabilities, guide, RefineSettings.create(method))
        panels[f"linear + {method}"] = label_of(model.classes_, refined)
    panels["ground truth"] = truth
    top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
    crop = (slice(top, top + size), slice(left, left + size))
    grey = (255 * guide[crop]).astype(np.uint8)
    tiles = []
    for name, labels in panels.items():
        rgb = np.repeat(grey[..., None], 3, axis=-1)
        score = "" if name == "ground truth" else f" mIoU {mean_iou(truth, labels):.3f}"
        rgb[boundaries(labels[crop])] = (255, 40, 40) if name != "ground truth" else (40, 220, 40)
        tile = Image.fromarray(rgb).resize((size * zoom, size * zoom), Image.NEAREST)
        canvas = Image.new("RGB", (size * zoom, size * zoom + 18), "white")
        canvas.paste(tile, (0, 18))
        ImageDraw.Draw(canvas).text((4, 3), name + score, fill="black")
        tiles.append(canvas)
    sheet = Image.new("RGB", (sum(t.width for t in tiles) + 6 * (len(tiles) - 1), tiles[0].height), "white")
    x = 0
    for tile in tiles:
        sheet.paste(tile, (x, 0))
        x += tile.width + 6
    sheet.save(path)
    print(f"wrote {path} (random-init ViT-S/14 weights unless --backbone: relative figures only)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default=None, help="weights (default: random-init ViT-S/14 saved locally)")
    parser.add_argument("--preset", default="fast", choices=sorted(PRESETS), help="feature preset (default fast)")
    parser.add_argument("--images", type=int, default=2, help="nasa_super / nasa_ebc images each (default 2)")
    parser.add_argument("--crop", type=int, default=512, help="crop larger images to this central square (512)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampled scribbles")
    parser.add_argument("--no-grid", action="store_true", help="skip the grid over the refinement options")
    parser.add_argument("--no-timing", action="store_true", help="skip the 1024x1024 timing")
    parser.add_argument("--figure", metavar="PNG", help="only write the before/after figure of tests_data_0 there")
    args = parser.parse_args(argv)
    backbone, random_weights = backbone_or_random(args.backbone)
    note = " - RANDOM-INIT WEIGHTS: only relative figures mean anything" if random_weights else ""
    print(machine_line())
    if random_weights:
        print(RANDOM_WEIGHTS_NOTE)
    config = hr.FeatureConfig(backbone=backbone, device="cpu", **PRESETS[args.preset])
    featurizer = hr.Featurizer(config)
    print(f"features: preset {args.preset} ({config.n_transforms} transforms); defaults {METHOD_DEFAULTS}")
    if args.figure:
        figure(featurizer, args.figure)
        return
    start = time.perf_counter()
    items = datasets(args.images, args.seed, args.crop)
    scores, grid_scores, per_image = evaluate(items, featurizer, not args.no_grid)
    sets = report_quality(scores, per_image, note)
    if grid_scores:
        report_grid(grid_scores, scores, sets)
    times = None if args.no_timing else timing(featurizer, args.seed)
    verdict(scores, sets, times)
    print(f"total run time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
