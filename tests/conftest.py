"""Shared fixtures: random-init DINOv2 models (:mod:`napari_hrdv2.testing`; no network, no real weights).

Precision: ``dtype="auto"`` on the CPU is bfloat16 where the processor computes it natively, else float32
(:func:`napari_hrdv2.core.runtime.devices.choose_dtype`). Tests that compare with float32 arithmetic pin
``dtype="float32"``; the rest must pass either way. Run the suite as on the other kind of CPU with
``NAPARI_HRDV2_CPU_BFLOAT16=1 pytest`` (auto = bfloat16) or ``NAPARI_HRDV2_CPU_BFLOAT16=0 pytest`` (auto =
float32); the header of the run says which applies.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from message_snapshots import pytest_addoption, pytest_collection_modifyitems, pytest_configure  # noqa: F401  (the message snapshot plugin)
from napari_hrdv2.testing import save_random_dinov2

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_report_header(config) -> str:
    from napari_hrdv2.core.runtime.devices import choose_dtype

    return f"napari-hrdv2 dtype='auto' on the CPU: {choose_dtype('auto', torch.device('cpu'))}"


_TORCH_THREADS = torch.get_num_threads()


@pytest.fixture(autouse=True)
def usual_torch_threads():
    """Each test starts with the process's usual torch thread count (a test of the cluster workers lowers it, and
    float results, hence the result snapshots, depend slightly on it)."""
    if torch.get_num_threads() != _TORCH_THREADS:
        torch.set_num_threads(_TORCH_THREADS)


@pytest.fixture(scope="session")
def tiny_dinov3(tmp_path_factory) -> str:
    """Folder of a tiny random DINOv3 (128 dims, 2 heads of 64, 2 layers, patch 16, 4 registers)."""
    from napari_hrdv2.testing import save_random_dinov3

    return str(save_random_dinov3(tmp_path_factory.mktemp("models") / "tiny-dinov3"))


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> str:
    """Folder of a tiny random DINOv2 (128 dims, 2 heads of 64, 2 layers, patch 14)."""
    return str(save_random_dinov2(tmp_path_factory.mktemp("models") / "tiny-dinov2"))


@pytest.fixture(scope="session")
def tiny_backbone_registers(tmp_path_factory) -> str:
    """Like ``tiny_backbone`` but with 4 register tokens."""
    return str(save_random_dinov2(tmp_path_factory.mktemp("models") / "tiny-dinov2-reg", registers=4))


@pytest.fixture(scope="session")
def tiny_config(tiny_backbone):
    import napari_hrdv2 as hr

    return hr.FeatureConfig(
        backbone=tiny_backbone, device="cpu", shifts="neumann", shift_distances=(3,), tile_size=None
    )


def two_texture_image(size: int = 112, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Left half smooth and dark, right half noisy and bright: (image uint8, truth labels {1, 2})."""
    rng = np.random.default_rng(seed)
    image = np.zeros((size, size), dtype=np.float32)
    half = size // 2
    image[:, :half] = 60 + 5 * rng.standard_normal((size, half))
    stripes = (np.arange(size - half) // 3 % 2) * 80
    image[:, half:] = 150 + stripes[None, :] + 25 * rng.standard_normal((size, size - half))
    truth = np.ones((size, size), dtype=np.uint8)
    truth[:, half:] = 2
    return np.clip(image, 0, 255).astype(np.uint8), truth


@pytest.fixture
def two_textures():
    return two_texture_image()


#: The plugin's npe2 name and the GUI tests' wait limit (the jobs run in napari thread workers).
PLUGIN = "napari-hrdv2"
TIMEOUT_MS = 120_000


@pytest.fixture
def notifications():
    """Notifications shown during the test (napari's notification manager)."""
    from napari.utils.notifications import notification_manager

    seen = []
    notification_manager.notification_ready.connect(seen.append)
    yield seen
    notification_manager.notification_ready.disconnect(seen.append)


def wait_idle(qtbot, widget, timeout: int = TIMEOUT_MS) -> None:
    """Wait until a dock widget's jobs have finished."""
    qtbot.waitUntil(lambda: not widget.is_busy, timeout=timeout)


def paint_two_classes(layer) -> None:
    """Scribbles on a (..., H, W) labels layer: class 1 in a left column band, class 2 in a right one."""
    data = layer.data.copy()
    size = data.shape[-1]
    data[..., 10:-10, 15:19] = 1
    data[..., 10:-10, size - 20 : size - 16] = 2
    layer.data = data


@pytest.fixture
def viewer(make_napari_viewer_proxy):
    """A napari viewer for GUI tests (closed by pytest-napari at the end of the test)."""
    return make_napari_viewer_proxy()


def dock(viewer, name: str):
    """Open one of the plugin's dock widgets ("HR-Dv2 Features" / "HR-Dv2 Segmentation") and return it."""
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return widget
