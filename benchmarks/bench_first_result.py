"""Time to the first visible result and to the final result in the napari dock, as ratios to one forward pass.

A new user presses Compute on a 512x512 micrograph (``nasa_super`` from ``../shared/data`` if present,
else the bundled superalloy sample) with the ``balanced`` preset (9 passes) on the CPU. The dock runs
:func:`napari_hrdv2._workers.features_job` in a thread worker and shows the first PCA view when it
yields the first ``PartialFeatures`` (after the identity pass), the final one when it returns.

Measured in one process, after the backbone is loaded (loading is reported separately), repeated
``--repeats`` times with a fresh encoding cache each time (medians):

- ``forward``: one bare backbone forward of the same image (padded to the patch grid), the unit;
- ``first``: start of the job -> first ``PartialFeatures`` (the first PCA view the user sees);
- ``final``: start of the job -> the returned result (PCA, attention, feature range).

Goal (issue 8): first result within 2x one forward. Random-init ViT-S/14 by default (speed of the real
model, not its quality); ``--backbone`` for real weights.

Usage::

    python benchmarks/bench_first_result.py [--repeats 3] [--preset balanced] [--backbone PATH]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from _common import SHARED_DATA, backbone_or_random, machine_line, median, read_grey

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "napari_hrdv2" / "sample_data" / "superalloy_lshr_15kx.png"


def micrograph() -> tuple[np.ndarray, str]:
    candidates = sorted((SHARED_DATA / "nasa_super" / "images").glob("*.png"))
    for path in candidates:
        image = read_grey(path)
        if image.shape[:2] == (512, 512):
            return image, str(path)
    return read_grey(SAMPLE), str(SAMPLE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--preset", default="balanced", choices=("fast", "balanced", "quality"))
    parser.add_argument("--backbone", help="real weights; default: random-init ViT-S/14")
    args = parser.parse_args()

    import torch

    from napari_hrdv2._workers import PartialFeatures, features_job
    from napari_hrdv2.core.backbone.vit import forward_tokens
    from napari_hrdv2.core.config import PRESETS, FeatureConfig
    from napari_hrdv2.core.features.cache import EncodingCache
    from napari_hrdv2.core.features.encoding import Featurizer, pad_to_grid

    backbone, random_init = backbone_or_random(args.backbone)
    image, source = micrograph()
    config = FeatureConfig(backbone=backbone, device="cpu", **PRESETS[args.preset])
    print(machine_line())
    print(f"image {source} {image.shape}; preset {args.preset} ({config.n_transforms} passes); torch threads "
          f"{torch.get_num_threads()}; {'random-init ViT-S/14 (speed only, not DINOv2 quality)' if random_init else backbone}")  # fmt: skip

    start = time.perf_counter()
    featurizer = Featurizer(config)
    model = featurizer.backbone
    print(f"backbone load: {time.perf_counter() - start:.2f} s (not part of the ratios)")

    # The unit: one bare forward of the same image, as the encoder feeds it (RGB, normalised, padded).
    pixels = torch.from_numpy(np.repeat(image[None].astype(np.float32) / max(float(image.max()), 1.0), 3, axis=0))
    pixels = (pixels - torch.tensor(model.mean).view(3, 1, 1)) / torch.tensor(model.std).view(3, 1, 1)
    padded = pad_to_grid(pixels, patch_size=model.patch_size, stride=model.patch_size)[None].to(featurizer.dtype)
    forwards, firsts, finals = [], [], []
    with torch.inference_mode():
        forward_tokens(model, padded, stride=model.patch_size)  # warm-up
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            forward_tokens(model, padded, stride=model.patch_size)
            forwards.append(time.perf_counter() - t0)

    for _ in range(args.repeats):
        cache = EncodingCache()
        cache._featurizers[config] = featurizer  # the loaded model, as in the dock after its first Compute
        t0 = time.perf_counter()
        first = None
        steps = features_job(image, [0], config, cache, is_stack=False, pca=True, attention=True)
        while True:
            try:
                item = next(steps)
            except StopIteration:
                break
            if first is None and isinstance(item, PartialFeatures) and item.pca is not None:
                first = time.perf_counter() - t0
        finals.append(time.perf_counter() - t0)
        firsts.append(first if first is not None else float("nan"))

    unit = median(forwards)
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    print(f"one forward (512 -> 518 px):   {unit:6.2f} s   1.00x   (runs: {', '.join(f'{t:.2f}' for t in forwards)})")
    print(f"first visible result (PCA):    {median(firsts):6.2f} s   {median(firsts) / unit:.2f}x   "
          f"(runs: {', '.join(f'{t:.2f}' for t in firsts)})")  # fmt: skip
    print(f"final result (9-pass average): {median(finals):6.2f} s   {median(finals) / unit:.2f}x   "
          f"(runs: {', '.join(f'{t:.2f}' for t in finals)})")  # fmt: skip
    print(f"goal: first <= 2x one forward -> {'met' if median(firsts) <= 2 * unit else 'NOT met'}")


if __name__ == "__main__":
    main()
