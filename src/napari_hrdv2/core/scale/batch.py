"""Headless batch segmentation, the front door: one label image per input image, stack or folder of images.

:func:`segment_files` runs the batch in this process (:func:`~.in_process.iter_segment_files`) or, with a
dask.distributed ``client``, on its cluster (:func:`~.distributed.segment_files_distributed`); both follow
the same plan (:mod:`.plan`) and give the same outputs and :class:`~..files.outputs.BatchReport`.
Used by the ``napari-hrdv2 segment`` command and by ``napari_hrdv2.segment_files``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import FeatureConfig
from ..errors import InputError
from ..files.outputs import BatchReport
from ..progress import Progress, run_steps
from .in_process import iter_segment_files

if TYPE_CHECKING:  # pragma: no cover
    from ..features.encoding import Featurizer
    from ..segmentation.protocol import Segmenter


def segment_files(
    inputs: Sequence[str | Path],
    outdir: str | Path | None,
    segmenter: Segmenter,
    featurizer_or_config: Featurizer | FeatureConfig,
    *,
    suffix: str = ".tif",
    overwrite: bool = False,
    uncertainty: bool = False,
    progress: Callable[[Progress], None] | None = None,
    client: Any = None,
    channels: Sequence[int] | str | None = None,
    spacing: Sequence[float] | None = None,
    **cluster_options: Any,
) -> BatchReport:
    """:func:`~.in_process.iter_segment_files` run to the end; ``progress`` is called with every item.

    With a dask.distributed ``client`` the inputs are segmented on its cluster, one task per image
    (:func:`~.distributed.segment_files_distributed`; ``cluster_options`` such as ``model_path``,
    ``backbone_path``, ``retries``, ``cancel`` go there), with the same outputs and report.
    """
    config = featurizer_or_config if isinstance(featurizer_or_config, FeatureConfig) else featurizer_or_config.config
    if client is not None and config.volume:
        raise InputError(
            "Volumes (volume=True) are segmented in this process; run without a dask client (--scheduler)."
        )
    if client is not None:
        from .distributed import segment_files_distributed

        return segment_files_distributed(
            inputs, outdir, segmenter, featurizer_or_config, client=client, suffix=suffix, overwrite=overwrite,
            uncertainty=uncertainty, progress=progress, channels=channels, **cluster_options,
        )  # fmt: skip
    if cluster_options:
        raise InputError(f"{sorted(cluster_options)} only apply with a dask client (client=...).")
    steps = iter_segment_files(
        inputs,
        outdir,
        segmenter,
        featurizer_or_config,
        suffix=suffix,
        overwrite=overwrite,
        uncertainty=uncertainty,
        channels=channels,
        spacing=spacing,
    )
    return run_steps(steps, progress=progress)
