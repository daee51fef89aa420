"""Known answers for named dtypes and their errors (core.devices)."""

from __future__ import annotations

import pytest
import torch

from napari_hrdv2.core.errors import InputError
from napari_hrdv2.core.runtime.devices import choose_dtype, resolve_storage_dtype


def test_named_dtypes_and_the_option_named_in_their_errors():
    cpu = torch.device("cpu")
    assert choose_dtype("float16", cpu).dtype is torch.float16 and choose_dtype("float16", cpu).reason == "given"
    assert resolve_storage_dtype("float32", torch.bfloat16) is torch.float32
    with pytest.raises(InputError, match=r"^Unknown dtype 'float64': use one of 'auto', "):
        choose_dtype("float64", cpu)
    with pytest.raises(InputError, match=r"^Unknown storage_dtype 'int8': use one of 'auto', "):
        resolve_storage_dtype("int8", torch.float32)
