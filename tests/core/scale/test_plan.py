"""Batch planning: outputs that would share a name are refused before any work."""

from __future__ import annotations

import pytest

from napari_hrdv2.core.errors import InputError
from napari_hrdv2.core.scale.plan import check_distinct_outputs


def test_outputs_sharing_a_name_are_refused_in_any_spelling_of_the_format(tmp_path):
    out = tmp_path / "out"
    first, same_stem, other = tmp_path / "a" / "x.tif", tmp_path / "b" / "x.png", tmp_path / "b" / "y.png"
    with pytest.raises(InputError, match=r"'.*x\.tif' and '.*x\.png' -> 'x_labels\.png'"):
        check_distinct_outputs([first, same_stem], out, "PNG")
    check_distinct_outputs([first, other], out, "TIFF")  # distinct names: fine
    check_distinct_outputs([first, same_stem], None, "tif")  # each next to its input: distinct
    with pytest.raises(InputError, match=r"written as .* not '\.jpeg'"):
        check_distinct_outputs([first], out, "jpeg")
