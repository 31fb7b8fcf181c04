"""The one table of tensor dtypes: safetensors name, item size, what a merge does, torch's name.

Kept free of torch (the planning commands never import it); the kernel maps
the torch names to torch dtypes once (`paramdelta.engine.kernel.TORCH_DTYPES`).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

Kind = Literal["float", "integer", "float8", "complex"]


class DType(NamedTuple):
    itemsize: int
    # "float": merged; "integer" (and bool): buffers, copied from the new base;
    # "float8": F8_E4M3 merged as a block-scaled weight (`engine.fp8_layout`), others refused;
    # "complex": readable, but refused by the merge.
    kind: Kind
    torch_name: str  # torch.<torch_name>; a torch too old for it just lacks the attribute


DTYPES: dict[str, DType] = {
    "BOOL": DType(1, "integer", "bool"),
    "U8": DType(1, "integer", "uint8"),
    "I8": DType(1, "integer", "int8"),
    "F8_E5M2": DType(1, "float8", "float8_e5m2"),
    "F8_E4M3": DType(1, "float8", "float8_e4m3fn"),
    "F8_E8M0": DType(1, "float8", "float8_e8m0fnu"),
    "I16": DType(2, "integer", "int16"),
    "U16": DType(2, "integer", "uint16"),
    "F16": DType(2, "float", "float16"),
    "BF16": DType(2, "float", "bfloat16"),
    "I32": DType(4, "integer", "int32"),
    "U32": DType(4, "integer", "uint32"),
    "F32": DType(4, "float", "float32"),
    "F64": DType(8, "float", "float64"),
    "I64": DType(8, "integer", "int64"),
    "U64": DType(8, "integer", "uint64"),
    "C64": DType(8, "complex", "complex64"),
}

ITEMSIZE = {name: d.itemsize for name, d in DTYPES.items()}
FLOAT_DTYPES = frozenset(name for name, d in DTYPES.items() if d.kind == "float")
COPIED_DTYPES = frozenset(name for name, d in DTYPES.items() if d.kind == "integer")
TORCH_NAMES = {name: d.torch_name for name, d in DTYPES.items()}
