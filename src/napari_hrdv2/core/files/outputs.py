"""Names and reports of the outputs written per input file (label images, uncertainty maps, PCA views).

An input ``cells.tif`` gives ``<outdir>/cells<tag><suffix>``: ``cells_labels.tif``,
``cells_uncertainty.tif``, ``cells_pca.png``. What a run over many files did is a :class:`BatchReport`.
Used by batch segmentation (:mod:`..scale`) and by applying a PCA basis to files (:mod:`..analysis.basis_files`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError

#: Name part between an input's stem and the output suffix: ``cells.tif`` -> ``cells_labels.tif``.
LABELS_TAG = "_labels"
#: Name part of the optional uncertainty maps: ``cells.tif`` -> ``cells_uncertainty.tif``.
UNCERTAINTY_TAG = "_uncertainty"
#: Name part of PCA views: ``cells.tif`` -> ``cells_pca.png`` (``cells_pca.tif`` for a stack).
PCA_TAG = "_pca"
#: Output formats of label images (``.zarr``: an OME-Zarr image, written tile by tile and resumable).
LABEL_SUFFIXES = (".tif", ".png", ".zarr")


@dataclass
class BatchReport:
    """What a batch did: outputs written, inputs skipped (output exists) and failed (with the reason).

    ``extra`` lists additional outputs (uncertainty maps).
    """

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    extra: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no input failed."""
        return not self.failed

    def summary(self, overwrite_hint: str = "pass overwrite=True to replace them") -> str:
        """One sentence, e.g. ``"Wrote 2 label image(s), 1 failed (bad.tif: ...)."``."""
        text = f"Wrote {len(self.written)} label image(s)"
        if self.skipped:
            text += f", skipped {len(self.skipped)} existing ({overwrite_hint})"
        if self.failed:
            reasons = "; ".join(f"{path.name}: {reason}" for path, reason in self.failed[:3])
            text += f", {len(self.failed)} failed ({reasons}{'...' if len(self.failed) > 3 else ''})"
        return text + "."


def output_path(source: str | Path, outdir: str | Path | None, suffix: str, tag: str = LABELS_TAG) -> Path:
    """Where the output of ``source`` goes: ``outdir/<stem><tag><suffix>`` (``outdir=None``: next to ``source``)."""
    source = Path(source)
    folder = source.parent if outdir is None else Path(outdir)
    return folder / f"{source.stem}{tag}{suffix}"


def label_suffix(suffix: str) -> str:
    """The output format of label images, normalised: ``"tif"``, ``".TIFF"`` -> ``".tif"``; one of :data:`LABEL_SUFFIXES`.

    Raises
    ------
    InputError
        Any other format.
    """
    suffix = suffix if suffix.startswith(".") else f".{suffix}"
    suffix = suffix.lower()
    if suffix == ".tiff":
        suffix = ".tif"
    if suffix not in LABEL_SUFFIXES:
        raise InputError(f"Label images are written as {' or '.join(LABEL_SUFFIXES)}, not '{suffix}'.")
    return suffix


def path_key(path: Path) -> Path:
    """``path`` resolved, to compare file names (``a/../b.tif`` is ``b.tif``); as given when it cannot be resolved."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a symlink loop, or unresolvable: compared as given
        return path.absolute()


def without_outputs(paths: Sequence[Path], outdir: str | Path | None, names: Iterable[tuple[str, str]]) -> list[Path]:
    """``paths`` less the files that are outputs of another of them: ``a_labels.tif`` next to ``a.tif``.

    A run over a folder whose outputs go to that folder (``outdir`` None, or the folder itself) would
    otherwise read its own earlier outputs as inputs and, with overwrite, replace them while they are read.

    Parameters
    ----------
    paths : the inputs found
    outdir : where the outputs go (None: next to each input)
    names : the ``(tag, suffix)`` pairs of the outputs an input gets, e.g. ``[("_pca", ".png")]``
    """
    names = list(names)
    outputs = {path_key(output_path(path, outdir, suffix, tag)) for path in paths for tag, suffix in names}
    return [path for path in paths if path_key(path) not in outputs]
