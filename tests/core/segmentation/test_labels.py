"""Label images: one dtype rule (uint8 up to 255, uint16 up to 65535) used by every writer."""

import numpy as np
import pytest

import napari_hrdv2 as hr
from napari_hrdv2.core.files.images import write_labels
from napari_hrdv2.core.files.label_images import MAX_LABEL, as_label_image, label_dtype


@pytest.mark.parametrize(("value", "dtype"), [(0, np.uint8), (255, np.uint8), (256, np.uint16), (65535, np.uint16)])
def test_label_dtype_boundaries(value, dtype):
    assert label_dtype(value) == dtype
    assert as_label_image(np.array([[0, value]], dtype=np.int64)).dtype == dtype


def test_labels_beyond_uint16_or_negative_are_refused(tmp_path):
    with pytest.raises(hr.InputError, match="uint16"):
        label_dtype(MAX_LABEL + 1)
    with pytest.raises(hr.InputError, match="0..65535"):
        as_label_image(np.array([[-1, 2]]))
    with pytest.raises(hr.InputError, match="0..65535"):
        write_labels(tmp_path / "x.png", np.array([[0, 70000]], dtype=np.int64))
    assert not (tmp_path / "x.png").exists()


def test_png_labels_keep_their_values(tmp_path):
    from skimage.io import imread

    labels = np.array([[0, 1], [300, 2]], dtype=np.int64)
    written = imread(write_labels(tmp_path / "x.png", labels))
    assert written.dtype == np.uint16 and written.tolist() == labels.tolist()


def test_clean_labels_filter_sizes_have_known_answers():
    """Known answers that tell the filter sizes apart (each size matters, 0/1 mean off)."""
    from napari_hrdv2.core.segmentation.labels import clean_labels

    field = np.ones((15, 15), dtype=np.uint8)
    field[6:9, 6:9] = 2  # a 3x3 block
    three = clean_labels(field, majority_size=3)  # corners lose (4/9 votes), the plus shape stays
    expected = field.copy()
    expected[[6, 6, 8, 8], [6, 8, 6, 8]] = 1
    np.testing.assert_array_equal(three, expected)
    np.testing.assert_array_equal(clean_labels(field, majority_size=5), 1)  # 9/25 votes: the block goes
    speck = np.ones((9, 9), dtype=np.uint8)
    speck[4, 4] = 2
    assert clean_labels(speck, majority_size=2)[4, 4] == 1  # a 2x2 window outvotes a single pixel
    for off in (0, 1):
        np.testing.assert_array_equal(clean_labels(speck, majority_size=off), speck)
    # min_object_size: regions SMALLER than it are merged; a 9-pixel block stays at 9 and goes at 10.
    np.testing.assert_array_equal(clean_labels(field, min_object_size=9), field)
    np.testing.assert_array_equal(clean_labels(field, min_object_size=10), 1)
    assert clean_labels(field, majority_size=3).dtype == np.uint8
    # Regions are 8-connected: two diagonal pixels are one region of 2 pixels.
    diagonal = np.ones((9, 9), dtype=np.uint8)
    diagonal[4, 4] = diagonal[5, 5] = 2
    np.testing.assert_array_equal(clean_labels(diagonal, min_object_size=2), diagonal)
    np.testing.assert_array_equal(clean_labels(diagonal, min_object_size=3), 1)
