"""The npe2 manifest: valid, every python_name imports, the promised widgets/menus/samples, no readers/writers."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import napari_hrdv2

npe2 = pytest.importorskip("npe2")

PACKAGE_DIR = Path(napari_hrdv2.__file__).resolve().parent
MANIFEST = PACKAGE_DIR / "napari.yaml"


@pytest.fixture(scope="module")
def manifest():
    return npe2.PluginManifest.from_file(MANIFEST)


def test_manifest_is_valid(manifest):
    assert manifest.name == "napari-hrdv2"
    result = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", str(MANIFEST)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_installed_entry_point_points_at_this_manifest():
    installed = npe2.PluginManifest.from_distribution("napari-hrdv2")
    assert installed.name == "napari-hrdv2"
    assert {c.id for c in installed.contributions.commands} == {
        c.id for c in npe2.PluginManifest.from_file(MANIFEST).contributions.commands
    }


def test_every_python_name_imports(manifest):
    commands = manifest.contributions.commands
    assert commands
    for command in commands:
        module_name, _, attribute = command.python_name.partition(":")
        module = importlib.import_module(module_name)
        assert callable(getattr(module, attribute)), command.python_name


def test_widgets_menus_and_samples(manifest):
    contributions = manifest.contributions
    titles = {command.id: command.title for command in contributions.commands}
    widgets = {widget.display_name: widget.command for widget in contributions.widgets}
    assert set(widgets) == {"HR-Dv2 Features", "HR-Dv2 Segmentation"}
    menus = {menu: [item.command for item in items] for menu, items in contributions.menus.items()}
    assert widgets["HR-Dv2 Features"] in menus["napari/layers/visualize"]
    assert widgets["HR-Dv2 Segmentation"] in menus["napari/layers/segment"]
    assert all(command in titles for command in widgets.values())

    samples = {sample.key: sample for sample in contributions.sample_data}
    assert set(samples) == {"superalloy", "tcell"}
    # No catch-all readers, and no label writer: napari's own writers save Labels layers.
    assert not contributions.readers
    assert not contributions.writers


def test_sample_data_and_licences_are_bundled():
    from napari_hrdv2 import _sample_data

    for path in (_sample_data.SUPERALLOY_FILE, _sample_data.TCELL_IMAGES_FILE, _sample_data.TCELL_SCRIBBLES_FILE):
        assert path.is_file(), path
    credits = (PACKAGE_DIR / "sample_data" / "CREDITS.md").read_text()
    for path in (_sample_data.SUPERALLOY_FILE, _sample_data.TCELL_IMAGES_FILE):
        assert path.name in credits
    assert (PACKAGE_DIR / "sample_data" / "LICENSE-nasa-pretrained-microscopy-models.txt").is_file()
    assert (PACKAGE_DIR / "sample_data" / "LICENSE-tldr-hr-dv2.txt").is_file()


def test_sample_layers():
    import numpy as np

    from napari_hrdv2._sample_data import superalloy_sample, tcell_sample

    ((image, meta, kind),) = superalloy_sample()
    assert kind == "image" and image.shape == (512, 512) and image.dtype == np.uint8 and meta["name"] == "superalloy"
    (images, _, image_kind), (scribbles, _, labels_kind) = tcell_sample()
    assert (image_kind, labels_kind) == ("image", "labels")
    assert images.shape == scribbles.shape == (6, 518, 518)
    assert scribbles.dtype == np.uint8 and set(np.unique(scribbles)) == {0, 1, 2, 3}
    assert all(scribbles[i].any() for i in range(6)), "every T-cell plane has scribbles"


def test_main_parses_without_importing_gui_or_torch():
    code = (
        "import sys; from napari_hrdv2.__main__ import build_parser; "
        "a = build_parser().parse_args(['x.tif', '--preset', 'fast']); assert a.images == ['x.tif']; "
        "heavy = [m for m in ('torch', 'napari', 'qtpy', 'PyQt6') if m in sys.modules]; assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    help_text = subprocess.run(
        [sys.executable, "-m", "napari_hrdv2", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "HR-Dv2 Features" in help_text


def test_main_rejects_missing_files(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "napari_hrdv2", str(tmp_path / "missing.tif")], capture_output=True, text=True
    )
    assert result.returncode == 2 and "missing.tif" in result.stderr
