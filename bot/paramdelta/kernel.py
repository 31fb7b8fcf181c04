"""The arithmetic of one chunk, exactly as the formula states it.

``out = (new_base + alpha * (post - base))`` computed in float32 and rounded
once to the output dtype. Mixed-dtype in-place ops (a float32 tensor minus a
bfloat16 one) widen the narrow operand exactly, so the result is bit-for-bit
``(post.float() - base.float() + new_base.float()).to(dtype)``.
"""

from __future__ import annotations

import torch

TORCH_DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "U16": torch.uint16,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I32": torch.int32,
    "U32": torch.uint32,
    "F32": torch.float32,
    "F64": torch.float64,
    "I64": torch.int64,
    "U64": torch.uint64,
}


def merge_into(
    out: torch.Tensor,
    work: torch.Tensor,
    post: torch.Tensor,
    base: torch.Tensor,
    new_base: torch.Tensor,
    alpha: float,
) -> None:
    """``out = new_base + alpha * (post - base)``; ``work`` is float32 scratch of the same size.

    When ``out`` is float32 it may be ``work`` itself.
    """
    work.copy_(post)
    work.sub_(_as_operand(base))
    if alpha != 1.0:
        work.mul_(alpha)
    work.add_(_as_operand(new_base))
    if out.data_ptr() != work.data_ptr():
        out.copy_(work)


def _as_operand(t: torch.Tensor) -> torch.Tensor:
    # A float64 operand would widen the op to float64 and round differently
    # from the formula's ``.float()``; narrow it first (rare, so the copy is fine).
    return t.float() if t.dtype == torch.float64 else t
