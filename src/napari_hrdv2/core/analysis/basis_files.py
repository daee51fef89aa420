"""Applying a saved PCA basis to image files, stacks and folders (one colour basis for all of them).

Used by ``napari-hrdv2 pca apply``. Files named like the outputs of other inputs (``x_pca.png`` next to
``x.png``) are not inputs, and no output is ever written over an input. Every output is written atomically
(:mod:`.atomic`): ``<stem>_pca.png`` per image, a multi-page RGB ``<stem>_pca.tif`` per stack.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import HRDv2Error, InputError
from ..files.atomic import check_not_an_input, is_kept
from ..files.images import expand_inputs, is_stack
from ..files.lazy import read_input_image
from ..files.outputs import PCA_TAG, BatchReport, output_path, path_key, without_outputs
from ..progress import Progress, within

if TYPE_CHECKING:  # pragma: no cover
    from ..features.encoding import Featurizer
    from .pca import PCABasis

#: Black columns between the input and its PCA view in side-by-side outputs.
SIDE_BY_SIDE_GAP = 4


def pca_view(
    basis: PCABasis,
    features: object,
    *,
    components: Sequence[int] | int = (0, 1, 2),
    image: np.ndarray | None = None,
    normalize: str = "percentile",
) -> np.ndarray:
    """uint8 (H, W, 3) PCA view with the basis' fixed colours; with ``image``, (H, 2W + gap, 3) input | PCA."""
    rgb = np.round(basis.to_rgb(features, components) * 255).astype(np.uint8)
    if image is None:
        return rgb
    from ..features.preprocess import to_rgb01

    left = np.round(to_rgb01(image, normalize=normalize) * 255).astype(np.uint8)
    gap = np.zeros((rgb.shape[0], SIDE_BY_SIDE_GAP, 3), dtype=np.uint8)
    return np.concatenate([left, gap, rgb], axis=1)


#: Lower estimate of a PCA view's size per byte of its input file (PNG of smooth colours; side by side: twice).
PCA_BYTES_PER_INPUT_BYTE = 0.25


def check_pca_room(paths: Sequence[Path], outdir: str | Path | None, *, side_by_side: bool = False) -> None:
    """Before any encoding: every output folder is writable and roughly has room for the PCA views.

    Raises
    ------
    OutputError
        A folder that cannot be written, or with clearly too little free space (one line, with the sizes).
    """
    from ..files.atomic import check_output_folder

    needed: dict[Path, int] = {}
    for path in paths:
        try:
            folder = output_path(path, outdir, ".png", tag=PCA_TAG).parent
            size = path.stat().st_size
        except OSError:  # that input fails later with its reason
            continue
        share = size * PCA_BYTES_PER_INPUT_BYTE * (2 if side_by_side else 1)
        needed[folder] = needed.get(folder, 0) + int(share)
    for folder, n_bytes in sorted(needed.items()):
        check_output_folder(folder, n_bytes)


def iter_apply_pca_files(
    inputs: Iterable[str | Path],
    outdir: str | Path | None,
    basis: PCABasis,
    featurizer: Featurizer,
    *,
    components: Sequence[int] | int = (0, 1, 2),
    side_by_side: bool = False,
    overwrite: bool = False,
    channels: Sequence[int] | str | None = None,
) -> Generator[Progress, None, BatchReport]:
    """Write the PCA view of every image (``<stem>_pca.png``) and stack (``<stem>_pca.tif``) of ``inputs``.

    Yields :class:`Progress` in input files (fractional while one is encoded); stop iterating to
    cancel. Existing outputs are skipped unless ``overwrite``; a file that fails is recorded in
    the report and the others are still processed.
    """
    from ..files.atomic import write_png, write_tif

    picked = (components,) if isinstance(components, (int, np.integer)) else tuple(components)
    basis.check_components(picked)  # a bad choice fails before any encoding
    # An earlier run's x_pca.png next to x.png is an output, not an input: never read, then overwritten.
    paths = without_outputs(expand_inputs(inputs), outdir, [(PCA_TAG, ".png"), (PCA_TAG, ".tif")])
    if not paths:
        raise InputError("No input images found.")
    check_pca_room(paths, outdir, side_by_side=side_by_side)
    report = BatchReport()
    n_files = len(paths)
    yield Progress(0, n_files, "Loading the backbone")
    featurizer.backbone  # noqa: B018  (weights errors before any work)
    for index, path in enumerate(paths):
        try:
            separate = featurizer.config.channel_mode == "separate"
            image = read_input_image(path, channels=channels, separate=separate)
            stack = is_stack(image, separate=separate)
            target = output_path(path, outdir, ".tif" if stack else ".png", tag=PCA_TAG)
            check_not_an_input(target, [path, *(p for p in paths if path_key(p) == path_key(target))], option="output")
            if is_kept(target, overwrite=overwrite):
                report.skipped.append(target)
                continue
            planes = list(image) if stack else [image]
            pages = []
            for number, plane in enumerate(planes):
                label = f"{path.name} plane {number + 1}/{len(planes)}" if stack else path.name
                steps = featurizer.iter_encode(plane, with_attention=basis.foreground_cue == "attention")
                start = index + number / len(planes)
                encoding = yield from within(steps, start, 1.0 / len(planes), total=n_files, message=label)
                shown = plane if side_by_side else None
                pages.append(
                    pca_view(basis, encoding, components=picked, image=shown, normalize=featurizer.config.normalize)
                )
                del encoding
            if stack:
                write_tif(target, np.stack(pages), photometric="rgb", compression="zlib", overwrite=overwrite)
            else:
                write_png(target, pages[0], overwrite=overwrite)
            report.written.append(target)
        except HRDv2Error as err:
            if "fitted on other features" in str(err) or "-channel features" in str(err):
                raise  # the basis does not fit these features at all: every file would fail the same way
            report.failed.append((path, str(err)))
        yield Progress(index + 1, n_files, f"Finished {path.name}")
    return report
