"""Label images: one dtype rule (uint8 up to 255, uint16 up to 65535) used by every writer."""

import numpy as np
import pytest

import napari_hrdv2 as hr
from napari_hrdv2.core.io import write_labels
from napari_hrdv2.core.labels import MAX_LABEL, as_label_image, label_dtype


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
