"""The dask runner's client and worker code run in this process with a synchronous stand-in client (so mutation
testing sees it): same outputs and report as the single-process batch, streamed bands, early failures, progress
texts, worker-side checks and the messages of the scheduler option."""

from __future__ import annotations

import hashlib
import types

import numpy as np
import pytest
import tifffile
import zarr

import napari_hrdv2 as hr
from conftest import two_texture_image
from napari_hrdv2.core.errors import Cancelled, InputError, ModelFileError, WeightsNotFoundError
from napari_hrdv2.core.scale import distributed as runner
from napari_hrdv2.core.scale.distributed import (
    BAND_CHUNK_ROWS,
    DEFAULT_RETRIES,
    EXTRA_HINT,
    SCHEDULER_SCHEMES,
    parse_scheduler,
    segment_files_distributed,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


class Done:
    """A finished future: its result or the exception its task raised."""

    def __init__(self, function, args, kwargs):
        self.error = self.value = None
        try:
            self.value = function(*args, **kwargs)
        except Exception as err:  # noqa: BLE001
            self.error = err

    def result(self):
        if self.error is not None:
            raise self.error
        return self.value


class SyncClient:
    """Runs every task at submission; records the options tasks were submitted with."""

    def __init__(self, gpus: bool = False):
        self.options, self.cancelled, self.gpus = [], [], gpus

    def submit(self, function, *args, retries, resources, pure):
        self.options.append({"retries": retries, "resources": resources, "pure": pure, "task": function.__name__})
        args = [a.result() if isinstance(a, Done) else a for a in args]
        return Done(function, args, {})

    def scatter(self, data, broadcast, hash):  # noqa: A002
        assert broadcast is True and hash is False
        return data

    def scheduler_info(self, n_workers=-1):
        return {"workers": {"w": {"resources": {"GPU": 1} if self.gpus else {}}}}

    def cancel(self, futures):
        self.cancelled.extend(futures)


@pytest.fixture(autouse=True)
def synchronous(monkeypatch):
    monkeypatch.setattr(runner, "_import_distributed", lambda: types.SimpleNamespace(as_completed=iter))
    runner._WORKER_MODELS.clear()
    runner._WORKER_FEATURIZERS.clear()


@pytest.fixture(scope="module")
def trained(tiny_backbone):
    config = hr.FeatureConfig(backbone=tiny_backbone, device="cpu", shifts="none", tile_size=56, tile_overlap=14)
    image, truth = two_texture_image(56)
    labels = np.zeros_like(truth)
    labels[5:-5, 10:13], labels[5:-5, 40:43] = 1, 2
    model = hr.LinearSegmenter().fit(hr.Featurizer(config).encode(image, with_attention=False), labels)
    return config, model


def test_constants_and_scheduler_specs():
    assert (DEFAULT_RETRIES, BAND_CHUNK_ROWS) == (3, 4)
    assert EXTRA_HINT == "pip install 'napari-hrdv2[distributed]'"
    assert SCHEDULER_SCHEMES == ("tcp", "tls", "ws", "wss", "ucx", "inproc")
    assert parse_scheduler("  local  ") == ("local", None)
    assert parse_scheduler("local:") == ("local", None)
    assert parse_scheduler("local:1") == ("local", 1) and parse_scheduler(" local:12 ") == ("local", 12)
    assert parse_scheduler("TLS://h:1") == ("TLS://h:1", None)
    assert parse_scheduler("h:8786") == ("h:8786", None)
    with pytest.raises(InputError) as caught:
        parse_scheduler("local:0")
    assert str(caught.value) == "--scheduler 'local:0': the number of local workers must be a positive integer."
    with pytest.raises(InputError) as caught:
        parse_scheduler("  ")
    assert str(caught.value) == ("--scheduler needs 'local', 'local:N' or a scheduler address such as tcp://host:8786.")
    with pytest.raises(InputError) as caught:
        parse_scheduler("http://h:1")
    assert str(caught.value) == (
        "--scheduler 'http://h:1': dask does not speak 'http://'; give 'local', 'local:N' or an address such as "
        "tcp://host:8786 (schemes: tcp, tls, ws, wss, ucx, inproc)."
    )


def test_a_cluster_run_equals_the_single_process_run(tmp_path, trained):
    config, model = trained
    folder = tmp_path / "in"
    folder.mkdir()
    for i, size in enumerate((42, 56)):
        tifffile.imwrite(folder / f"img{i}.tif", two_texture_image(size, seed=i)[0])
    (folder / "bad.tif").write_bytes(b"not a tiff")
    single = hr.segment_files([folder], tmp_path / "single", model, config, uncertainty=True)
    client = SyncClient()
    seen = []
    report = segment_files_distributed(
        [folder], tmp_path / "cluster", model, config, client=client, uncertainty=True, progress=seen.append
    )
    assert (
        [p.name for p in report.written] == [p.name for p in single.written] == ["img0_labels.tif", "img1_labels.tif"]
    )
    assert [p.name for p in report.extra] == ["img0_uncertainty.tif", "img1_uncertainty.tif"]
    assert [(p.name, reason) for p, reason in report.failed] == [(p.name, r) for p, r in single.failed]
    for name in ("img0_labels.tif", "img1_labels.tif", "img1_uncertainty.tif"):
        np.testing.assert_array_equal(
            tifffile.imread(tmp_path / "cluster" / name), tifffile.imread(tmp_path / "single" / name)
        )
    assert [o["retries"] for o in client.options] == [3, 3, 3] and {o["pure"] for o in client.options} == {False}
    assert {o["resources"] for o in client.options} == {None}
    assert [(p.done, p.total, p.message) for p in seen] == [
        (0, 3, "3 task(s) submitted"),
        (1, 3, "bad.tif (1/3)"),
        (2, 3, "img0.tif (2/3)"),
        (3, 3, "img1.tif (3/3)"),
        (3, 3, report.summary()),
    ]
    again = segment_files_distributed([folder], tmp_path / "cluster", model, config, client=SyncClient(), retries=1)
    assert [p.name for p in again.skipped] == ["img0_labels.tif", "img1_labels.tif"] and not again.written
    gpu = SyncClient(gpus=True)
    segment_files_distributed([folder / "img0.tif"], tmp_path / "gpu", model, config, client=gpu, retries=1)
    assert gpu.options == [{"retries": 1, "resources": {"GPU": 1}, "pure": False, "task": "segment_file_task"}]


def test_zarr_outputs_run_as_band_tasks_then_a_finishing_task(tmp_path, trained):
    config, model = trained
    image = two_texture_image(112, seed=2)[0][:, :70]
    tifffile.imwrite(tmp_path / "a.tif", image)
    client = SyncClient()
    report = segment_files_distributed(
        [tmp_path / "a.tif"], tmp_path / "o", model, config, client=client, suffix=".zarr", chunk=16,
        band_chunk_rows=3,
    )  # fmt: skip
    assert report.written == [tmp_path / "o" / "a_labels.zarr"]
    tasks = [o["task"] for o in client.options]
    assert tasks == ["stream_band_task"] * 3 + ["finish_stream_task"]  # 7 chunk rows of 16, 3 per band
    labels = zarr.open_group(str(tmp_path / "o" / "a_labels.zarr"), mode="r")["0"][:]
    np.testing.assert_array_equal(labels, model.predict(hr.Featurizer(config).encode(image, with_attention=False)))
    again = segment_files_distributed(
        [tmp_path / "a.tif"], tmp_path / "o", model, config, client=SyncClient(), suffix=".zarr"
    )
    assert again.skipped == [tmp_path / "o" / "a_labels.zarr"] and not again.written


def test_inputs_claiming_one_output_fail_early_and_the_later_one_is_named(tmp_path, trained):
    config, model = trained
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        tifffile.imwrite(tmp_path / sub / "x.tif", two_texture_image(28)[0])
    report = segment_files_distributed(
        [tmp_path / "a" / "x.tif", tmp_path / "b" / "x.tif"], tmp_path / "o", model, config, client=SyncClient()
    )
    assert report.written == [tmp_path / "o" / "x_labels.tif"]
    assert report.failed == [
        (
            tmp_path / "b" / "x.tif",
            "its output 'x_labels.tif' would replace the one written for 'x.tif'; rename one of the inputs or "
            "segment them separately.",
        )
    ]


def test_cancel_stops_the_run_and_cancels_every_task(tmp_path, trained):
    import threading

    config, model = trained
    tifffile.imwrite(tmp_path / "x.tif", two_texture_image(28)[0])
    cancel = threading.Event()
    cancel.set()
    client = SyncClient()
    with pytest.raises(Cancelled):
        segment_files_distributed([tmp_path / "x.tif"], tmp_path / "o", model, config, client=client, cancel=cancel)
    assert len(client.cancelled) == 1


def test_worker_checks_the_model_it_receives(tmp_path, trained):
    _, model = trained
    path = model.save(tmp_path / "m.hrdv2")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    with pytest.raises(InputError, match=r"^The model bytes received by this worker do not match their sha256.$"):
        runner._model_on_worker(("0" * 64, data))
    with pytest.raises(InputError) as caught:
        runner._model_on_worker(("ab" * 32, str(path)))
    assert str(caught.value) == (
        f"The model file '{path}' changed during the run (sha256 {digest[:12]}..., expected abababababab...); "
        "rerun with the new model."
    )
    loaded = runner._model_on_worker((digest, data))
    np.testing.assert_array_equal(loaded.coef_, model.coef_)
    assert runner._model_on_worker((digest, b"ignored: cached")) is loaded
    reference = runner._model_reference(SyncClient(), model, path)
    assert reference == (digest, str(path.resolve()))
    sha, sent = runner._model_reference(SyncClient(), model, None)
    assert isinstance(sent, bytes) and sha == hashlib.sha256(sent).hexdigest()


def test_task_failures_and_helpers():
    assert runner._task_failure(InputError("bad")) == "bad"
    assert runner._task_failure(OSError("gone")) == "OSError: gone"
    from napari_hrdv2.core.errors import OutputError

    assert runner._task_failure(OutputError("full")) == "OutputError: full"  # a task's own output error: that input
    for stop in (Cancelled(), ModelFileError("m"), WeightsNotFoundError("w")):
        with pytest.raises(type(stop)):
            runner._task_failure(stop)
    assert runner._channels(None) is None and runner._channels([0, "2"]) == (0, 2)
    from napari_hrdv2.core.files.outputs import BatchReport

    report = BatchReport()
    from pathlib import Path

    report.written.append(Path("/a")), report.skipped.append(Path("/b")), report.failed.append((Path("/c"), "why"))
    assert runner._report_dict(report) == {"written": ["/a"], "skipped": ["/b"], "failed": [("/c", "why")], "extra": []}
