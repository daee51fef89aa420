"""PCA bases over a dataset, and whether 90-degree rotations help the segmentation proxy; prints Markdown tables.

Sections (``--only fit,rotations``; results in benchmarks/README.md):

fit
    ``hr.fit_pca(paths, config=..., n_pixels=20000, max_pixels=100000)`` over the first N
    ``nasa_ebc`` micrographs (1024 x 1024, 9 tiles of 518 px each), N = 5 and 22, each in a fresh
    subprocess (:func:`_common.run_with_peak_rss`): wall time, time per image and peak RSS. The
    images are encoded one at a time and released; the sampled vectors stream into a uniform
    reservoir of at most ``max_pixels`` rows, so the peak must not grow with N. The features use
    ``--shifts`` (default ``none``, 1 forward pass per tile, to keep the 22-image run short on
    a CPU; the memory argument does not depend on it).
rotations
    The segmentation proxy of ``bench_segment.py`` (LinearSegmenter on scribbles; mean IoU over
    the classes of the dense ground truth) for feature settings with and without
    ``rotations=True``: ``tldr_scribbles`` (2 images, real human scribbles) and the first
    ``--images`` ``nasa_super`` images (scribbles sampled from the ground truth with seed 0, the
    protocol of ``bench_segment.py``). With random-init weights this RANKS SETTINGS ON THIS
    PROXY ONLY: it does not show DINOv2 quality.

Usage::

    python benchmarks/bench_pca.py --only fit              # ~4 min on 2 quiet CPU cores
    python benchmarks/bench_pca.py --only rotations        # ~5 min
    python benchmarks/bench_pca.py --backbone facebook/dinov2-small
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RANDOM_WEIGHTS_NOTE,
    SHARED_DATA,
    backbone_or_random,
    gib,
    machine_line,
    nasa_pairs,
    print_table,
    read_grey,
    read_index_labels,
    run_with_peak_rss,
)

_FIT_CHILD = """
import json, time
import numpy as np
import torch
import napari_hrdv2 as hr
torch.set_num_threads({threads})
paths = {paths!r}
crop = {crop!r}
config = hr.FeatureConfig(backbone={backbone!r}, device="cpu", shifts={shifts!r})


def planes():
    from skimage.io import imread

    for path in paths:  # one image in memory at a time, like fit_pca's own file reading
        image = imread(path)
        if crop:
            top, left = (image.shape[0] - crop) // 2, (image.shape[1] - crop) // 2
            image = image[top : top + crop, left : left + crop]
        yield image


start = time.perf_counter()
basis = hr.fit_pca(planes() if crop else paths, config=config, n_components=3, n_pixels=20000, max_pixels=100000)
seconds = time.perf_counter() - start
print(json.dumps({{"seconds": seconds, "n_images": basis.metadata["n_images"],
    "sampled": basis.metadata["n_pixels_sampled"], "fitted": basis.metadata["n_pixels_fitted"],
    "ratio": [float(v) for v in basis.explained_variance_ratio], "components": basis.components.tolist()}}))
"""


def _load_average() -> str:
    try:
        return " ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover
        return "n/a"


def section_fit(backbone: str, shifts: str, counts: list[int], threads: int, crop: int) -> None:
    paths = [str(image) for image, _ in nasa_pairs("nasa_ebc")]
    rows, components = [], {}
    for count in counts:
        load = _load_average()
        code = _FIT_CHILD.format(paths=paths[:count], backbone=backbone, shifts=shifts, threads=threads, crop=crop)
        out, peak = run_with_peak_rss(code, env={"OMP_WAIT_POLICY": "PASSIVE"})
        info = json.loads(out.strip().splitlines()[-1])
        components[count] = np.array(info["components"])
        reservoir = info["fitted"] * 384 * 4
        unbounded = info["sampled"] * 384 * 4
        rows.append([count, f"{info['seconds']:.1f}", f"{info['seconds'] / count:.2f}", gib(peak),
                     f"{info['sampled']} / {info['fitted']}", f"{reservoir / 2**20:.0f} MiB",
                     f"{unbounded / 2**20:.0f} MiB", load])  # fmt: skip
        print(f"  done {count} images", file=sys.stderr, flush=True)
    print_table(
        rows,
        [
            "images",
            "fit s",
            "s / image",
            "peak RSS (subprocess)",
            "pixels sampled / fitted",
            "reservoir (float32)",
            "all samples would be",
            "load avg 1/5/15 min before",
        ],  # fmt: skip
        title=f"(fit) PCA basis over nasa_ebc images ({f'centre {crop}x{crop} crops' if crop else '1024x1024'}), "
        f"FeatureConfig(shifts={shifts!r}), 20k px/image, max_pixels 100k",
    )
    if len(counts) >= 2:
        first, last = counts[0], counts[-1]
        cosines = np.abs(np.sum(components[first] * components[last], axis=1))
        print(f"|cos| between the axes fitted on {first} and on {last} images: {np.round(cosines, 3).tolist()}")


def _sample_scribbles(truth: np.ndarray, seed: int) -> np.ndarray:
    from bench_segment import sample_scribbles

    return sample_scribbles(truth, seed=seed)


def section_rotations(backbone: str, n_images: int, seed: int, random_weights: bool, cheap: bool) -> None:
    import napari_hrdv2 as hr
    from bench_segment import index_classes, mean_iou

    settings = {
        "none (1 pass)": dict(shifts="none"),
        "none + rotations (4)": dict(shifts="none", rotations=True),
        "neumann d=5 (5)": dict(shifts="neumann", shift_distances=(5,)),
        "neumann d=5 + rotations (20)": dict(shifts="neumann", shift_distances=(5,), rotations=True),
    }
    if cheap:
        del settings["neumann d=5 + rotations (20)"]
    featurizers = {
        name: hr.Featurizer(hr.FeatureConfig(backbone=backbone, device="cpu", **v)) for name, v in settings.items()
    }
    items = []
    for name in ("tests_data_0", "tests_data_1"):
        folder = SHARED_DATA / "tldr_scribbles"
        items.append(("tldr", name, read_grey(folder / f"{name}.tif"),
                      index_classes(read_grey(folder / f"{name}_labels.tif")),
                      index_classes(read_grey(folder / f"{name}_ground_truth.tif"))))  # fmt: skip
    for image_path, label_path in nasa_pairs("nasa_super", limit=n_images):
        truth = read_index_labels(label_path) + 1
        items.append(("nasa_super", image_path.stem, read_grey(image_path), _sample_scribbles(truth, seed), truth))
    rows, seconds = [], {name: [] for name in settings}
    for dataset, name, image, scribbles, truth in items:
        ious = []
        for setting, featurizer in featurizers.items():
            start = time.perf_counter()
            encoding = featurizer.encode(image, with_attention=False)
            seconds[setting].append(time.perf_counter() - start)
            prediction = hr.LinearSegmenter().fit(encoding, scribbles).predict(encoding)
            ious.append(mean_iou(truth, prediction))
            del encoding
        rows.append([dataset, name[:24], f"{image.shape[0]}x{image.shape[1]}", *ious])
        print(f"  done {dataset} {name}", file=sys.stderr, flush=True)
    note = " - RANDOM-INIT WEIGHTS: ranks settings on this proxy, NOT DINOv2 quality" if random_weights else ""
    print_table(rows, ["dataset", "image", "size", *settings], title=f"(rotations) mean IoU per image{note}")
    summary = [[name, float(np.mean([row[3 + i] for row in rows])),
                float(np.mean([row[3 + i] for row in rows if row[0] == "tldr"])),
                float(np.mean([row[3 + i] for row in rows if row[0] == "nasa_super"])),
                float(np.median(seconds[name]))] for i, name in enumerate(settings)]  # fmt: skip
    print_table(summary, ["setting (passes)", "mIoU all", "tldr", "nasa_super", "encode s (median)"],
                title=f"(rotations) summary over {len(rows)} images{note}")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default=None, help="weights (default: random-init ViT-S/14 saved locally)")
    parser.add_argument("--only", default="fit,rotations", help="comma-separated sections: fit, rotations")
    parser.add_argument("--shifts", default="none", choices=("none", "neumann", "moore"), help="fit section features")
    parser.add_argument("--counts", default="5,22", help="numbers of nasa_ebc images to fit on (fit)")
    parser.add_argument("--images", type=int, default=4, help="nasa_super images (rotations)")
    parser.add_argument(
        "--crop", type=int, default=0, help="fit on centre crops of this side (0 = whole 1024 px images; 518 = 1 tile)"
    )
    parser.add_argument(
        "--settings", default="all", choices=("all", "cheap"), help="rotations: 'cheap' drops neumann + rotations (20)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: robust on a shared, oversubscribed CPU)"
    )
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    backbone, random_weights = backbone_or_random(args.backbone)
    print(f"# bench_pca | {machine_line()} | load average {_load_average()}")
    print(f"command: python benchmarks/bench_pca.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    print(f"backbone: {backbone}")
    if random_weights:
        print(RANDOM_WEIGHTS_NOTE)
    started = time.perf_counter()
    sections = set(args.only.split(","))
    if "fit" in sections:
        section_fit(backbone, args.shifts, [int(c) for c in args.counts.split(",")], args.threads, args.crop)
    if "rotations" in sections:
        section_rotations(backbone, args.images, args.seed, random_weights, args.settings == "cheap")
    print(f"\ntotal benchmark time {time.perf_counter() - started:.0f} s | load average {_load_average()}")


if __name__ == "__main__":
    main()
