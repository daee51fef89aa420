"""Make docs/screenshot.png: the real napari window with both HR-Dv2 docks and a segmentation from four strokes.

Run from the repository root (a virtual X server is enough, no desktop needed)::

    xvfb-run -a -s "-screen 0 1920x1080x24" python docs/make_screenshot.py [--backbone dinov2_vits14] [--sequence]

The window is 1366x768 (a laptop screen) unless ``--size`` says otherwise.

Without ``--backbone`` it builds a randomly initialised ViT-S/14 (the DINOv2-S architecture with
random weights), so it runs without network or downloads; the screenshot then shows what the plugin
does with random-init features, not the quality of the real DINOv2 weights. The strokes are taken
from the NASA dense labels of the bundled superalloy micrograph (``../shared/data/nasa_super``) when
that folder exists, else from fixed boxes. Everything the widgets do runs exactly as for a user:
thread workers, progress bars, layers.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("HRDV2_DATA", REPO.parent / "shared" / "data"))
NASA_LABELS = SHARED_DATA / "nasa_super" / "labels" / "lshr_15kx_3kv_0.png"


def strokes(shape: tuple[int, int]) -> np.ndarray:
    """A few brush strokes per class (1 matrix, 2 secondary, 3 tertiary gamma'), inside the NASA regions."""
    from scipy import ndimage

    scribbles = np.zeros(shape, dtype=np.uint8)
    if not NASA_LABELS.is_file():
        scribbles[40:44, 20:200] = 1
        scribbles[300:304, 250:450] = 2
        return scribbles
    from skimage.io import imread

    dense = imread(NASA_LABELS).astype(np.int64) + 1  # 0 matrix -> 1, 1 secondary -> 2, 2 tertiary -> 3
    brush = np.zeros(shape, dtype=bool)
    for row in (70, 190, 330, 450):  # four horizontal strokes across the image, 3 px wide
        brush[row : row + 3, 30:480] = True
    for value, erosion in ((1, 4), (2, 4), (3, 1)):
        inside = ndimage.binary_erosion(dense == value, iterations=erosion)
        scribbles[brush & inside] = value
    return scribbles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", help="real weights (preset, folder or .pth); default: random-init ViT-S/14")
    parser.add_argument("-o", "--output", default=str(REPO / "docs" / "screenshot.png"))
    parser.add_argument("--size", default="1366x768", help="window size (default: a 1366x768 laptop screen)")
    parser.add_argument(
        "--sequence",
        action="store_true",
        help="also write docs/workflow-1-open.png and -2-features.png (the steps before)",
    )
    args = parser.parse_args()

    import imageio.v3 as iio
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_hrdv2.__main__ import setup_viewer
    from napari_hrdv2.core.files.atomic import write_bytes
    from napari_hrdv2.testing import save_random_vits14

    with tempfile.TemporaryDirectory() as tmp:
        backbone = args.backbone or str(save_random_vits14(Path(tmp) / "random-init-vits14"))
        viewer = napari.Viewer(title="napari: HR-Dv2")
        width, height = (int(v) for v in args.size.lower().split("x"))
        viewer.window.resize(width, height)
        features, segmentation = setup_viewer(viewer, preset="balanced", backbone=backbone, device="cpu")
        image = viewer.layers["superalloy"]

        def settle(n: int = 20) -> None:
            for _ in range(n):
                QApplication.processEvents()
                time.sleep(0.05)

        def wait(widget) -> None:
            while widget.is_busy:
                QApplication.processEvents()
                time.sleep(0.02)

        def save(path: str) -> None:
            settle()
            shot = viewer.screenshot(canvas_only=False, flash=False)
            # RGB, no alpha; written all-or-nothing (temporary name, then renamed over the old screenshot)
            write_bytes(path, iio.imwrite("<bytes>", shot[..., :3], extension=".png"), overwrite=True)
            print(f"wrote {path} {shot.shape}")

        if args.sequence:
            save(str(REPO / "docs" / "workflow-1-open.png"))
        features.compute(image)
        wait(features)
        if args.sequence:
            save(str(REPO / "docs" / "workflow-2-features.png"))

        scribbles = segmentation.new_scribbles_layer(image)
        scribbles.data = strokes(image.data.shape)
        segmentation._refresh_classes()
        names = ("matrix", "secondary γ'", "tertiary γ'")  # class names, as a user types them
        for row in range(min(len(names), segmentation._classes.table.rowCount())):
            segmentation._classes.table.item(row, 2).setText(names[row])
        segmentation.train(image, scribbles)  # segments the image too ("Segment after training" is on)
        wait(segmentation)

        # The main screenshot is this last step: the segmentation over the grey micrograph, the strokes on top and
        # still selected for painting, the PCA view (step 2) hidden beneath.
        viewer.layers.selection.active = scribbles
        save(args.output)
        viewer.close()


if __name__ == "__main__":
    main()
