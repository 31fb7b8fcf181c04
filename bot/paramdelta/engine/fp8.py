"""FP8 block (de)quantization and the merge of one band of rows, exactly as the layout says.

A band is whole 128-row blocks of a 2-D weight (the last may be partial), all
columns: the unit of an FP8 merge. Small tensors of one shape are merged several
at a time, stacked (``[tensors, rows, cols]``): one set of torch calls for many
experts. Each input is dequantized to float32 as
``q.float() * scale_inv[block]`` (a float input: ``.float()``), merged by
`kernel.merge_into` in float32 (the same arithmetic and moments as every
other tensor), then either rounded once to a float dtype or re-quantized per
128x128 block: ``s = amax / 448`` (1.0 where amax is 0), ``q = (x / s).clamp(
-448, 448)`` in e4m3, ``scale_inv = s``. The re-quantization error
``q·s − x`` is measured in the same pass (`Moments.requant_err_sq`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from paramdelta.engine.fp8_layout import BLOCK, blocks
from paramdelta.engine.kernel import Delta, Moments, check_copy, merge_into

FP8_MAX = 448.0  # the largest finite float8_e4m3fn


def expand(scale: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Per-block scales [..., ceil(rows/128), ceil(cols/128)] as one scale per element."""
    by_row = scale.repeat_interleave(BLOCK, -2)[..., :rows, :]
    return by_row.repeat_interleave(BLOCK, -1)[..., :cols]


def dequantize(
    values: torch.Tensor, scale: torch.Tensor | None, rows: int, cols: int
) -> torch.Tensor:
    """Stacked bands as float32 [n, rows, cols]: FP8 times its block scales, or widened."""
    x = values.view(-1, rows, cols).float()
    if scale is None:
        return x
    return x.mul_(expand(scale.view(-1, blocks(rows), blocks(cols)), rows, cols))


def quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 [..., rows, cols] -> (e4m3 values, float32 scale per 128x128 block)."""
    *lead, rows, cols = x.shape
    padded = x.new_zeros(*lead, blocks(rows) * BLOCK, blocks(cols) * BLOCK)  # amax ignores 0s
    padded[..., :rows, :cols] = x
    tiles = padded.view(*lead, blocks(rows), BLOCK, blocks(cols), BLOCK)
    amax = tiles.abs().amax(dim=(-3, -1))
    scale = torch.where(amax == 0, torch.ones_like(amax), amax / FP8_MAX)
    q = (x / expand(scale, rows, cols)).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, scale


def merge_band(
    out: torch.Tensor,
    ins: Sequence[torch.Tensor],
    scales: Sequence[torch.Tensor | None],
    weights: Sequence[float],
    shape: tuple[int, int],
    scratch: tuple[torch.Tensor, torch.Tensor],
) -> tuple[Moments, torch.Tensor | None]:
    """Merge stacked bands of ``shape`` into ``out`` (typed, flat); their moments and, for
    an FP8 ``out``, their scales.

    ``ins`` are the new base then each delta's post and base, as stored; ``scales``
    is parallel to them (None for a float input).
    """
    rows, cols = shape
    x = [dequantize(v, s, rows, cols).view(-1) for v, s in zip(ins, scales, strict=True)]
    acc = torch.empty_like(x[0])
    deltas: list[Delta] = [(x[1 + 2 * i], x[2 + 2 * i], w) for i, w in enumerate(weights)]
    moments = merge_into(acc, x[0], deltas, scratch)
    if out.dtype != torch.float8_e4m3fn:
        out.copy_(acc)  # the one rounding
        if (nonfinite := check_copy(out)) is not None:
            moments.add(Moments(nonfinite=nonfinite))
        return moments, None
    band = acc.view(-1, rows, cols)
    q, scale = quantize(band)
    out.copy_(q.view(-1))
    error = q.float().mul_(expand(scale, rows, cols)).sub_(band)
    moments.requantized = acc.numel()
    moments.requant_err_sq = torch.sum(error * error, dtype=torch.float64).item()
    moments.requant_sq = torch.sum(band * band, dtype=torch.float64).item()
    return moments, scale
