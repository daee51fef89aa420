"""Per-channel features (``channel_mode="separate"``): time and peak memory against the number of channels.

For C channels (default 1, 3, 5, 10) of a ``--size`` x ``--size`` image (default 1024), each run in a fresh
interpreter (its own peak RSS, after a warm-up encode of one channel): encode with ``channel_mode="separate"``, then predict 3 classes with a random
linear model through the low-resolution path (``ChannelEncoding.project``: one 3-channel projection per
channel block, never the C x D features). Times are given as ratios to one bare 518 x 518 forward of the
same backbone timed in the same run; memory as the encoding's low-resolution maps and the process's peak
RSS, next to the peak RSS of a process that only loads the model and runs bare forwards. ``s / channel`` is the
encode time divided by C; the last column divides the encode ratio by C times the 1-channel ratio (1.0 = exactly
linear in C).

    cd benchmarks && PYTHONPATH=../src python bench_channels.py --size 1024 --channels 1 3 5 10
    cd benchmarks && PYTHONPATH=../src python bench_channels.py --size 256 --channels 1 3   # quick
"""

from __future__ import annotations

import argparse
import json

from _common import RANDOM_WEIGHTS_NOTE, backbone_or_random, gib, machine_line, print_table, run_with_peak_rss

CHILD = """
import json, time
import numpy as np, torch
import napari_hrdv2 as hr
from napari_hrdv2.core.backbone.vit import forward_tokens
config = hr.FeatureConfig.from_dict(json.loads({config!r}))
featurizer = hr.Featurizer(config)
backbone = featurizer.backbone
with torch.inference_mode():
    pixels = torch.randn(1, 3, 518, 518)
    forward_tokens(backbone, pixels, with_attention=False)  # warm-up
    times = []
    for _ in range(3):
        start = time.perf_counter(); forward_tokens(backbone, pixels, with_attention=False)
        times.append(time.perf_counter() - start)
    unit = sorted(times)[1]  # median of 3: the machine may be shared
result = {{"unit": unit}}
if {channels} > 0:
    rng = np.random.default_rng(0)
    image = (rng.random(({size}, {size}, {channels})) * 4000).astype(np.uint16)
    with torch.inference_mode():
        featurizer.encode(image[..., :1], with_attention=False)  # warm-up: the first forward of a tile shape is slow
        start = time.perf_counter(); encoding = featurizer.encode(image, with_attention=False)
        result["encode"] = time.perf_counter() - start
    weight = rng.standard_normal((3, encoding.n_features)).astype(np.float32)
    start = time.perf_counter(); logits = encoding.project(weight, np.zeros(3, np.float32))
    result["predict"] = time.perf_counter() - start
    result["maps"] = encoding.nbytes
    result["n_features"] = encoding.n_features
print(json.dumps(result))
"""


def run_child(config, size: int, channels: int) -> tuple[dict, int]:
    code = CHILD.format(config=json.dumps(config.to_dict()), size=size, channels=channels)
    out, peak = run_with_peak_rss(code)
    return json.loads(out.strip().splitlines()[-1]), peak


def main() -> None:
    import napari_hrdv2 as hr
    from napari_hrdv2.core.config import PRESETS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024, help="image side in pixels (default 1024)")
    parser.add_argument("--channels", type=int, nargs="+", default=[1, 3, 5, 10])
    parser.add_argument(
        "--preset", default="identity", choices=[*PRESETS, "identity"], help="default identity (1 pass)"
    )
    parser.add_argument("--backbone", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    backbone, random = backbone_or_random(args.backbone)
    preset = {"shifts": "none", "flips": False} if args.preset == "identity" else PRESETS[args.preset]
    config = hr.FeatureConfig(
        backbone=backbone, device=args.device, dtype=args.dtype, channel_mode="separate", **preset
    )
    print(machine_line())
    print(f"{args.size} x {args.size} px, preset {args.preset} ({config.n_transforms} transforms), {args.dtype}")
    if random:
        print(RANDOM_WEIGHTS_NOTE)
    bare, bare_peak = run_child(config, args.size, 0)
    print(f"bare process (model + 518x518 forwards): {bare['unit']:.2f} s per forward, peak RSS {gib(bare_peak)}")
    rows, one = [], None
    for channels in args.channels:
        result, peak = run_child(config, args.size, channels)
        unit = result["unit"]
        encode = result["encode"] / unit
        one = encode / channels if one is None and channels == 1 else one
        rows.append(
            [
                channels,
                result["n_features"],
                f"{result['encode']:.1f}",
                f"{result['encode'] / channels:.1f}",
                f"{encode:.1f}",
                f"{result['predict'] / unit:.2f}",
                f"{result['maps'] / 2**20:.0f}",
                gib(peak),
                f"{peak / bare_peak:.2f}",
                f"{encode / (channels * one):.2f}" if one else "-",
            ]
        )
    headers = ["C", "features", "encode s", "s / channel", "encode / fwd", "predict / fwd", "maps MiB", "peak RSS",
               "peak / bare", "encode / (C x 1-ch)"]  # fmt: skip
    print_table(rows, headers, title="channel_mode='separate': time in bare 518x518 forwards (same run), memory")


if __name__ == "__main__":
    main()
