"""Measurements behind the ``FeatureConfig`` defaults, on the real micrographs in ``../shared/data``.

1. Transform sets (none; neumann d=5; moore d=1, 2, 3, 5; moore (1, 2); moore (3, 6); flips): forward
   passes, CPU seconds to encode a 512x512 ``nasa_super`` micrograph, and a resolution measure that
   does not need good weights: a class-balanced logistic regression trained on the exact HR features
   of ``--train-pixels`` random ground-truth pixels per image (pooled over ``--images`` images),
   evaluated on all other pixels of those images: mean IoU and boundary accuracy (pixel accuracy
   within 3 px of a ground-truth boundary). How finely the transform set localises features shows
   even with random weights; absolute numbers need real weights (``--backbone``).
2. ``tile_size`` None vs 518 for a 1024x1024 ``nasa_ebc`` micrograph: encode time and peak RSS
   (encode + PCA-RGB) in fresh subprocesses, default transforms.
3. ``tile_overlap`` 70 vs 84 on 966x966 ``nasa_ebc`` crops: agreement with whole-image features and
   seam ratios (as in ``bench_features.py`` (e)), and the tile count each gives for a 4096 image.

Usage::

    python benchmarks/bench_defaults.py                 # ~6 min on 2 CPU cores with the random ViT-S
    python benchmarks/bench_defaults.py --images 2 --only transforms
    python benchmarks/bench_defaults.py --backbone facebook/dinov2-small --images 8
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import napari_hrdv2 as hr  # noqa: E402
from _common import (  # noqa: E402
    RANDOM_WEIGHTS_NOTE,
    backbone_or_random,
    gib,
    machine_line,
    median,
    nasa_pairs,
    print_table,
    read_grey,
    read_index_labels,
    run_with_peak_rss,
    timed,
)
from napari_hrdv2.core.features.tiling import plan_tiles  # noqa: E402

CANDIDATES: list[tuple[str, dict]] = [
    ("none", {"shifts": "none"}),
    ("neumann d=5", {"shifts": "neumann", "shift_distances": (5,)}),
    ("moore d=1", {"shifts": "moore", "shift_distances": (1,)}),
    ("moore d=2", {"shifts": "moore", "shift_distances": (2,)}),
    ("moore d=3", {"shifts": "moore", "shift_distances": (3,)}),
    ("moore d=5 (default)", {"shifts": "moore", "shift_distances": (5,)}),
    ("moore d=1,2", {"shifts": "moore", "shift_distances": (1, 2)}),
    ("moore d=3,6", {"shifts": "moore", "shift_distances": (3, 6)}),
    ("flips only", {"shifts": "none", "flips": True}),
]
BOUNDARY_PX = 3


def boundary_band(labels: np.ndarray, width: int = BOUNDARY_PX) -> np.ndarray:
    """Pixels within ``width`` px (Euclidean) of a change of ground-truth class."""
    from scipy.ndimage import distance_transform_edt

    edge = np.zeros(labels.shape, bool)
    edge[:-1] |= labels[:-1] != labels[1:]
    edge[1:] |= labels[:-1] != labels[1:]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:, 1:] |= labels[:, :-1] != labels[:, 1:]
    return distance_transform_edt(~edge) <= width


def mean_iou(truth: np.ndarray, pred: np.ndarray, classes: np.ndarray) -> float:
    ious = []
    for c in classes:
        union = np.count_nonzero((truth == c) | (pred == c))
        if union:
            ious.append(np.count_nonzero((truth == c) & (pred == c)) / union)
    return float(np.mean(ious))


def fit_linear(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class-balanced L2 logistic regression on standardised features, folded to raw-feature (W, b)."""
    from sklearn.linear_model import LogisticRegression

    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    model = LogisticRegression(class_weight="balanced", max_iter=2000, C=1.0, random_state=seed)
    model.fit((x - mean) / scale, y)
    coef = model.coef_ if len(model.classes_) > 2 else np.vstack([-model.coef_, model.coef_]) / 2
    intercept = model.intercept_ if len(model.classes_) > 2 else np.array([-1, 1]) * model.intercept_[0] / 2
    weight = coef / scale
    bias = intercept - weight @ mean
    return weight.astype(np.float32), bias.astype(np.float32), model.classes_


def transform_sets(backbone: str, n_images: int, train_pixels: int, seed: int) -> list[list]:
    pairs = nasa_pairs("nasa_super", limit=n_images)
    data = [(read_grey(i), read_index_labels(lab)) for i, lab in pairs]
    rng = np.random.default_rng(seed)
    picks = []  # the same training pixels for every candidate
    for _, labels in data:
        flat = rng.choice(labels.size, size=train_pixels, replace=False)
        picks.append(np.divmod(flat, labels.shape[1]))
    bands = [boundary_band(labels) for _, labels in data]
    rows = []
    hr.Featurizer(hr.FeatureConfig(backbone=backbone, device="cpu")).backbone  # noqa: B018 (load once)
    for name, options in CANDIDATES:
        featurizer = hr.Featurizer(hr.FeatureConfig(backbone=backbone, device="cpu", **options))
        encodings, seconds, x, y = [], [], [], []
        for (image, labels), (r, c) in zip(data, picks):
            t, enc = timed(lambda: featurizer.encode(image))  # noqa: B023
            seconds.append(t)
            encodings.append(enc)
            x.append(enc.sample(r, c))
            y.append(labels[r, c])
        weight, bias, classes = fit_linear(np.concatenate(x), np.concatenate(y), seed)
        truth_all, pred_all, band_truth, band_pred = [], [], [], []
        for enc, (_, labels), (r, c), band in zip(encodings, data, picks, bands):
            pred = classes[enc.project(weight, bias).argmax(axis=0)]
            test = np.ones(labels.shape, bool)
            test[r, c] = False
            truth_all.append(labels[test])
            pred_all.append(pred[test])
            band_truth.append(labels[test & band])
            band_pred.append(pred[test & band])
        truth, pred = np.concatenate(truth_all), np.concatenate(pred_all)
        bt, bp = np.concatenate(band_truth), np.concatenate(band_pred)
        rows.append([name, featurizer.config.n_transforms, median(seconds), mean_iou(truth, pred, classes),
                     float((truth == pred).mean()), float((bt == bp).mean())])  # fmt: skip
        print(f"  done {name}: {rows[-1][2]:.1f} s/image", file=sys.stderr, flush=True)
    return rows


def tile_sizes(backbone: str) -> list[list]:
    import bench_features

    image = nasa_pairs("nasa_ebc")[0][0]
    rows = []
    for tile_size in (None, 518):
        code = bench_features._RSS_CHILD.format(
            image=str(image), size=1024, backbone=backbone, options={"tile_size": tile_size}
        )
        out, peak = run_with_peak_rss(code)
        info = json.loads(out.strip().splitlines()[-1])
        rows.append([str(tile_size), info["tiles"], info["tiles"] * info["transforms"], info["t_encode"],
                     info["t_pca"], gib(info["lowres_bytes"]), gib(peak)])  # fmt: skip
    return rows


def overlaps(backbone: str, n_images: int) -> list[list]:
    """Agreement with whole-image features and seams for tile overlaps 70 and 84 on 966x966 crops.

    966 = 2 * 518 - 70: overlap 70 gives 2x2 tiles overlapping by exactly 70 px (the regime of a
    4096 image with overlap <= 70, 9x9 tiles), overlap 84 gives 3x3 tiles. One pass (no shifts):
    context and blending, not the transform set, decide the agreement.
    """
    import bench_features

    base = hr.FeatureConfig(backbone=backbone, device="cpu", shifts="none")
    whole_f = hr.Featurizer(base.replace(tile_size=None))
    rows = []
    for overlap in (70, 84):
        tiled_f = hr.Featurizer(base.replace(tile_size=518, tile_overlap=overlap))
        metrics, seconds, n_tiles = [], [], 0
        for image_path, _ in nasa_pairs("nasa_ebc", limit=n_images):
            image = read_grey(image_path)[:966, :966]
            whole = whole_f.encode(image, with_attention=False)
            t, tiled = timed(lambda: tiled_f.encode(image, with_attention=False))  # noqa: B023
            borders = bench_features.tile_borders(966, 518, overlap)
            metrics.append(bench_features.agreement(tiled, whole, borders))
            seconds.append(t)
            n_tiles = len(tiled.tiles)
        mean = {key: float(np.mean([m[key] for m in metrics])) for key in metrics[0]}
        n_4096 = len(plan_tiles(4096, 4096, tile_size=518, overlap=overlap))
        rows.append([overlap, n_tiles, median(seconds), mean["cosine_mean"], mean["centred_cosine_mean"],
                     mean["pearson"], mean["seam_tiled"], mean["seam_whole"], n_4096])  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default=None, help="weights (default: random-init ViT-S/14 saved locally)")
    parser.add_argument("--images", type=int, default=4, help="nasa_super images (512x512) to use (default 4)")
    parser.add_argument("--train-pixels", type=int, default=2000, help="random GT training pixels per image")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default="transforms,tiles,overlap", help="comma-separated sections to run")
    parser.add_argument("--overlap-images", type=int, default=3, help="nasa_ebc crops for the overlap check")
    args = parser.parse_args(argv)
    backbone, random_weights = backbone_or_random(args.backbone)
    print(f"# bench_defaults | {machine_line()}")
    print(f"backbone: {backbone}")
    if random_weights:
        print(textwrap.fill(RANDOM_WEIGHTS_NOTE, 120))
    start = time.perf_counter()
    sections = set(args.only.split(","))
    if "transforms" in sections:
        print_table(
            transform_sets(backbone, args.images, args.train_pixels, args.seed),
            ["transforms", "passes", "encode s / 512 img", "mIoU", "pixel acc", f"boundary acc (<= {BOUNDARY_PX} px)"],
            title=f"Transform sets on nasa_super ({args.images} images 512x512; logistic regression on "
            f"{args.train_pixels} random GT pixels/image, tested on all other pixels; seed {args.seed})",
        )
    if "tiles" in sections:
        print_table(
            tile_sizes(backbone),
            ["tile_size", "tiles", "passes", "encode s", "pca_rgb s", "low-res maps", "peak RSS (subprocess)"],
            title="tile_size for a 1024x1024 nasa_ebc micrograph, default transforms (moore d=5)",
        )
    if "overlap" in sections:
        print_table(
            overlaps(backbone, args.overlap_images),
            [
                "tile_overlap",
                "tiles (966 px)",
                "encode s",
                "cos mean",
                "centred cos",
                "Pearson",
                "seam tiled",
                "seam whole",
                "tiles for 4096 px",
            ],  # fmt: skip
            title=f"tile_overlap on {args.overlap_images} nasa_ebc crops 966x966 (tile 518, no shifts), vs whole image",
        )
    print(f"\ntotal benchmark time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
