"""Linear vs MLP head (``LinearSegmenter`` vs ``MLPSegmenter``): train and predict time at 1024x1024 as ratios
measured in one run, and mean IoU on the shared labelled sets; prints Markdown tables.

timing
    The 1024x1024 ``nasa_ebc`` micrograph of bench_segment's latency section, default ``FeatureConfig``,
    encoded once (not timed); scribbles sampled from its ground truth (bench_segment's protocol, brush
    radius 5, strokes added round-robin until ``--labelled`` pixels are labelled, seed 0), so that the
    default ``max_pixels_per_class=5000`` trains on about 5000 pixels per class. ``fit`` and ``predict``
    of each head, interleaved, ``--repeats`` times (median); the ratio MLP / linear is the figure to read
    (the machine is shared: absolute seconds move with its load).
quality
    Mean IoU (bench_segment's ``mean_iou``: per class in the ground truth, over all pixels) on
    ``tldr_scribbles`` (both images, real human scribbles) and the first ``--images`` images of
    ``nasa_super`` and ``nasa_ebc`` (scribbles sampled from the ground truth, 3 strokes per class, seed 0),
    default ``FeatureConfig``; heads with their defaults (``MLPSegmenter()``: 32 hidden ReLU units);
    ``--hybrid`` adds both heads on hybrid features.

Every result with the random-init ViT-S/14 (the default: no DINOv2 weights on this machine) says so: quality
numbers are NOT DINOv2 quality, only the comparison of the heads on the same features means anything.

Usage::

    python benchmarks/bench_head.py                     # ~10 min on 2 busy CPU cores
    python benchmarks/bench_head.py --images 1 --repeats 3 --only timing
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import time

import numpy as np

import napari_hrdv2 as hr
from _common import (
    RANDOM_WEIGHTS_NOTE,
    SHARED_DATA,
    backbone_or_random,
    machine_line,
    median,
    print_table,
    read_grey,
    read_index_labels,
    timed,
)
from bench_segment import LATENCY_IMAGE, mean_iou, quality_datasets, sample_scribbles

HEADS = {
    "linear": lambda **kw: hr.LinearSegmenter(**kw),
    "mlp (32 ReLU)": lambda **kw: hr.MLPSegmenter(**kw),
}


def section_timing(featurizer: hr.Featurizer, repeats: int, labelled: int) -> None:
    image = read_grey(SHARED_DATA / "nasa_ebc" / "images" / LATENCY_IMAGE)
    truth = read_index_labels(SHARED_DATA / "nasa_ebc" / "labels" / LATENCY_IMAGE) + 1
    scribbles = sample_scribbles(truth, seed=0, brush=5, target_total=labelled)
    encoding = featurizer.encode(image, with_attention=False)
    fits = {name: [] for name in HEADS}
    predicts = {name: [] for name in HEADS}
    models = {}
    for _ in range(repeats):
        for name, make in HEADS.items():
            seconds, models[name] = timed(lambda make=make: make().fit(encoding, scribbles))
            fits[name].append(seconds)
        for name in HEADS:
            seconds, _ = timed(lambda name=name: models[name].predict(encoding))
            predicts[name].append(seconds)
    linear = list(HEADS)[0]
    rows = []
    for name in HEADS:
        summary = models[name].summary_
        rows.append([
            name, summary.pixels_used, summary.iterations, median(fits[name]), median(predicts[name]),
            median(fits[name]) / median(fits[linear]), median(predicts[name]) / median(predicts[linear]),
        ])  # fmt: skip
    counts = "/".join(str(np.count_nonzero(scribbles == c)) for c in range(1, truth.max() + 1))
    print_table(
        rows,
        [
            "head",
            "training px",
            "L-BFGS iterations",
            "fit s",
            "predict s",
            "fit / linear fit",
            "predict / linear predict",
        ],  # fmt: skip
        title=f"Timing: {image.shape[0]}x{image.shape[1]} nasa_ebc {LATENCY_IMAGE}, {featurizer.config.n_transforms} "
        f"transforms, encoding cached, scribbled px/class {counts}, median of {repeats}",
    )


def section_quality(featurizer: hr.Featurizer, n_images: int, seed: int, with_hybrid: bool, note: str) -> None:
    methods = {name: (make, False) for name, make in HEADS.items()}
    if with_hybrid:
        methods.update({f"hybrid {name}": (make, True) for name, make in HEADS.items()})
    per_image, seconds = [], {m: [] for m in methods}
    for dataset, name, image, scribbles, truth in quality_datasets(n_images, seed):
        start = time.perf_counter()
        encoding = featurizer.encode(image, with_attention=False)
        t_encode = time.perf_counter() - start
        ious = []
        for method, (make, hybrid) in methods.items():
            model = make(hybrid=hybrid)
            t, pred = timed(lambda m=model, e=encoding, s=scribbles: m.fit(e, s).predict(e))
            seconds[method].append(t)
            ious.append(mean_iou(truth, pred))
        per_image.append([dataset.split()[0], name[:28], f"{image.shape[0]}x{image.shape[1]}", *ious])
        print(f"  done {dataset} {name}: encode {t_encode:.0f} s", file=sys.stderr, flush=True)
    print_table(per_image, ["dataset", "image", "size", *methods], title=f"mIoU per image{note}")
    datasets = list(dict.fromkeys(row[0] for row in per_image))
    summary = []
    for i, method in enumerate(methods):
        by_set = [float(np.mean([row[3 + i] for row in per_image if row[0] == d])) for d in datasets]
        summary.append([method, *by_set, float(np.mean([row[3 + i] for row in per_image])), median(seconds[method])])
    counts = {d: sum(row[0] == d for row in per_image) for d in datasets}
    print_table(
        summary,
        ["head", *(f"{d} ({counts[d]} img)" for d in datasets), "all images", "fit+predict s/img (median)"],
        title=f"mIoU summary (scribbles: tldr real, nasa sampled with seed {seed}){note}",
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default=None, help="weights (default: random-init ViT-S/14 saved locally)")
    parser.add_argument("--only", default="timing,quality", help="comma-separated sections to run")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (default 3)")
    parser.add_argument("--labelled", type=int, default=50_000, help="labelled pixels of the timing image")
    parser.add_argument("--images", type=int, default=2, help="nasa_super / nasa_ebc images (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampled scribbles (default 0)")
    parser.add_argument("--hybrid", action="store_true", help="also both heads on hybrid features")
    args = parser.parse_args(argv)
    backbone, random_weights = backbone_or_random(args.backbone)
    featurizer = hr.Featurizer(hr.FeatureConfig(backbone=backbone, device="cpu"))
    note = " - RANDOM-INIT WEIGHTS, NOT DINOv2 QUALITY" if random_weights else ""
    print(f"# bench_head | {machine_line()}")
    print(f"backbone: {backbone}")
    if random_weights:
        print(textwrap.fill("**" + RANDOM_WEIGHTS_NOTE + "**", 120))
    start = time.perf_counter()
    sections = set(args.only.split(","))
    if "timing" in sections:
        section_timing(featurizer, args.repeats, args.labelled)
    if "quality" in sections:
        section_quality(featurizer, args.images, args.seed, args.hybrid, note)
    print(f"\ntotal benchmark time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
