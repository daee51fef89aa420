"""Volumes (``FeatureConfig(volume=True)``): time and peak memory against volume size.

For cubes of side ``--sizes`` (default 64 128 256) cut from the bundled micrograph (each plane a shifted crop,
so the planes differ), each size in a fresh interpreter (its own peak RSS):

- *train*: ``fit_stack`` on two strokes painted on one XY plane: the planes through them are encoded (the XY
  plane, the XZ planes of the stroke rows, the YZ planes of its columns), then the classifier is fitted;
- *predict*: ``predict_stack`` of the whole volume: every plane of every orientation encoded once (3 x side
  encodings), logits ``n_classes x Z x Y x X`` float32 accumulated, labels read plane by plane.

Times are given as ratios to one bare 518 x 518 forward of the same backbone in the same run, and the peak
RSS against that of a fresh interpreter that ran one bare forward. The expected cost of *predict* is 3 x side
plane encodings of side x side pixels.

    PYTHONPATH=src python benchmarks/bench_volume.py --sizes 64 128
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _common import RANDOM_WEIGHTS_NOTE, backbone_or_random, gib, machine_line, print_table, run_with_peak_rss

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "napari_hrdv2" / "sample_data" / "superalloy_lshr_15kx.png"

BARE = """
import json, time, torch
torch.set_num_threads({threads})
import napari_hrdv2 as hr
from napari_hrdv2.core.backbone.vit import forward_tokens
bb = hr.Featurizer(hr.FeatureConfig(backbone={backbone!r}, device="cpu", dtype="float32")).backbone
pixels = torch.randn(1, 3, 518, 518)
with torch.inference_mode():
    forward_tokens(bb, pixels, with_attention=False)
    times = []
    for _ in range({repeat}):
        start = time.perf_counter()
        forward_tokens(bb, pixels, with_attention=False)
        times.append(time.perf_counter() - start)
print(json.dumps(sorted(times)[len(times) // 2]))
"""

VOLUME = """
import json, time, warnings
import numpy as np
import torch
torch.set_num_threads({threads})
import napari_hrdv2 as hr
from _common import read_grey
warnings.simplefilter("ignore")
side = {side}
grey = np.tile(read_grey({sample!r}), (2, 2))
volume = np.stack([grey[z : z + side, 2 * z : 2 * z + side] for z in range(side)])
labels = np.zeros(volume.shape, dtype=np.uint8)
labels[side // 2, side // 4 : 3 * side // 4, side // 8 : side // 8 + 3] = 1
labels[side // 2, side // 4 : 3 * side // 4, -side // 8 - 3 : -side // 8] = 2
config = hr.FeatureConfig(backbone={backbone!r}, device="cpu", dtype="float32", volume=True)
hr.Featurizer(config.replace(volume=False)).backbone  # loaded before the clock starts
start = time.perf_counter()
model = hr.fit_stack(hr.LinearSegmenter(), volume, labels, config)
trained = time.perf_counter()
predicted = hr.predict_stack(model, volume, config=config)
done = time.perf_counter()
print(json.dumps({{"train": trained - start, "predict": done - trained, "shape": list(predicted.shape)}}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--repeat", type=int, default=3, help="bare forwards timed (median)")
    parser.add_argument("--backbone", default=None)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: many small forwards on a shared CPU)"
    )
    args = parser.parse_args()
    backbone, random = backbone_or_random(args.backbone)
    print(machine_line())
    if random:
        print(RANDOM_WEIGHTS_NOTE)
    print(
        "config: FeatureConfig(volume=True) defaults (moore shifts d=5, 9 transforms), float32, CPU, "
        f"torch threads {args.threads} in every measurement"
    )
    out, bare_peak = run_with_peak_rss(BARE.format(backbone=backbone, repeat=args.repeat, threads=args.threads))
    unit = float(json.loads(out.strip().splitlines()[-1]))
    print(f"one bare 518x518 forward: {unit:.3f} s; peak RSS of a fresh interpreter after it: {gib(bare_peak)}")
    rows = []
    for side in args.sizes:
        started = time.perf_counter()
        out, peak = run_with_peak_rss(
            VOLUME.format(side=side, sample=str(SAMPLE), backbone=backbone, threads=args.threads)
        )
        figures = json.loads(out.strip().splitlines()[-1])
        logits = 2 * side**3 * 4
        rows.append(
            [
                f"{side}^3",
                f"{figures['train']:.1f}",
                f"{figures['train'] / unit:.0f}",
                f"{figures['predict']:.1f}",
                f"{figures['predict'] / unit:.0f}",
                f"{figures['predict'] / unit / (3 * side):.2f}",
                gib(peak),
                f"{peak / bare_peak:.2f}",
                f"{logits / 2**20:.0f} MiB",
                f"{time.perf_counter() - started:.0f}",
            ]
        )
        print(f"{side}^3 done: {figures}", flush=True)
    headers = ["volume", "train s", "train / fwd", "predict s", "predict / fwd", "per plane / fwd", "peak RSS",
               "peak / bare", "logits (2 classes)", "wall s"]  # fmt: skip
    print_table(rows, headers, title="volume features: time in bare 518x518 forwards, peak RSS")
    print("'per plane / fwd': predict time per encoded plane (3 x side of them) in bare 518x518 forwards.")


if __name__ == "__main__":
    main()
