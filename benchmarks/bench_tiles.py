"""Old (fixed 518-px) vs new (cost-based) tile plans: tiles, tokens, encode time, feature agreement.

For square crops of the bundled micrograph (or ``$HRDV2_DATA``'s ``--image``), tiled up to each size,
prints the old plan (tiles of 518 px, overlap 84: the planner before cost-based plans) and the new one
(:func:`napari_hrdv2.core.features.tiling.plan_tiles` under the default bound), the encode time of the
chosen preset with each plan as a ratio to one bare 518 x 518 forward in the same run, and the mean
cosine of old vs new features, and the whole job the issue times (encode + fit + predict with the new plan;
3 classes x 1000 labelled pixels from intensity terciles, fixed seed) in the same unit. ``--seams`` adds the seam error of tiled vs whole-image features for
overlaps of 1..6 patches. ``--runtime torch onnxruntime openvino`` times the same jobs with each runtime
(``FeatureConfig.runtime``; an exported runtime's one-off export (or cached-export load) and compile are made before the timing and
printed apart); the unit stays one bare 518 x 518 torch forward.

    PYTHONPATH=src python benchmarks/bench_tiles.py --sizes 518 1024 2048 --repeat 1
    PYTHONPATH=src python benchmarks/bench_tiles.py --sizes 1024 --runtime torch onnxruntime openvino
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import napari_hrdv2 as hr
from _common import RANDOM_WEIGHTS_NOTE, SHARED_DATA, backbone_or_random, machine_line, median, print_table, timed
from napari_hrdv2.core.backbone.vit import forward_tokens
from napari_hrdv2.core.config import PRESETS, RUNTIMES
from napari_hrdv2.core.features.tiling import Tile, plan_cost

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "napari_hrdv2" / "sample_data" / "superalloy_lshr_15kx.png"


def image_of(size: int, path: Path) -> np.ndarray:
    from _common import read_grey

    grey = read_grey(path)
    reps = (math.ceil(size / grey.shape[0]), math.ceil(size / grey.shape[1]))
    return np.tile(grey, reps)[:size, :size]


def tokens(tiles: list[Tile], patch: int) -> int:
    side = lambda n: 1 + -(-(n - patch) // patch) if n > patch else 1  # noqa: E731
    return sum(side(t.height) * side(t.width) for t in tiles)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    return float(((a * b).sum(0) / (np.linalg.norm(a, axis=0) * np.linalg.norm(b, axis=0) + 1e-12)).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[518, 1024, 2048])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--preset", default="balanced", choices=[*PRESETS, "identity"])
    parser.add_argument("--image", default=None, help="file name in $HRDV2_DATA (default: the bundled sample)")
    parser.add_argument("--backbone", default=None)
    parser.add_argument("--seams", action="store_true", help="seam error for overlaps of 1..6 patches")
    parser.add_argument("--runtime", nargs="+", default=["torch"], choices=RUNTIMES, help="runtimes to time")
    args = parser.parse_args()
    backbone, random = backbone_or_random(args.backbone)
    path = SHARED_DATA / args.image if args.image else SAMPLE
    preset = {"shifts": "none", "flips": False} if args.preset == "identity" else PRESETS[args.preset]
    base = hr.FeatureConfig(backbone=backbone, device="cpu", dtype="float32", **preset)
    print(machine_line())
    print(f"image: {path.name}, preset {args.preset} ({base.n_transforms} transforms), float32, repeat {args.repeat}")
    if random:
        print(RANDOM_WEIGHTS_NOTE)
    old_config, new_config = base.replace(tile_size=518, tile_overlap=84), base
    new = hr.Featurizer(new_config)
    bb = new.backbone
    patch = bb.patch_size
    pixels = torch.randn(1, 3, 518, 518)

    def bare_forward() -> float:
        """Seconds of one bare 518 x 518 torch forward: the unit, timed next to every encode of a row."""
        with torch.inference_mode():
            return timed(lambda: forward_tokens(bb, pixels, with_attention=False))[0]

    bare_forward()  # warm-up
    print(f"one bare 518x518 forward: {bare_forward():.2f} s now; each row's unit is the median of the bare forwards "
          "timed before, between and after its encodes (the 'unit s' column)")  # fmt: skip
    rows = []
    for runtime in args.runtime:
        if runtime != "torch":
            warm_up = hr.Featurizer(new_config.replace(runtime=runtime), backbone=bb)
            ramp = np.arange(4 * patch * patch, dtype=np.uint8).reshape(2 * patch, 2 * patch)
            seconds, _ = timed(lambda f=warm_up, x=ramp: f.encode(x))
            print(f"{runtime}: export (or load of the cached export) and session, once: {seconds:.1f} s")
        for size in args.sizes:
            rows.append(plan_row(size, path, bb, old_config.replace(runtime=runtime),
                                 new_config.replace(runtime=runtime), bare_forward, args.repeat))  # fmt: skip
    headers = ["runtime", "px", "unit s", "old tiles", "new tiles", "old tokens", "new tokens", "cost new/old",
               "old enc", "new enc", "time new/old", "cos old-new", "fit+predict", "new total"]  # fmt: skip
    print_table(rows, headers, title="encode time in bare 518x518 torch forwards")
    if args.seams:
        seams(base, bb, path, patch)


def plan_row(
    size: int, path: Path, bb, old_config, new_config, bare_forward: Callable[[], float], repeat: int
) -> list:
    """One table row: the old and new plans of a ``size`` crop encoded, then fit + predict, in units of the
    median bare forward timed before, between and after the encodes (``bare_forward()``), so that each row
    carries its own minutes' load in its unit too."""
    patch = bb.patch_size
    image = image_of(size, path)
    new = hr.Featurizer(new_config, backbone=bb)
    old = hr.Featurizer(old_config, backbone=bb)
    # The old planner: fixed 518-px tiles, starts round(linspace), as before cost-based plans.
    old_tiles = _old_plan(size, size, 518, 84)
    new_tiles = new.plan_tiles(size, size)
    results = {}
    old.plan_tiles = lambda h, w, _t=old_tiles: _t  # the old plan through the same encoder
    units = [bare_forward()]
    for name, featurizer in (("old", old), ("new", new)):
        times = []
        for _ in range(repeat):
            seconds, encoding = timed(lambda f=featurizer, x=image: f.encode(x, with_attention=False))
            times.append(seconds)
            units.append(bare_forward())
        results[name] = (median(times), encoding.features())
    fit_predict = median([train_and_predict(encoding, image) for _ in range(repeat)])
    unit = median(units)
    return [
        new_config.runtime,
        size,
        f"{unit:.2f}",
        f"{len(old_tiles)} x {old_tiles[0].height}",
        f"{len(new_tiles)} x {new_tiles[0].height}x{new_tiles[0].width}",
        tokens(old_tiles, patch),
        tokens(new_tiles, patch),
        f"{plan_cost(new_tiles) / plan_cost(old_tiles):.2f}",
        f"{results['old'][0] / unit:.1f}",
        f"{results['new'][0] / unit:.1f}",
        f"{results['new'][0] / results['old'][0]:.2f}",
        f"{cosine(results['old'][1], results['new'][1]):.4f}",
        f"{fit_predict / unit:.1f}",
        f"{(results['new'][0] + fit_predict) / unit:.1f}",
    ]


def train_and_predict(encoding: hr.Encoding, image: np.ndarray, *, per_class: int = 1000, seed: int = 0) -> float:
    """Seconds to fit a LinearSegmenter on 3 x ``per_class`` pixels (labelled by intensity tercile) and predict."""
    rng = np.random.default_rng(seed)
    edges = np.quantile(image, [1 / 3, 2 / 3])
    classes = np.digitize(image, edges) + 1
    labels = np.zeros(image.shape, np.uint8)
    for value in (1, 2, 3):
        rows, cols = np.nonzero(classes == value)
        pick = rng.choice(rows.size, size=min(per_class, rows.size), replace=False)
        labels[rows[pick], cols[pick]] = value
    seconds, _ = timed(lambda: hr.LinearSegmenter().fit(encoding, labels).predict(encoding))
    return seconds


def _old_plan(height: int, width: int, tile: int, overlap: int) -> list[Tile]:
    from napari_hrdv2.core.features.tiling import _axis_weights

    def spans(length: int) -> list[tuple[int, int]]:
        if length <= tile:
            return [(0, length)]
        count = math.ceil((length - overlap) / (tile - overlap))
        return [(int(s), int(s) + tile) for s in np.round(np.linspace(0, length - tile, count))]

    rs, cs = spans(height), spans(width)
    rw, cw = _axis_weights(rs, height), _axis_weights(cs, width)
    return [Tile(r0, c0, r1 - r0, c1 - c0, a, b) for (r0, r1), a in zip(rs, rw) for (c0, c1), b in zip(cs, cw)]


def seams(base: hr.FeatureConfig, bb, path: Path, patch: int) -> None:
    """Relative error of tiled vs whole-image features, for overlaps of 1..6 patches (tiles of at most 280 px)."""
    image = image_of(560, path)
    whole = hr.Featurizer(base.replace(tile_size=None), backbone=bb).encode(image, with_attention=False).features()
    rows = []
    for n in range(1, 7):
        config = base.replace(tile_size=280, tile_overlap=n * patch)
        tiled = hr.Featurizer(config, backbone=bb).encode(image, with_attention=False)
        error = np.linalg.norm(tiled.features() - whole, axis=0) / (np.linalg.norm(whole, axis=0) + 1e-12)
        rows.append([n, n * patch, len(tiled.tiles), f"{error.mean():.4f}", f"{cosine(tiled.features(), whole):.4f}"])
    print_table(rows, ["overlap patches", "px", "tiles", "rel. error", "cos vs whole"], title="seams (560 px)")


if __name__ == "__main__":
    main()
