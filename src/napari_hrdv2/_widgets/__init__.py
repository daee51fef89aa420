"""napari dock widgets (Qt/magicgui only): they gather inputs, start workers and turn results into layers."""

from ..core.runtime.threads import prefer_passive_openmp

# Before anything loads torch: idle OpenMP threads sleep instead of spinning in the napari process, where
# other work always runs (benchmarks/bench_cpu.py threads: retrain + predict 8x faster on a busy machine).
prefer_passive_openmp()

from ._features import FeaturesWidget  # noqa: E402
from ._segmentation import SegmentationWidget  # noqa: E402
from ._session import ViewerSession, session_for  # noqa: E402

__all__ = ["FeaturesWidget", "SegmentationWidget", "ViewerSession", "session_for"]
