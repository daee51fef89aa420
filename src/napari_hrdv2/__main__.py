"""``python -m napari_hrdv2 [IMAGE ...]``: napari with both HR-Dv2 widgets docked and images loaded.

Without images the bundled superalloy micrograph is opened. napari, Qt and torch are imported only
after the arguments are parsed (``--help`` is instant).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PLUGIN = "napari-hrdv2"
FEATURES_WIDGET = "HR-Dv2 Features"
SEGMENTATION_WIDGET = "HR-Dv2 Segmentation"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m napari_hrdv2",
        description="Open napari with the HR-Dv2 Features and Segmentation widgets docked. "
        "Without IMAGE the bundled superalloy micrograph is loaded.",
    )
    parser.add_argument(
        "images",
        nargs="*",
        metavar="IMAGE",
        help="images to open: files (.tif stacks, .png, .jpg, .bmp, .npy) or Zarr / OME-Zarr folders (.zarr)",
    )
    parser.add_argument(
        "--backbone",
        help="preset (dinov2_vits14...), Hugging Face id, save_pretrained folder or official .pth file "
        "(default: dinov2_vits14)",
    )
    parser.add_argument("--preset", choices=("fast", "balanced", "quality"), help="feature quality preset")
    parser.add_argument("--device", help="auto (default), cpu, cuda, cuda:1 or mps")
    parser.add_argument("--sample", choices=("superalloy", "tcell"), help="open a bundled sample instead")
    return parser


def _ensure_registered() -> None:
    """Register the manifest when the package runs from a source tree that pip never installed."""
    from npe2 import PluginManager, PluginManifest

    manager = PluginManager.instance()
    if PLUGIN not in manager:
        manifest = PluginManifest.from_file(Path(__file__).resolve().parent / "napari.yaml")
        manager.register(manifest)


def setup_viewer(
    viewer: Any,
    images: Sequence[str | Path] = (),
    *,
    sample: str | None = None,
    backbone: str | None = None,
    preset: str | None = None,
    device: str | None = None,
) -> tuple[Any, Any]:
    """Dock both widgets in ``viewer``, apply settings and load ``images`` (or a sample).

    Returns (features widget, segmentation widget).
    """
    from .core.config import PRESETS
    from .core.files.images import read_image

    _ensure_registered()
    _, features = viewer.window.add_plugin_dock_widget(PLUGIN, FEATURES_WIDGET)
    _, segmentation = viewer.window.add_plugin_dock_widget(PLUGIN, SEGMENTATION_WIDGET)
    config = features.settings
    if preset:
        config = config.replace(**PRESETS[preset])
    if backbone:
        config = config.replace(backbone=backbone)
    if device:
        config = config.replace(device=device)
    features.set_settings(config)

    from ._reader import get_reader

    for path in images:
        lazy = get_reader(str(path))  # Zarr, .npy and TIFFs too large to read whole open lazily
        if lazy is not None:
            for data, meta, _ in lazy(str(path)):
                viewer.add_image(data, **meta)
            continue
        data = read_image(path)
        viewer.add_image(data, name=Path(path).stem)  # napari reads a last axis of 3 or 4 as RGB(A)
    if not images:
        viewer.open_sample(PLUGIN, sample or "superalloy")
    return features, segmentation


def missing_inputs(paths: Sequence[str]) -> list[str]:
    """The ``paths`` that name neither a file nor a Zarr folder (``.zarr`` directories are images too)."""
    return [
        str(path)
        for path in paths
        if not (Path(path).is_file() or (Path(path).is_dir() and Path(path).suffix.lower() == ".zarr"))
    ]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    missing = missing_inputs(args.images)
    if missing:
        print(f"error: no such file or Zarr folder: {', '.join(missing)}", file=sys.stderr)
        return 2

    import napari

    from .core.errors import HRDv2Error

    viewer = napari.Viewer(title="napari: HR-Dv2")
    try:
        setup_viewer(
            viewer, args.images, sample=args.sample, backbone=args.backbone, preset=args.preset, device=args.device
        )
    except HRDv2Error as err:
        from napari.utils.notifications import show_error

        show_error(f"HR-Dv2: {err}")
    napari.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
