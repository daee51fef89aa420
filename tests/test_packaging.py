"""Packaging: one version, PEP 639 licence fields, py.typed, and every imported distribution declared."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import napari_hrdv2

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = ROOT / "src" / "napari_hrdv2"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_version_lives_in_the_package_only():
    project = PYPROJECT["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "napari_hrdv2.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", napari_hrdv2.__version__)


def test_licence_python_floor_and_typing_marker():
    project = PYPROJECT["project"]
    assert project["license"] == "MIT" and "LICENSE" in project["license-files"]
    assert not any(c.startswith("License ::") for c in project["classifiers"])  # PEP 639: the expression only
    assert project["requires-python"] == ">=3.11" and PYPROJECT["tool"]["ruff"]["target-version"] == "py311"
    assert (PACKAGE_DIR / "py.typed").is_file()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["napari_hrdv2"]


def test_every_imported_distribution_is_declared():
    project = PYPROJECT["project"]
    declared = {_name(r) for r in project["dependencies"]}
    for extra, requirements in project["optional-dependencies"].items():
        if extra != "testing":  # code may import an optional extra's packages (guarded), never test tools
            declared |= {_name(r) for r in requirements}
    distributions = packages_distributions()
    missing = {}
    for path in PACKAGE_DIR.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top == "napari_hrdv2":
                    continue
                names = {_name(d) for d in distributions.get(top, [top])}
                if not names & declared:
                    missing.setdefault(top, []).append(path.name)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
