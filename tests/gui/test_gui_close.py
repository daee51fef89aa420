"""Closing the napari window while a job runs: the process ends normally (exit code 0, no traceback).

Each case runs napari in a subprocess (the X display comes from pytest-xvfb), starts a Compute with the
tiny random backbone, closes the window during the backbone load or during the encode, and exits.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.gui

SCRIPT = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    import napari
    from qtpy.QtCore import QTimer

    phase, backbone = sys.argv[1], sys.argv[2]
    if phase == "load":  # a slow disk: the backbone takes 3 s to load
        import napari_hrdv2.core.backbone.loading as backbones

        load = backbones._load_uncached
        backbones._load_uncached = lambda *a, **k: (time.sleep(3), load(*a, **k))[1]

    from napari_hrdv2.__main__ import setup_viewer

    viewer = napari.Viewer()
    features, _ = setup_viewer(viewer, [], backbone=backbone, device="cpu", preset="quality")
    image = viewer.add_image(np.random.default_rng(0).random((3, 300, 300)).astype("float32"), name="stack")
    before = image.data.copy()
    worker = features.compute(image, all_planes=True)
    steps = []
    worker.yielded.connect(lambda item: steps.append(item))

    def close_when_ready():
        encoding = any(getattr(item, "fraction", 0) > 0 for item in steps)
        if (phase == "load" and time.monotonic() - started > 0.5) or (phase == "encode" and encoding):
            print("closing", len(steps), flush=True)
            viewer.close()
        else:
            QTimer.singleShot(20, close_when_ready)

    started = time.monotonic()
    QTimer.singleShot(20, close_when_ready)
    napari.run()
    assert np.array_equal(image.data, before), "the user's layer is untouched"
    print("closed cleanly", flush=True)
    """
)


@pytest.mark.parametrize("phase", ["load", "encode"])
def test_closing_the_viewer_during_a_job_exits_cleanly(tiny_backbone, tmp_path, phase):
    script = tmp_path / "close.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONFAULTHANDLER": "1"}
    done = subprocess.run(
        [sys.executable, str(script), phase, tiny_backbone], capture_output=True, text=True, timeout=240, env=env
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "closing" in done.stdout and "closed cleanly" in done.stdout, output[-3000:]
    assert "Traceback" not in output and "has been deleted" not in output, output[-3000:]
