"""Speed, memory and tiling agreement of the HR-Dv2 feature engine; prints Markdown tables.

Sections (see benchmarks/README.md for what each figure means):

(a) CPU overhead: ``encode`` (attention included) + ``features()`` of a 518x518 micrograph with
    17 transforms (Moore, distances 1 and 2) as a ratio to 17 bare ``model(pixel_values=...)``
    forwards of the same image (sdpa attention, inference mode), measured in the same run, in
    batches of 1 and of 4 (the encode uses the default batch size: 1 on the CPU). Every
    encode+features run sits between two baseline runs and is divided by their mean (the machine
    may be shared); the median of these per-repeat ratios against the faster baseline is checked
    against the target <= 1.15. Process CPU time ratios are printed too. Also ``features()``, ``attention()``, ``project()`` (3 channels) and ``sample()``
    (50k pixels) alone.
(b) Peak RSS of encoding a 4096x4096 micrograph (the default FeatureConfig) in a fresh subprocess,
    interpreter, torch and model included. Target <= 3 GB. The peak after a PCA-RGB view of it is
    printed too. ``--quick`` uses 2048x2048.
(c) The same 518 configuration through the upstream HR-Dv2 recipe expressed with our code:
    for every transform, ``F.interpolate`` the full (C, H, W) map, invert the transform and
    accumulate. Time and peak RSS vs ours, and the maximum difference of the results.
(d) GPU: milliseconds for 1024x1024, 17 transforms, float16 (only where CUDA is available).
(e) Tiled (518, overlap 84) vs whole-image features on real 1024x1024 ``nasa_ebc`` micrographs:
    per-pixel cosine, Pearson correlation, and a seam check.

Usage::

    python benchmarks/bench_features.py            # everything (~25 min for a,c,d,e + ~30-60 min for (b) on 2 busy cores)
    python benchmarks/bench_features.py --quick    # 2048 px for (b), 3 repeats, 1 image for (e) (~15 min)
    python benchmarks/bench_features.py --only b   # the 4096x4096 RSS section alone
    python benchmarks/bench_features.py --only a,c --backbone facebook/dinov2-small
    python benchmarks/bench_features.py --only a,b --backbone random-dinov3   # random DINOv3 ViT-S/16 (patch 16, RoPE)
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import napari_hrdv2 as hr  # noqa: E402
from _common import (  # noqa: E402
    RANDOM_WEIGHTS_NOTE,
    SHARED_DATA,
    backbone_or_random,
    gib,
    machine_line,
    median,
    nasa_pairs,
    print_table,
    read_grey,
    run_with_peak_rss,
    timed,
)
from napari_hrdv2.core.backbone.vit import forward_tokens  # noqa: E402
from napari_hrdv2.core.features.encoding import pad_to_grid  # noqa: E402
from napari_hrdv2.core.features.preprocess import to_rgb01  # noqa: E402

MOORE_12 = {"shifts": "moore", "shift_distances": (1, 2)}


def tcell_518() -> np.ndarray:
    """The first 518x518 T-cell TEM micrograph of the HR-Dv2 paper's stack."""
    return read_grey(SHARED_DATA / "hrdv2_tcell" / "images.tif")


def normalised_pixels(featurizer: hr.Featurizer, image: np.ndarray) -> torch.Tensor:
    """(3, H, W) ImageNet-normalised tensor, exactly as the Featurizer prepares it."""
    backbone = featurizer.backbone
    rgb = to_rgb01(image, normalize=featurizer.config.normalize, min_side=backbone.patch_size)
    mean = torch.tensor(backbone.mean).view(3, 1, 1)
    std = torch.tensor(backbone.std).view(3, 1, 1)
    return (torch.from_numpy(rgb).permute(2, 0, 1) - mean) / std


def bare_forwards(model: torch.nn.Module, pixels: torch.Tensor, count: int, batch: int) -> None:
    """``count`` plain forwards of ``pixels`` (1, 3, H, W) in batches of ``batch``."""
    with torch.inference_mode():
        for start in range(0, count, batch):
            n = min(batch, count - start)
            model(pixel_values=pixels.expand(n, -1, -1, -1).contiguous())


# ---------------------------------------------------------------- (a)


def section_a(backbone: str, repeats: int) -> None:
    image = tcell_518()
    config = hr.FeatureConfig(backbone=backbone, device="cpu", **MOORE_12)
    featurizer = hr.Featurizer(config)
    model = featurizer.backbone.model
    k = config.n_transforms
    patch = featurizer.backbone.patch_size
    pixels = pad_to_grid(normalised_pixels(featurizer, image), patch_size=patch, stride=patch)[None]
    batch = 4  # the batched baseline; the encode runs with the default (auto) batch size
    encode_batch = config.resolved_batch_size(featurizer.device.type)
    bare_forwards(model, pixels, k, batch)  # warm-up of both paths (allocator, oneDNN kernels)
    featurizer.encode(image, with_attention=True).features()
    wall: dict[str, list[float]] = {n: [] for n in ("bare1", "bareb", "enc", "feat", "attention", "project", "sample")}
    cpu: dict[str, list[float]] = {name: [] for name in wall}

    def measure(name: str, fn: Callable[[], Any]) -> Any:
        tick, cpu_tick = time.perf_counter(), time.process_time()
        result = fn()
        wall[name].append(time.perf_counter() - tick)
        cpu[name].append(time.process_time() - cpu_tick)
        return result

    # Sandwich design against the shared machine's slow phases: B1 Bb E B1 Bb E ... B1 Bb, and every
    # encode+features run E is compared with the mean of the baseline runs just before and just after it.
    enc = None
    for i in range(repeats + 1):
        measure("bare1", lambda: bare_forwards(model, pixels, k, 1))
        measure("bareb", lambda: bare_forwards(model, pixels, k, batch))
        if i < repeats:
            enc = measure("enc", lambda: featurizer.encode(image, with_attention=True))
            measure("feat", enc.features)
    assert enc is not None

    def ratios(times: dict[str, list[float]], base: str) -> list[float]:
        return [
            (times["enc"][i] + times["feat"][i]) / ((times[base][i] + times[base][i + 1]) / 2) for i in range(repeats)
        ]

    ratio1, ratio_b = ratios(wall, "bare1"), ratios(wall, "bareb")
    cpu_ratio1, cpu_ratio_b = ratios(cpu, "bare1"), ratios(cpu, "bareb")
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((3, enc.n_features)).astype(np.float32)
    flat = rng.choice(image.shape[0] * image.shape[1], size=50_000, replace=False)
    sample_rows, sample_cols = np.divmod(flat, image.shape[1])
    for _ in range(repeats):
        for name, fn in (
            ("attention", enc.attention),
            ("project", lambda: enc.project(weight)),
            ("sample", lambda: enc.sample(sample_rows, sample_cols)),
        ):
            measure(name, fn)
    base = median(wall["bare1"])

    def row(label: str, name: str) -> list:
        return [label, median(wall[name]), median(cpu[name]), median(wall[name]) / base]

    table = [
        row(f"{k} bare forwards, batch 1", "bare1"),
        row(f"{k} bare forwards, batch {batch}", "bareb"),
        row(f"encode (default batch {encode_batch}, attention included)", "enc"),
        row(f"features() ({enc.n_features}, 518, 518)", "feat"),
        [
            "encode + features()",
            median([a + b for a, b in zip(wall["enc"], wall["feat"])]),
            median([a + b for a, b in zip(cpu["enc"], cpu["feat"])]),
            median([a + b for a, b in zip(wall["enc"], wall["feat"])]) / base,
        ],
        row(f"attention() ({enc.n_heads}, 518, 518)", "attention"),
        row("project() 3 channels", "project"),
        row("sample() 50k pixels", "sample"),
    ]
    print_table(
        table,
        ["step", "wall s (median)", "process CPU s (median)", "wall / batch-1 forwards"],
        title=f"(a) CPU, 518x518 T-cell TEM, {k} transforms (moore, d=1,2), default config, {repeats} repeats, "
        f"patch {patch}, {featurizer.backbone.family}",
    )
    worst = max(median(ratio1), median(ratio_b))
    print(
        f"encode+features / {k} bare forwards, wall clock, median of per-repeat ratios (each run against the mean of "
        f"the baseline runs just before and after it): vs batch-1 forwards {median(ratio1):.3f}, vs batch-{batch} "
        f"forwards {median(ratio_b):.3f}. Target <= 1.15 against the faster baseline: "
        f"{'PASS' if worst <= 1.15 else 'FAIL'} ({worst:.3f}).\n"
        f"Per repeat, wall vs batch-{batch}: {', '.join(f'{r:.3f}' for r in ratio_b)}; vs batch-1: "
        f"{', '.join(f'{r:.3f}' for r in ratio1)}.\n"
        f"Same ratios in process CPU time (all threads; less sensitive to other processes, but counts OpenMP "
        f"spin-waiting): vs batch-{batch} {median(cpu_ratio_b):.3f}, vs batch-1 {median(cpu_ratio1):.3f}."
    )


# ---------------------------------------------------------------- (b)

_RSS_CHILD = """
import json, time
import numpy as np
from _common import peak_rss_self as rss, read_grey
import napari_hrdv2 as hr
tile = read_grey({image!r})
image = np.tile(tile, (-(-{size} // tile.shape[0]), -(-{size} // tile.shape[1])))[:{size}, :{size}]
config = hr.FeatureConfig(backbone={backbone!r}, device="cpu", **{options!r})
featurizer = hr.Featurizer(config)
featurizer.backbone
after_load = rss()
start = time.perf_counter()
enc = featurizer.encode(image)
t_encode = time.perf_counter() - start
after_encode = rss()
start = time.perf_counter()
rgb = hr.pca_rgb(enc)
t_pca = time.perf_counter() - start
print(json.dumps(dict(tiles=len(enc.tiles), transforms=enc.n_transforms, lowres_bytes=enc.nbytes,
                      t_encode=t_encode, t_pca=t_pca, after_load=after_load, after_encode=after_encode,
                      after_pca=rss(), rgb_shape=list(rgb.shape))))
"""


def section_b(backbone: str, size: int) -> None:
    image = nasa_pairs("nasa_ebc")[0][0]
    config = hr.FeatureConfig(backbone=backbone, device="cpu")
    code = _RSS_CHILD.format(image=str(image), size=size, backbone=backbone, options={})
    t_wall, (out, peak) = timed(lambda: run_with_peak_rss(code))
    info = json.loads(out.strip().splitlines()[-1])
    table = [
        ["tiles x transforms", f"{info['tiles']} x {info['transforms']} = {info['tiles'] * info['transforms']} passes"],
        [
            "encode time",
            f"{info['t_encode']:.0f} s ({info['t_encode'] / (info['tiles'] * info['transforms']):.2f} s/pass)",
        ],
        ["pca_rgb (fit on 10k samples + project 3 ch)", f"{info['t_pca']:.1f} s"],
        ["low-res maps held by the Encoding", gib(info["lowres_bytes"])],
        ["RSS after loading model (interpreter+torch+model)", gib(info["after_load"])],
        ["peak RSS of load + encode (the target)", gib(info["after_encode"])],
        ["peak RSS of the whole run, + pca_rgb", gib(peak)],
        ["dense float32 (C, H, W) for comparison", gib(384 * size * size * 4)],
    ]
    print_table(
        table,
        ["quantity", "value"],
        title=f"(b) peak RSS, {size}x{size} (nasa_ebc micrograph tiled), default config "
        f"(moore d={config.shift_distances}, tile {config.tile_size}/{config.tile_overlap}, batch {config.resolved_batch_size('cpu')}), "
        f"subprocess wall {t_wall:.0f} s",
    )
    encode_peak = info["after_encode"]
    print(
        f"peak RSS encoding the image (interpreter, torch and model included): {encode_peak / 1e9:.2f} GB, target "
        f"<= 3 GB: {'PASS' if encode_peak <= 3e9 else 'FAIL'}. Whole run including pca_rgb: {peak / 1e9:.2f} GB "
        f"({'within' if peak <= 3e9 else 'over'} 3 GB). GB = 1e9 bytes, GiB = 2**30 bytes."
    )


# ---------------------------------------------------------------- (c)


def upstream_features(featurizer: hr.Featurizer, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """HR-Dv2 as upstream computes it: full-resolution interpolation of every transform's map.

    Returns ``(features (C, H, W), attention (heads, H, W), seconds spent after the forwards)``.
    """
    backbone = featurizer.backbone
    pixels = normalised_pixels(featurizer, image)
    height, width = pixels.shape[-2:]
    transforms = featurizer.config.transforms
    batch = featurizer.config.resolved_batch_size(featurizer.device.type)
    features = torch.zeros((backbone.embed_dim, height, width))
    attention = torch.zeros((backbone.num_heads, height, width))
    post = 0.0
    for start in range(0, len(transforms), batch):
        chunk = transforms[start : start + batch]
        copies = torch.stack([pad_to_grid(t.apply(pixels), patch_size=14, stride=14) for t in chunk])
        with torch.inference_mode():
            tokens, cls = forward_tokens(backbone, copies, with_attention=True)
        tick = time.perf_counter()
        size = copies.shape[-2:]
        for i, transform in enumerate(chunk):
            for maps, acc in ((tokens, features), (cls, attention)):
                # contiguous: the token maps are a channels-last view, which would make every later step slow
                lowres = maps[i : i + 1].float().contiguous()
                full = F.interpolate(lowres, size=size, mode="bilinear", align_corners=False)
                acc += transform.invert(full[0, :, :height, :width])
        post += time.perf_counter() - tick
    return (features / len(transforms)).numpy(), (attention / len(transforms)).numpy(), post


_UPSTREAM_CHILD = """
import bench_features as b
import napari_hrdv2 as hr
image = b.tcell_518()
featurizer = hr.Featurizer(hr.FeatureConfig(backbone={backbone!r}, device="cpu", **b.MOORE_12))
featurizer.backbone
if {upstream!r}:
    feats, att, _ = b.upstream_features(featurizer, image)
else:
    enc = featurizer.encode(image)
    feats, att = enc.features(), enc.attention()
print(feats.shape, att.shape)
"""


def section_c(backbone: str, repeats: int) -> None:
    image = tcell_518()
    featurizer = hr.Featurizer(hr.FeatureConfig(backbone=backbone, device="cpu", **MOORE_12))
    featurizer.backbone  # noqa: B018 (load)
    ours_t, ours_post, up_t, up_post = [], [], [], []
    for _ in range(repeats):
        t_enc, enc = timed(lambda: featurizer.encode(image))
        t_post, (feats, att) = timed(lambda: (enc.features(), enc.attention()))  # noqa: B023
        ours_t.append(t_enc + t_post)
        ours_post.append(t_post)
        t_up, (up_feats, up_att, post) = timed(lambda: upstream_features(featurizer, image))
        up_t.append(t_up)
        up_post.append(post)
    diff = max(float(np.abs(feats - up_feats).max()), float(np.abs(att - up_att).max()))
    exact = hr.Featurizer(featurizer.config.replace(storage_dtype="float32")).encode(image)
    diff32 = max(float(np.abs(exact.features() - up_feats).max()), float(np.abs(exact.attention() - up_att).max()))
    _, rss_ours = run_with_peak_rss(_UPSTREAM_CHILD.format(backbone=backbone, upstream=False))
    _, rss_up = run_with_peak_rss(_UPSTREAM_CHILD.format(backbone=backbone, upstream=True))
    k = featurizer.config.n_transforms
    table = [
        ["ours: encode + features() + attention()", median(ours_t), median(ours_post), gib(rss_ours)],
        [
            "upstream: per-transform full-res interpolate + invert + accumulate",
            median(up_t),
            median(up_post),
            gib(rss_up),
        ],
        [
            "upstream / ours",
            median(up_t) / median(ours_t),
            median(up_post) / median(ours_post),
            f"{rss_up / rss_ours:.2f}x",
        ],
    ]
    print_table(
        table,
        ["method", "total s", "s after the forwards", "peak RSS (subprocess)"],
        title=f"(c) upstream-style full-resolution accumulation vs ours, 518x518, {k} transforms, {repeats} repeats",
    )
    print(
        f"max |ours - upstream| over features and attention: {diff:.2e} with the default float16 storage of the "
        f"low-res maps (max |feature| {np.abs(up_feats).max():.1f}), {diff32:.2e} with storage_dtype='float32'. Upstream's stacked variant (all K full-res "
        f"maps at once) would need K*C*H*W*4 = {gib(k * 384 * 518 * 518 * 4)} for the features alone."
    )


# ---------------------------------------------------------------- (d)


def section_d(backbone: str, repeats: int) -> None:
    if not torch.cuda.is_available():
        print("\n### (d) GPU, 1024x1024, 17 transforms, float16\nskipped: no GPU")
        return
    image = read_grey(nasa_pairs("nasa_ebc")[0][0])
    rows = []
    for tile_size in (None, 518):
        config = hr.FeatureConfig(backbone=backbone, device="cuda", dtype="float16", tile_size=tile_size, **MOORE_12)
        featurizer = hr.Featurizer(config)
        featurizer.encode(image).features()  # warm-up
        enc_ms, feat_ms = [], []
        for _ in range(repeats):
            torch.cuda.synchronize()
            t_enc, enc = timed(lambda: (featurizer.encode(image), torch.cuda.synchronize())[0])  # noqa: B023
            t_feat, _ = timed(enc.features)  # noqa: B023 (returns a numpy array: synchronised)
            enc_ms.append(1000 * t_enc)
            feat_ms.append(1000 * t_feat)
        torch.cuda.reset_peak_memory_stats()
        featurizer.encode(image).features()
        rows.append([str(tile_size), median(enc_ms), median(feat_ms), median(enc_ms) + median(feat_ms),
                     gib(torch.cuda.max_memory_allocated())])  # fmt: skip
    print_table(
        rows,
        ["tile_size", "encode ms", "features() ms (to host)", "total ms", "peak GPU memory"],
        title=f"(d) GPU {torch.cuda.get_device_name(0)}, 1024x1024, 17 transforms, float16",
    )


# ---------------------------------------------------------------- (e)


def tile_borders(length: int, tile_size: int, overlap: int) -> np.ndarray:
    """Indices i such that the pixel pair (i, i+1) straddles a tile start or end."""
    from napari_hrdv2.core.features.tiling import _axis_spans

    spans = _axis_spans(length, tile_size, overlap)
    edges = {start - 1 for start, _ in spans if start > 0} | {stop - 1 for _, stop in spans if stop < length}
    return np.array(sorted(edges), dtype=np.int64)


def agreement(tiled: hr.Encoding, whole: hr.Encoding, borders: np.ndarray, block: int = 48) -> dict[str, float]:
    """Cosine/Pearson agreement and seam ratios, computed in channel blocks (never two full maps)."""
    channels = tiled.n_features
    height, width = tiled.shape
    dot = np.zeros((height, width))
    norm_t, norm_w = np.zeros((height, width)), np.zeros((height, width))
    cdot, cnorm_t, cnorm_w = np.zeros((height, width)), np.zeros((height, width)), np.zeros((height, width))
    sums = np.zeros(5)  # sum x, y, xy, xx, yy
    grad = {name: [np.zeros(height - 1), np.zeros(width - 1)] for name in ("tiled", "whole")}
    for start in range(0, channels, block):
        part = slice(start, min(start + block, channels))
        a = tiled.features(part).astype(np.float64)
        b = whole.features(part).astype(np.float64)
        dot += np.einsum("chw,chw->hw", a, b)
        norm_t += np.einsum("chw,chw->hw", a, a)
        norm_w += np.einsum("chw,chw->hw", b, b)
        ac = a - a.mean(axis=(1, 2), keepdims=True)
        bc = b - b.mean(axis=(1, 2), keepdims=True)
        cdot += np.einsum("chw,chw->hw", ac, bc)
        cnorm_t += np.einsum("chw,chw->hw", ac, ac)
        cnorm_w += np.einsum("chw,chw->hw", bc, bc)
        sums += [a.sum(), b.sum(), (a * b).sum(), (a * a).sum(), (b * b).sum()]
        for name, values in (("tiled", a), ("whole", b)):
            grad[name][0] += np.abs(np.diff(values, axis=1)).sum(axis=(0, 2))
            grad[name][1] += np.abs(np.diff(values, axis=2)).sum(axis=(0, 1))
    n = channels * height * width
    mx, my = sums[0] / n, sums[1] / n
    pearson = (sums[2] / n - mx * my) / np.sqrt((sums[3] / n - mx**2) * (sums[4] / n - my**2))
    cosine = dot / np.sqrt(norm_t * norm_w)
    centred = cdot / np.sqrt(cnorm_t * cnorm_w)
    result = {
        "cosine_mean": float(cosine.mean()),
        "cosine_p5": float(np.percentile(cosine, 5)),
        "centred_cosine_mean": float(centred.mean()),
        "centred_cosine_p5": float(np.percentile(centred, 5)),
        "pearson": float(pearson),
    }
    for name in ("tiled", "whole"):
        profiles = grad[name]
        on = np.concatenate([profiles[0][borders], profiles[1][borders]])
        mask_r = np.ones(height - 1, bool)
        mask_c = np.ones(width - 1, bool)
        mask_r[borders] = False
        mask_c[borders] = False
        off = np.concatenate([profiles[0][mask_r], profiles[1][mask_c]])
        result[f"seam_{name}"] = float(on.mean() / off.mean())
    return result


def section_e(backbone: str, n_images: int) -> None:
    pairs = nasa_pairs("nasa_ebc", limit=n_images)
    base = hr.FeatureConfig(backbone=backbone, device="cpu")
    tiled_f = hr.Featurizer(base)
    whole_f = hr.Featurizer(base.replace(tile_size=None))
    rows, t_tiled, t_whole = [], [], []
    for image_path, _ in pairs:
        image = read_grey(image_path)
        borders = tile_borders(image.shape[0], base.tile_size, base.tile_overlap)
        if image.shape[0] != image.shape[1]:
            raise SystemExit("(e) expects square images")
        t1, tiled = timed(lambda: tiled_f.encode(image, with_attention=False))  # noqa: B023
        t2, whole = timed(lambda: whole_f.encode(image, with_attention=False))  # noqa: B023
        t_tiled.append(t1)
        t_whole.append(t2)
        m = agreement(tiled, whole, borders)
        rows.append([image_path.name[:40], f"{image.shape[0]}x{image.shape[1]}", len(tiled.tiles), m["cosine_mean"],
                     m["cosine_p5"], m["centred_cosine_mean"], m["centred_cosine_p5"], m["pearson"],
                     m["seam_tiled"], m["seam_whole"]])  # fmt: skip
    print_table(
        rows,
        [
            "nasa_ebc image",
            "size",
            "tiles",
            "cos mean",
            "cos p5",
            "centred cos mean",
            "centred cos p5",
            "Pearson",
            "seam ratio tiled",
            "seam ratio whole",
        ],  # fmt: skip
        title=f"(e) tiled (tile {base.tile_size}, overlap {base.tile_overlap}) vs whole-image features, default "
        f"transforms (moore d={base.shift_distances})",
    )
    print(
        f"encode time (median): tiled {median(t_tiled):.1f} s, whole image {median(t_whole):.1f} s. Seam ratio = mean "
        "|feature difference| of neighbouring pixels across tile starts/ends divided by that elsewhere (1 = no seam); "
        "'whole' is the same ratio on the untiled features at the same positions (the control)."
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--backbone",
        default=None,
        help="weights (default: random-init DINOv2 ViT-S/14 saved locally; 'random-dinov3': random DINOv3 ViT-S/16)",
    )
    parser.add_argument("--quick", action="store_true", help="2048 px for (b), 3 repeats, 1 image for (e)")
    parser.add_argument("--only", default="a,b,c,d,e", help="comma-separated sections to run")
    parser.add_argument("--repeats", type=int, default=None, help="timing repeats (default 5, quick 3)")
    parser.add_argument("--size", type=int, default=None, help="image side for (b) (default 4096, quick 2048)")
    parser.add_argument("--tile-images", type=int, default=None, help="nasa_ebc images for (e) (default 2, quick 1)")
    args = parser.parse_args(argv)
    backbone, random_weights = backbone_or_random(args.backbone)
    repeats = args.repeats or (3 if args.quick else 5)
    size = args.size or (2048 if args.quick else 4096)
    n_images = args.tile_images or (1 if args.quick else 2)
    sections = set(args.only.split(","))
    print(f"# bench_features | {machine_line()}")
    print(f"backbone: {backbone}")
    if random_weights:
        note = RANDOM_WEIGHTS_NOTE
        if args.backbone == "random-dinov3":
            note = note.replace("ViT-S/14", "DINOv3 ViT-S/16").replace("DINOv2", "DINOv3")
        print(textwrap.fill(note, 120))
    start = time.perf_counter()
    if "a" in sections:
        section_a(backbone, repeats)
    if "c" in sections:
        section_c(backbone, repeats)
    if "d" in sections:
        section_d(backbone, repeats)
    if "e" in sections:
        section_e(backbone, n_images)
    if "b" in sections:
        section_b(backbone, size)
    print(f"\ntotal benchmark time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
