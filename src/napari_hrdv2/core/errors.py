"""Exceptions with messages that tell the user what to do next."""

from __future__ import annotations


class HRDv2Error(Exception):
    """Base class of every error this package raises on purpose.

    The CLI and the napari widgets show ``str(error)`` to the user, so messages
    say what was wrong and how to fix it. ``headline``, where set, is a title of a
    few words for notifications that show one short line (the message follows).
    """

    headline: str | None = None


class InputError(HRDv2Error, ValueError):
    """An image, label array or option that cannot be used as given."""


class WeightsNotFoundError(HRDv2Error, OSError):
    """Backbone weights are not available locally and cannot be downloaded."""

    headline = "Backbone weights not found"


class ModelFileError(HRDv2Error, ValueError):
    """A saved model file is corrupt, of an unknown version, or does not fit."""


class Cancelled(HRDv2Error):
    """A long computation was cancelled by the user."""


class OutputError(HRDv2Error, OSError):
    """An output file could not be written (read-only folder, full disk, no permission...).

    Raised by :mod:`.atomic`; the final file is then unchanged (a previous version is kept).
    """
