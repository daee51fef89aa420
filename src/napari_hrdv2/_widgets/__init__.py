"""napari dock widgets (Qt/magicgui only): they gather inputs, start workers and turn results into layers."""

from ._features import FeaturesWidget
from ._segmentation import SegmentationWidget
from ._session import ViewerSession, session_for

__all__ = ["FeaturesWidget", "SegmentationWidget", "ViewerSession", "session_for"]
