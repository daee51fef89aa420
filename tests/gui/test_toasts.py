"""Notifications: a headline that napari's collapsed (one-line) toast shows whole, then the full message."""

from __future__ import annotations

import pytest

from napari_hrdv2._widgets._runner import TOAST_HEADLINE_CHARS, notify_error, toast_text
from napari_hrdv2.core.errors import InputError, WeightsNotFoundError

pytestmark = pytest.mark.gui

LONG = "Only one class (value 1) is labelled: paint strokes of at least two classes."


def test_long_message_gets_its_first_clause_as_headline_and_keeps_the_full_text():
    text = toast_text(LONG)
    headline, full = text.split("\n")
    assert headline == "HR-Dv2: Only one class"
    assert full == LONG


def test_short_message_is_shown_as_it_is():
    assert toast_text("Cancelled.") == "HR-Dv2: Cancelled."


def test_headline_without_a_short_clause_is_cut_at_a_word_with_dots():
    text = toast_text("Everything about this particular thing went badly wrong today")
    headline = text.split("\n")[0].removeprefix("HR-Dv2: ")
    assert headline == "Everything about this..." and len(headline) <= TOAST_HEADLINE_CHARS


def test_error_headline_class_attribute_is_used(notifications):
    notify_error(WeightsNotFoundError("The weights of dinov2_vits14 are not here: `hf download facebook/dinov2-small`."))
    notify_error(InputError(LONG))
    first, second = (str(n.message) for n in notifications[-2:])
    assert first.startswith("HR-Dv2: Backbone weights not found\n") and "hf download facebook/dinov2-small" in first
    assert second.startswith("HR-Dv2: Only one class\n") and second.endswith(LONG)
    for message in (first, second):
        assert len(message.split("\n")[0]) <= len("HR-Dv2: ") + TOAST_HEADLINE_CHARS
