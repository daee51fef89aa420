"""`import napari_hrdv2` stays light: no torch, Qt, napari or transformers until needed."""

import subprocess
import sys


def test_import_is_headless_and_lazy():
    code = (
        "import sys, napari_hrdv2 as hr; heavy = [m for m in ('torch', 'napari', 'qtpy', 'PyQt6', 'transformers', "
        "'magicgui') if m in sys.modules]; print(heavy); assert not heavy, heavy; "
        "assert hr.FeatureConfig().n_transforms == 9"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_core_never_imports_gui_modules():
    code = (
        "import sys, importlib, pkgutil, napari_hrdv2.core as core\n"
        "for m in pkgutil.iter_modules(core.__path__): importlib.import_module('napari_hrdv2.core.' + m.name)\n"
        "bad = [m for m in ('napari', 'qtpy', 'PyQt6', 'magicgui') if m in sys.modules]\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
