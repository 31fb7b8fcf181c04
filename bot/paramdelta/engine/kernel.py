"""The arithmetic of one chunk, exactly as the formula states it.

``out = new_base + alpha * (post - base)``, computed in float32 and rounded
once to the output dtype: bit for bit
``(post.float() - base.float() + new_base.float()).to(dtype)``.

Each operand is first widened into a float32 scratch buffer and the chunk is
processed in cache-sized blocks: on a CPU this is memory-bound, and mixed-dtype
ops (float32 minus bfloat16) or full-chunk float32 temporaries each cost
several times more memory traffic than a block that stays in cache.
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

# Elements per block on the CPU: two float32 scratch blocks of 4 MiB each.
CPU_BLOCK = 1 << 20


def scratch_buffers(block: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        torch.empty(block, dtype=torch.float32, device=device),
        torch.empty(block, dtype=torch.float32, device=device),
    )


def merge_into(
    out: torch.Tensor,
    post: torch.Tensor,
    base: torch.Tensor,
    new_base: torch.Tensor,
    alpha: float,
    scratch: tuple[torch.Tensor, torch.Tensor],
) -> None:
    """``out = new_base + alpha * (post - base)`` over 1-D tensors of equal length."""
    acc_buf, operand_buf = scratch
    block = acc_buf.numel()
    for start in range(0, out.numel(), block):
        end = min(start + block, out.numel())
        out_block = out[start:end]
        # A float32 output is its own accumulator: one pass less.
        acc = out_block if out.dtype == torch.float32 else acc_buf[: end - start]
        operand = operand_buf[: end - start]
        acc.copy_(post[start:end])
        operand.copy_(base[start:end])  # widening (or float64 narrowing) is exact like .float()
        acc.sub_(operand)
        if alpha != 1.0:
            acc.mul_(alpha)
        operand.copy_(new_base[start:end])
        acc.add_(operand)
        if acc is not out_block:
            out_block.copy_(acc)
