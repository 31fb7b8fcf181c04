"""The one dtype table, and the views the engine takes of it."""

import torch

from paramdelta.engine.dtypes import COPIED_DTYPES, DTYPES, FLOAT_DTYPES, ITEMSIZE
from paramdelta.engine.kernel import TORCH_DTYPES
from paramdelta.engine.recipe import DTYPE_CHOICES


def test_every_dtype_of_the_table_is_the_torch_dtype_of_its_size():
    for name, dtype in DTYPES.items():
        if name in TORCH_DTYPES:
            assert torch.empty(0, dtype=TORCH_DTYPES[name]).element_size() == dtype.itemsize
    assert {"BF16", "F16", "F32", "F64", "I64", "BOOL"} <= set(TORCH_DTYPES)


def test_what_is_merged_copied_or_refused():
    assert {"F16", "BF16", "F32", "F64"} == FLOAT_DTYPES
    assert {"BOOL", "U8", "I8", "I16", "U16", "I32", "U32", "I64", "U64"} == COPIED_DTYPES
    refused = set(DTYPES) - FLOAT_DTYPES - COPIED_DTYPES
    assert refused == {"F8_E5M2", "F8_E4M3", "F8_E8M0", "C64"}  # readable, not merged
    assert {name: d.itemsize for name, d in DTYPES.items()} == ITEMSIZE


def test_the_output_dtype_choices_are_torch_names_of_float_dtypes():
    assert DTYPE_CHOICES == {"auto": None, "bfloat16": "BF16", "float16": "F16", "float32": "F32"}
    for name, dtype in DTYPE_CHOICES.items():
        if dtype is not None:
            assert TORCH_DTYPES[dtype] == getattr(torch, name)
