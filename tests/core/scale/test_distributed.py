"""Batch segmentation on a dask.distributed LocalCluster (2 worker processes): same outputs as one process, survives a
killed worker, reruns redo only what is missing."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

import napari_hrdv2 as hr
from conftest import two_texture_image
from napari_hrdv2.core.errors import InputError
from napari_hrdv2.core.files.checksums import file_sha256
from napari_hrdv2.core.scale.distributed import parse_scheduler, segment_files_distributed

distributed = pytest.importorskip("distributed")
pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.slow]

N_IMAGES = 4


@pytest.fixture(scope="module")
def client():
    """Two worker processes, one thread each (the nanny restarts a killed worker)."""
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
        env={"NAPARI_HRDV2_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


@pytest.fixture(scope="module")
def batch(tmp_path_factory, tiny_backbone):
    """A folder of 6 small images, a model file, and the single-process outputs to compare with."""
    root = tmp_path_factory.mktemp("dist")
    folder = root / "images"
    folder.mkdir()
    for i in range(N_IMAGES):
        image, _ = two_texture_image(84 + 14 * (i % 3), seed=i)
        tifffile.imwrite(folder / f"img{i}.tif", image)
    config = hr.FeatureConfig(backbone=tiny_backbone, device="cpu", shifts="none", tile_size=None)
    image, truth = two_texture_image(112)
    labels = np.zeros_like(truth)
    labels[5:-5, 20:23] = 1
    labels[5:-5, 80:83] = 2
    model = hr.LinearSegmenter().fit(hr.Featurizer(config).encode(image, with_attention=False), labels)
    model_path = model.save(root / "model.hrdv2")
    single = root / "single"
    report = hr.segment_files([folder], single, model, config, uncertainty=True)
    assert report.ok and len(report.written) == N_IMAGES
    return {
        "root": root,
        "folder": folder,
        "model": model,
        "model_path": model_path,
        "config": config,
        "single": single,
    }


def same_outputs(folder: Path, reference: Path) -> None:
    names = sorted(p.name for p in reference.iterdir())
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == names
    for name in names:
        np.testing.assert_array_equal(tifffile.imread(folder / name), tifffile.imread(reference / name))


@pytest.mark.messages_vary  # files finish in the cluster's order
def test_two_workers_equal_single_process(client, batch):
    out = batch["root"] / "two_workers"
    seen = []

    def worker_models():
        return client.run(
            lambda: sorted(__import__("napari_hrdv2.core.scale.distributed").core.scale.distributed._WORKER_MODELS)
        )

    before = worker_models()  # models an earlier test of this module left on the workers
    report = hr.segment_files(
        [batch["folder"]], out, batch["model"], batch["config"], uncertainty=True, client=client,
        model_path=batch["model_path"], progress=seen.append,
    )  # fmt: skip
    assert report.ok and len(report.written) == N_IMAGES and len(report.extra) == N_IMAGES
    assert [p.name for p in report.written] == [f"img{i}_labels.tif" for i in range(N_IMAGES)]
    same_outputs(out, batch["single"])
    assert seen[-1].fraction == 1.0
    # each worker process loaded this model once (keyed by the file's sha256) and kept it
    added = {worker: sorted(set(keys) - set(before.get(worker, []))) for worker, keys in worker_models().items()}
    sha = file_sha256(batch["model_path"])
    assert all(keys in ([], [sha]) for keys in added.values()) or all(sha in keys for keys in before.values())

    # a rerun after a crash redoes only what is missing
    (out / "img2_labels.tif").unlink()
    again = hr.segment_files(
        [batch["folder"]], out, batch["model"], batch["config"], client=client, model_path=batch["model_path"]
    )
    assert [p.name for p in again.written] == ["img2_labels.tif"] and len(again.skipped) == N_IMAGES - 1
    same_outputs(out, batch["single"])


@pytest.mark.messages_vary  # files finish in the cluster's order
def test_killed_worker_run_still_completes(client, batch):
    """Fault injection: the worker busy with an image is killed (SIGKILL) mid-run; its task is retried elsewhere."""
    out = batch["root"] / "killed"
    pids = client.run(os.getpid)  # worker address -> process id
    killed = threading.Event()

    def kill_a_busy_worker(update):
        """Right after submission: SIGKILL a worker as soon as the scheduler has given it an image."""
        deadline = time.time() + 30
        while not killed.is_set() and time.time() < deadline:
            busy = [address for address, tasks in client.processing().items() if tasks and address in pids]
            if busy:
                os.kill(pids[busy[0]], signal.SIGKILL)
                killed.set()
            time.sleep(0.01)

    report = segment_files_distributed(
        [batch["folder"]], out, batch["model"], batch["config"], client=client, uncertainty=True,
        model_path=batch["model_path"], progress=kill_a_busy_worker,
    )  # fmt: skip
    assert killed.is_set()
    assert report.ok and len(report.written) == N_IMAGES
    same_outputs(out, batch["single"])
    deadline = time.time() + 60
    while len(client.scheduler_info()["workers"]) < 2 and time.time() < deadline:
        time.sleep(0.5)
    assert set(client.run(os.getpid).values()) != set(pids.values())  # the nanny replaced the killed process


@pytest.mark.messages_vary  # files finish in the cluster's order
def test_zarr_outputs_in_bands_equal_single_process(client, batch):
    """--format zarr: every image streamed in bands of output chunk rows, one task per band, then renamed."""
    out = batch["root"] / "zarr"
    report = segment_files_distributed(
        [batch["folder"]], out, batch["model"], batch["config"], client=client, suffix=".zarr",
        model_path=None, chunk=48, band_chunk_rows=2,
    )  # fmt: skip
    assert report.ok and len(report.written) == N_IMAGES
    for i in range(N_IMAGES):
        labels = zarr.open_group(str(out / f"img{i}_labels.zarr"), mode="r")["0"][:]
        np.testing.assert_array_equal(labels, tifffile.imread(batch["single"] / f"img{i}_labels.tif"))
    assert not list(out.glob("*.partial"))


@pytest.mark.messages_vary  # files finish in the cluster's order
def test_cli_scheduler_address(client, batch, capsys):
    """``segment --scheduler ADDRESS`` end to end on the running cluster: same files as the single-process run."""
    from napari_hrdv2.cli import main

    out = batch["root"] / "cli"
    folder = batch["root"] / "cli_in"
    shutil.copytree(batch["folder"], folder)
    for extra in list(folder.iterdir())[2:]:
        extra.unlink()
    code = main(
        [
            "segment",
            str(folder),
            "--model",
            str(batch["model_path"]),
            "-o",
            str(out),
            "--scheduler",
            client.scheduler.address,
        ]
    )
    assert code == 0, capsys.readouterr().err
    for path in out.iterdir():
        np.testing.assert_array_equal(tifffile.imread(path), tifffile.imread(batch["single"] / path.name))
    assert len(list(out.iterdir())) == 2


def test_parse_scheduler():
    assert parse_scheduler("local") == ("local", None)
    assert parse_scheduler("local:3") == ("local", 3)
    assert parse_scheduler("tcp://10.0.0.1:8786") == ("tcp://10.0.0.1:8786", None)
    with pytest.raises(InputError, match="positive integer"):
        parse_scheduler("local:zero")


def test_outputs_of_a_killed_attempt_count_as_written(tmp_path):
    """A worker killed after writing but before reporting: its retry reports "skipped"; the run wrote them."""
    from napari_hrdv2.core.files.outputs import BatchReport
    from napari_hrdv2.core.scale.distributed import _add_task_report
    from napari_hrdv2.core.scale.plan import candidate_outputs as _candidate_outputs

    source = tmp_path / "a.tif"
    candidates = _candidate_outputs(source, tmp_path / "out", ".tif", uncertainty=True)
    labels, uncertainty = candidates[0], candidates[2]
    (tmp_path / "out").mkdir()
    labels.write_bytes(b"x")
    uncertainty.write_bytes(b"x")
    retry = {"written": [], "skipped": [str(labels)], "failed": [], "extra": []}

    fresh = BatchReport()
    _add_task_report(fresh, retry, set(), candidates)  # nothing existed when the run started
    assert fresh.written == [labels] and fresh.extra == [uncertainty] and not fresh.skipped

    rerun = BatchReport()
    _add_task_report(rerun, retry, {labels, uncertainty}, candidates)  # both were there before: a real skip
    assert rerun.skipped == [labels] and not rerun.written and not rerun.extra


@pytest.mark.messages_vary  # files finish in the cluster's order
def test_channels_on_a_cluster_equal_single_process(client, batch, tmp_path):
    """A model that reads channel 1: in-memory inputs (one task each) and Zarr outputs streamed in bands on the
    cluster give the single-process labels, and the client says which channels were used."""
    import copy

    model = copy.deepcopy(batch["model"])
    model.channels = (1,)
    texture, _ = two_texture_image(84)
    data = np.random.default_rng(5).integers(0, 255, (84, 84, 5), dtype=np.uint8)
    data[..., 1] = texture
    tifffile.imwrite(tmp_path / "ome.ome.tif", np.moveaxis(data, -1, 0), metadata={"axes": "CYX"})
    np.save(tmp_path / "last.npy", data)
    inputs = [tmp_path / "ome.ome.tif", tmp_path / "last.npy"]
    single = hr.segment_files(inputs, tmp_path / "single", model, batch["config"])
    assert single.ok and len(single.written) == 2
    expected = model.predict(hr.Featurizer(batch["config"]).encode(texture, with_attention=False))
    np.testing.assert_array_equal(tifffile.imread(single.written[0]), expected)  # channel 1: the texture
    with pytest.warns(UserWarning, match=r"using channel 1 of 5") as caught:
        report = hr.segment_files(inputs, tmp_path / "cluster", model, batch["config"], client=client)
    assert {str(w.message).split("'")[1] for w in caught if "using channel" in str(w.message)} == {
        "ome.ome.tif", "last.npy"
    }  # fmt: skip
    assert report.ok and [p.name for p in report.written] == [p.name for p in single.written]
    for path, reference in zip(report.written, single.written):
        np.testing.assert_array_equal(tifffile.imread(path), tifffile.imread(reference))
    report = hr.segment_files(
        inputs, tmp_path / "zarr", model, batch["config"], client=client, suffix=".zarr", chunk=32, band_chunk_rows=1
    )
    assert report.ok and len(report.written) == 2
    for path in report.written:
        np.testing.assert_array_equal(zarr.open_group(str(path), mode="r")["0"][:], expected)


@pytest.mark.messages_vary  # files finish in the cluster's order
def test_separate_channels_refined_mlp_on_a_cluster_equal_single_process(client, tiny_backbone, tmp_path):
    """The features, heads and refinement added together: a 5-channel MLP model that refines its edges gives the
    same labels on the cluster (files and Zarr bands) as in one process and as ``predict``."""
    config = hr.FeatureConfig(backbone=tiny_backbone, device="cpu", shifts="none", tile_size=None,
                              channel_mode="separate")  # fmt: skip
    rng = np.random.default_rng(3)
    texture, truth = two_texture_image(84)
    data = rng.integers(0, 255, (84, 84, 5), dtype=np.uint8)
    data[..., 3] = texture
    labels = np.zeros_like(truth)
    labels[5:-5, 10:13] = truth[5:-5, 10:13]
    labels[5:-5, 70:73] = truth[5:-5, 70:73]
    encoding = hr.Featurizer(config).encode(data, with_attention=False)
    model = hr.MLPSegmenter(hidden=8, refine="guided").fit(encoding, labels)
    model_path = model.save(tmp_path / "model.hrdv2")
    expected = model.predict(encoding)
    np.save(tmp_path / "five.npy", data)
    inputs = [tmp_path / "five.npy"]
    single = hr.segment_files(inputs, tmp_path / "single", model, config)
    assert single.ok
    np.testing.assert_array_equal(tifffile.imread(single.written[0]), expected)
    report = hr.segment_files(inputs, tmp_path / "cluster", model, config, client=client, model_path=model_path)
    assert report.ok
    np.testing.assert_array_equal(tifffile.imread(report.written[0]), expected)
    report = hr.segment_files(
        inputs, tmp_path / "zarr", model, config, client=client, model_path=model_path, suffix=".zarr", chunk=32,
        band_chunk_rows=1,
    )  # fmt: skip
    assert report.ok
    np.testing.assert_array_equal(zarr.open_group(str(report.written[0]), mode="r")["0"][:], expected)
