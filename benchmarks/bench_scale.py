"""Scale: images larger than memory and folders on a dask cluster; prints Markdown tables.

Sections (``--only memory,speed,batch,overhead,view``; results in benchmarks/README.md):

memory
    Peak RSS of a streamed segmentation (:class:`napari_hrdv2.core.scale.streaming.StreamJob`) of a
    ``--size`` (default 12288) square uint8 image, Zarr in (chunks 1024) and Zarr out, random-init
    ViT-S/14, ``shifts="none"``, default tiles (518, overlap 84), a 3-class model, in a fresh
    subprocess (:func:`_common.run_with_peak_rss`). Goal <= 2 GB. ``--chunk-rows K`` computes only the
    first K output chunk rows (1024 pixel rows each, full width) when the whole image would take too long
    (``--progress-log FILE`` records the tiles done, the time and the peak RSS so far while it runs)
    on a busy machine: memory per band is the same for every band (one tile's maps, one band of tile rows
    of logits, one chunk row of output), so the peak does not grow with the rows computed; the time of the
    whole image is extrapolated from the tiles done. For reference the in-memory encoding of that image
    would hold ``n_tiles x K x 384 x 37 x 37`` float16 maps.
speed
    Time per megapixel of the streamed path (``segment_region`` over the whole image: read, scale, encode,
    project and blend tile by tile) against the in-memory path (``Featurizer.encode`` then
    ``LinearSegmenter.predict``) on a ``--speed-size`` (default 4096) image, same tiles, same model, run
    alternately ``--repeats`` times (median). Goal: streamed within 1.2x. Also checks that both labels are equal.
batch
    Throughput of a folder of ``--images`` (default 64) ``--image-size`` (default 512) uint8 images:
    ``--batch-source micrographs`` (default) crops them from the real 1024 x 1024 ``nasa_ebc`` SEM micrographs
    in ``$HRDV2_DATA`` (4 crops of 512 per micrograph, in file order; smaller sizes crop more per micrograph),
    ``texture`` uses the synthetic texture. The model is trained with ``--batch-shifts`` (default ``none``: one
    forward per 512 image; ``moore`` = the default 9 transforms, 9x the per-image cost and the same scheduler
    cost per task). Single process (``segment_files``), then ``segment_files(client=...)`` on a LocalCluster of
    1 and of 2 worker processes (1 thread each; torch threads = cores / workers). The cluster start-up (and the first
    task's model load per worker) is reported separately; per-image cost = wall time / images; scheduler
    overhead per task = (1-worker time - single-process time) / images; the extrapolation to N workers
    assumes the per-image cost and that the scheduler is not the bottleneck.

overhead
    The scheduler's own cost per task: ``--noop-tasks`` no-op tasks (``abs``) submitted together and 50 one at
    a time on LocalClusters of 1 and 2 worker processes (also printed by ``batch`` for its own clusters). It
    does not depend on the image size, so it gives the overhead fraction for any per-image cost.

view
    "Predict current view" on a lazily read ``--view-size`` (default 4096) square Zarr image (chunks 512), the
    napari job ``_workers.predict_region_job`` with the dock's ``EncodingCache``: a 1366 x 768 view, the same
    view again, the view panned by half its width, and the first view after retraining the model, against the
    same views without a cache. Checks that the labels are equal with and without the cache.

The machine is shared: every timing line prints ``uptime``'s load averages next to it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RANDOM_WEIGHTS_NOTE, gib, machine_line, median, print_table, random_vits14, run_with_peak_rss


def load() -> str:
    """The 1/5/15-minute load averages (the CPU is shared with other jobs)."""
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip().split("load average:")[-1].strip()


def texture(size: int, seed: int = 0) -> np.ndarray:
    """A synthetic micrograph-like uint8 image: smooth blobs, stripes and noise (3 visually distinct regions)."""
    rng = np.random.default_rng(seed)
    rows = np.arange(size, dtype=np.float32)[:, None]
    cols = np.arange(size, dtype=np.float32)[None, :]
    image = 90 + 40 * np.sin(rows / 37.0) * np.cos(cols / 53.0)
    image = image + (((rows + cols) // 9) % 2) * 50 * (cols > size / 3)
    image = image + rng.normal(0, 12, (size, size)).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def micrograph_crops(count: int, size: int) -> list[np.ndarray]:
    """``count`` uint8 ``size`` x ``size`` crops of the real ``nasa_ebc`` SEM micrographs (row-major per micrograph)."""
    from _common import nasa_pairs, read_grey

    crops: list[np.ndarray] = []
    for image_path, _ in nasa_pairs("nasa_ebc"):
        image = read_grey(image_path)
        for top in range(0, image.shape[0] - size + 1, size):
            for left in range(0, image.shape[1] - size + 1, size):
                crops.append(np.ascontiguousarray(image[top : top + size, left : left + size]).astype(np.uint8))
                if len(crops) == count:
                    return crops
    raise SystemExit(f"only {len(crops)} crops of {size} x {size} in the nasa_ebc micrographs, {count} requested")


def train_model(backbone: str, folder: Path, shifts: str = "none") -> Path:
    """A 3-class LinearSegmenter on a 518 x 518 crop of the texture, saved as a model file."""
    import napari_hrdv2 as hr

    config = hr.FeatureConfig(backbone=backbone, device="cpu", shifts=shifts)
    image = texture(518, seed=1)
    labels = np.zeros(image.shape, dtype=np.uint8)
    labels[20:500, 40:46] = 1
    labels[20:500, 250:256] = 2
    labels[20:500, 450:456] = 3
    model = hr.LinearSegmenter().fit(hr.Featurizer(config).encode(image, with_attention=False), labels)
    return model.save(folder / "model.hrdv2", overwrite=True)


# ---------------------------------------------------------------------------------------------- memory
MEMORY_CHILD = """
import time, json, os
from _common import peak_rss_self
import napari_hrdv2 as hr
from napari_hrdv2.core.progress import run_steps
from napari_hrdv2.core.scale.streaming import StreamJob
model = hr.LinearSegmenter.load({model!r})
featurizer = model.featurizer(device="cpu")
featurizer.backbone
job = StreamJob.create(model, {source!r}, {{"labels": {output!r}}}, config=featurizer.config, chunk=1024)
job.open()
last = min({chunk_rows}, job.n_chunk_rows)
passes = [0]
log_path, log_every = {progress_log!r}, {log_every!r}
def count(update):
    new_tile = update.done != passes[0]
    passes[0] = update.done
    if log_path and new_tile and (int(update.done) % log_every == 0 or update.done == update.total):
        # a run stopped before the end still leaves its rate and its peak RSS so far
        with open(log_path, "a") as log:
            log.write(json.dumps({{"tiles": int(update.done), "of": int(update.total),
                                   "seconds": round(time.perf_counter() - start, 1),
                                   "peak_rss_gib": round(peak_rss_self() / 2**30, 3),
                                   "load": [round(x, 2) for x in os.getloadavg()],
                                   "utc": time.strftime("%H:%M:%S", time.gmtime())}}) + "\\n")
start = time.perf_counter()
rows = run_steps(job.iter_band(model, featurizer, 0, (0, last)), progress=count)
seconds = time.perf_counter() - start
if job.complete():
    job.finish()
print(json.dumps({{"seconds": seconds, "chunk_rows": rows, "tiles": passes[0], "all_rows": job.n_chunk_rows}}))
"""


def bench_memory(args: argparse.Namespace, backbone: str, work: Path) -> None:
    import json

    import zarr

    from napari_hrdv2.core.features.tiling import plan_tiles

    size = args.size
    source = work / f"input{size}.zarr"
    if not source.exists():
        array = zarr.create_array(str(source), shape=(size, size), chunks=(1024, 1024), dtype="uint8")
        block = texture(1024, seed=2)
        for top in range(0, size, 1024):
            for left in range(0, size, 1024):
                array[top : top + 1024, left : left + 1024] = block[: size - top, : size - left]
    model = train_model(backbone, work)
    output = work / f"input{size}_labels.zarr"
    shutil.rmtree(output, ignore_errors=True)
    shutil.rmtree(output.with_name(output.name + ".partial"), ignore_errors=True)
    chunk_rows = args.chunk_rows or 10**9
    print(f"load before: {load()}", flush=True)
    code = MEMORY_CHILD.format(model=str(model), source=str(source), output=str(output), chunk_rows=chunk_rows,
                               progress_log=args.progress_log, log_every=args.log_every)  # fmt: skip
    stdout, peak = run_with_peak_rss(code, env={"OMP_NUM_THREADS": str(args.threads)} if args.threads else None)
    result = json.loads(stdout.strip().splitlines()[-1])
    print(f"load after:  {load()}", flush=True)
    tiles = plan_tiles(size, size, tile_size=518, overlap=84)
    maps_bytes = len(tiles) * 1 * 384 * 37 * 37 * 2
    per_tile = result["seconds"] / max(result["tiles"], 1)
    print_table(
        [
            [
                f"{size} x {size}",
                f"{result['chunk_rows']} of {result['all_rows']} (x 1024 rows)",
                result["tiles"],
                f"{result['seconds']:.0f} s",
                f"{per_tile:.2f} s",
                f"{per_tile * len(tiles) / 60:.0f} min",
                gib(peak),
                "<= 2 GB",
                gib(maps_bytes),
            ],
        ],  # fmt: skip
        [
            "image",
            "chunk rows computed",
            "tiles encoded",
            "time",
            "per tile",
            "whole image (extrapolated)",
            "peak RSS",
            "goal",
            "in-memory encoding maps alone",
        ],  # fmt: skip
        title="memory: streamed segmentation, Zarr in and out, ViT-S/14, shifts=none",
    )


# ---------------------------------------------------------------------------------------------- speed
def bench_speed(args: argparse.Namespace, backbone: str, work: Path) -> None:
    import napari_hrdv2 as hr
    from napari_hrdv2.core.runtime.devices import inference_mode
    from napari_hrdv2.core.scale.streaming import segment_region

    model = hr.LinearSegmenter.load(train_model(backbone, work))
    featurizer = model.featurizer(device="cpu")
    featurizer.backbone  # noqa: B018
    image = texture(args.speed_size, seed=3)
    megapixels = image.size / 1e6
    rows, memory_times, stream_times = [], [], []
    with inference_mode():
        for repeat in range(args.repeats):
            start = time.perf_counter()
            expected = model.predict(featurizer.encode(image, with_attention=False))
            memory_times.append(time.perf_counter() - start)
            rows.append(
                [repeat, "in-memory", f"{memory_times[-1]:.1f}", f"{memory_times[-1] / megapixels:.2f}", load()]
            )
            start = time.perf_counter()
            streamed = segment_region(model, image, featurizer=featurizer)["labels"]
            stream_times.append(time.perf_counter() - start)
            rows.append([repeat, "streamed", f"{stream_times[-1]:.1f}", f"{stream_times[-1] / megapixels:.2f}", load()])
            assert np.array_equal(streamed, expected), "streamed labels differ from the in-memory ones"
    print_table(rows, ["repeat", "path", "seconds", "s / megapixel", "load (1, 5, 15 min)"],
                title=f"speed: {args.speed_size} x {args.speed_size}, ViT-S/14, shifts=none, default tiles")  # fmt: skip
    ratio = median(stream_times) / median(memory_times)
    print(f"\nstreamed / in-memory (medians): {ratio:.3f}  (goal <= 1.2); labels identical: yes")


# ---------------------------------------------------------------------------------------------- view
def bench_view(args: argparse.Namespace, backbone: str, work: Path) -> None:
    import zarr

    import napari_hrdv2 as hr
    from napari_hrdv2._workers import predict_region_job
    from napari_hrdv2.core.features.cache import EncodingCache
    from napari_hrdv2.core.progress import run_steps

    model_path = train_model(backbone, work)
    model = hr.LinearSegmenter.load(model_path)
    retrained = hr.LinearSegmenter.load(model_path)
    retrained.intercept_ = retrained.intercept_ + np.float32(0.1)  # another model on the same features
    config = model.featurizer(device="cpu").config
    size = args.view_size
    if size < 3072:
        raise SystemExit("--view-size must be at least 3072: the panned view must reach tiles the first view did not")
    source = zarr.create_array(str(work / "view.zarr"), shape=(size, size), chunks=(512, 512), dtype="uint8")
    source[:] = texture(size, seed=4)
    top, left = size // 4, size // 4
    views = [
        ("first view", model, (top, top + 768), (left, left + 1366)),
        ("the same view again", model, (top, top + 768), (left, left + 1366)),
        ("panned by half a view", model, (top, top + 768), (left + 683, left + 2049)),
        ("first view, retrained model", retrained, (top, top + 768), (left, left + 1366)),
    ]
    cache = EncodingCache()
    rows = []
    for name, segmenter, view_rows, view_cols in views:
        timings = {}
        labels = {}
        for label, job_cache in (("no cache", None), ("dock cache", cache)):
            start = time.perf_counter()
            result = run_steps(
                predict_region_job(source, 0, view_rows, view_cols, segmenter, config, is_stack=False, cache=job_cache)
            )
            timings[label] = time.perf_counter() - start
            labels[label] = result.labels
        assert np.array_equal(labels["no cache"], labels["dock cache"]), f"{name}: labels differ with the cache"
        rows.append([name, f"{timings['no cache']:.2f}", f"{timings['dock cache']:.2f}",
                     f"{timings['dock cache'] / timings['no cache']:.2f}", load()])  # fmt: skip
        print(" | ".join(map(str, rows[-1])), flush=True)
    print_table(rows, ["view (1366 x 768)", "no cache s", "dock cache s", "ratio", "load (1, 5, 15 min)"],
                title=f"view: Predict current view of a {size} x {size} Zarr image, ViT-S/14, shifts=none, "
                f"default tiles; cache {gib(cache.nbytes)} at the end")  # fmt: skip
    print(f"labels identical with and without the cache: yes ({model_path.name})")


# ---------------------------------------------------------------------------------------------- batch
def scheduler_overhead(client: object, n_tasks: int) -> tuple[float, float]:
    """Seconds per task of the dask scheduler alone: ``n_tasks`` no-op tasks mapped at once, and one at a time.

    ``abs`` is a builtin, so the workers import nothing; what is left is submission, scheduling, running a
    trivial function on a worker and gathering its result.
    """
    client.gather(client.map(abs, range(-8, 0), pure=False))  # warm-up
    start = time.perf_counter()
    client.gather(client.map(abs, range(-n_tasks, 0), pure=False))
    batched = (time.perf_counter() - start) / n_tasks
    sequential = min(n_tasks, 50)
    start = time.perf_counter()
    for i in range(sequential):
        client.submit(abs, -i, pure=False).result()
    return batched, (time.perf_counter() - start) / sequential


def bench_overhead(args: argparse.Namespace) -> None:
    """Section ``overhead``: the scheduler's cost per task alone, on LocalClusters of 1 and 2 worker processes."""
    from distributed import Client, LocalCluster

    rows = []
    for workers in (1, 2):
        with (
            LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
            Client(cluster) as client,
        ):
            batched, one_by_one = scheduler_overhead(client, args.noop_tasks)
        rows.append([f"LocalCluster, {workers} worker(s)", f"{1000 * batched:.2f}", f"{1000 * one_by_one:.2f}", load()])
    print_table(
        rows,
        ["cluster", f"ms per task, {args.noop_tasks} submitted together", "ms per task, one at a time", "load"],
        title="overhead: dask scheduler cost per task (no-op tasks, processes)",
    )


def bench_batch(args: argparse.Namespace, backbone: str, work: Path) -> None:
    import tifffile
    from distributed import Client, LocalCluster

    import napari_hrdv2 as hr
    from napari_hrdv2.core.features.tiling import plan_tiles

    folder = work / "folder"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    if args.batch_source == "micrographs":
        images = micrograph_crops(args.images, args.image_size)
        source = "crops of the nasa_ebc SEM micrographs"
    else:
        images = [texture(args.image_size, seed=100 + i) for i in range(args.images)]
        source = "synthetic texture"
    for i, image in enumerate(images):
        tifffile.imwrite(folder / f"img{i:03d}.tif", image)
    model_path = train_model(backbone, work, shifts=args.batch_shifts)
    model = hr.LinearSegmenter.load(model_path)
    config = model.featurizer(device="cpu").config
    tiles = len(plan_tiles(args.image_size, args.image_size, tile_size=config.tile_size, overlap=config.tile_overlap))
    rows = []

    if args.batch_threads:
        import torch

        torch.set_num_threads(args.batch_threads)
    warm = work / "warm_single"  # the single process also loads the backbone before the timed run
    shutil.rmtree(warm, ignore_errors=True)
    warm.mkdir()
    tifffile.imwrite(warm / "w.tif", texture(args.image_size, seed=99))
    hr.segment_files([warm], work / "out_warm_single", model, config)
    start = time.perf_counter()
    report = hr.segment_files([folder], work / "out_single", model, config)
    single = time.perf_counter() - start
    assert report.ok and len(report.written) == args.images
    rows.append(["single process", "-", f"{single:.1f}", f"{single / args.images:.3f}", load()])
    reference = {p.name: tifffile.imread(p) for p in (work / "out_single").iterdir()}

    timings: dict[int, float] = {}
    overheads: dict[int, tuple[float, float]] = {}
    cores = os.cpu_count() or 1
    for workers in (1, 2):
        start = time.perf_counter()
        share = str(args.batch_threads or max(1, cores // workers))
        cluster = LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
            env={"NAPARI_HRDV2_TORCH_THREADS": share, "OMP_NUM_THREADS": share},
        )  # fmt: skip
        client = Client(cluster)
        # warm-up: every worker imports torch and loads the model and backbone once (one tiny task each)
        warm = work / f"warm{workers}"
        shutil.rmtree(warm, ignore_errors=True)
        warm.mkdir()
        for w in range(workers):
            tifffile.imwrite(warm / f"w{w}.tif", texture(args.image_size, seed=w))
        hr.segment_files([warm], work / f"out_warm{workers}", model, config, client=client, model_path=model_path)
        startup = time.perf_counter() - start
        out = work / f"out_{workers}"
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        report = hr.segment_files([folder], out, model, config, client=client, model_path=model_path)
        seconds = time.perf_counter() - start
        assert report.ok and len(report.written) == args.images
        same = all(np.array_equal(tifffile.imread(out / name), labels) for name, labels in reference.items())
        timings[workers] = seconds
        noop_map, noop_latency = scheduler_overhead(client, args.noop_tasks)
        overheads[workers] = (noop_map, noop_latency)
        rows.append([f"LocalCluster, {workers} worker(s)", f"{startup:.1f}", f"{seconds:.1f}",
                     f"{seconds / args.images:.3f}", load(), "yes" if same else "NO",
                     f"{1000 * noop_map:.1f} / {1000 * noop_latency:.1f}"])  # fmt: skip
        client.close()
        cluster.close()
    rows[0] += ["(reference)", "-"]
    print_table(
        rows,
        [
            "run",
            "start-up + warm-up s",
            "seconds",
            "s / image",
            "load (1, 5, 15 min)",
            "labels equal",
            f"no-op task ms: batch of {args.noop_tasks} / one at a time",
        ],  # fmt: skip
        title=f"batch: {args.images} images of {args.image_size} x {args.image_size} ({source}), ViT-S/14, "
        f"shifts={args.batch_shifts} ({config.n_transforms} forward(s) per tile, {tiles} tile(s) per image), torch "
        f"threads per process {args.batch_threads or 'cores / workers'}",
    )
    per_image = timings[1] / args.images
    overhead = (timings[1] - single) / args.images
    speedup = timings[1] / timings[2]
    print(
        f"\nper-image cost on one worker: {per_image:.3f} s; scheduler + transfer overhead per task: {overhead * 1000:.0f} ms "
        f"({100 * overhead / max(per_image, 1e-9):.1f} % of a task); 2 workers vs 1: {speedup:.2f}x on {cores} cores."
    )
    print(
        f"Scheduler cost measured directly with {args.noop_tasks} no-op tasks (abs(i)): "
        + "; ".join(
            f"{w} worker(s): {1000 * m:.1f} ms per task submitted together, {1000 * lat:.1f} ms round trip one "
            "at a time"
            for w, (m, lat) in overheads.items()
        )  # fmt: skip
        + f" = {100 * overheads[1][0] / max(per_image, 1e-9):.2f} % of a {per_image:.2f} s task."
    )
    print(
        f"Extrapolation: N workers with their own cores segment about N / {per_image:.3f} = {1 / per_image:.2f} N "
        f"images per second, e.g. 10,000 such images in {10_000 * per_image / 3600:.1f} h / N; the scheduler handles "
        "thousands of tasks per second, so it is not the limit until per-task overhead x N approaches the per-image cost."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="memory,speed,batch")
    parser.add_argument("--size", type=int, default=12288, help="memory: image side")
    parser.add_argument("--chunk-rows", type=int, default=0, help="memory: output chunk rows to compute (0 = all)")
    parser.add_argument("--speed-size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--view-size", type=int, default=4096, help="view: image side")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=512, help="batch: image side")
    parser.add_argument(
        "--batch-source", choices=("micrographs", "texture"), default="micrographs",
        help="batch: crops of the nasa_ebc micrographs ($HRDV2_DATA) or the synthetic texture",
    )  # fmt: skip
    parser.add_argument("--noop-tasks", type=int, default=500, help="batch: no-op tasks timing the scheduler alone")
    parser.add_argument("--batch-shifts", default="none", help="batch: FeatureConfig.shifts of the model")
    parser.add_argument(
        "--batch-threads", type=int, default=0,
        help="batch: torch threads of the single process and of every worker (default: cores / workers; 1 on a "
        "busy machine, where 2 OpenMP threads per process wait on each other)",
    )  # fmt: skip
    parser.add_argument(
        "--progress-log", default="",
        help="memory: append a JSON line (tiles done, seconds, peak RSS so far, load) to this file every --log-every tiles",
    )  # fmt: skip
    parser.add_argument("--log-every", type=int, default=29, help="memory: tiles between progress lines")
    parser.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS of the memory subprocess")
    parser.add_argument("--workdir", default=None, help="where inputs and outputs go (default a temporary folder)")
    args = parser.parse_args()
    print(machine_line())
    print(RANDOM_WEIGHTS_NOTE)
    backbone = random_vits14()
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    sections = args.only.split(",")
    if "memory" in sections:
        bench_memory(args, backbone, work)
    if "speed" in sections:
        bench_speed(args, backbone, work)
    if "batch" in sections:
        bench_batch(args, backbone, work)
    if "overhead" in sections:
        bench_overhead(args)
    if "view" in sections:
        bench_view(args, backbone, work)
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
