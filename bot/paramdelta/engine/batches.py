"""Small units merged several at a time: the per-tensor cost of a mixture of experts.

DeepSeek-V3 has ~95k tensors, most of them one expert's projection or its
block scales. One unit per tensor costs some 40 torch calls and the Python
around them, whatever the tensor's size: the merge of many tiny tensors was
bound by that, not by bytes. Units that compute alike (same shard, operation,
dtypes, weights and, for FP8, the same band shape) and belong to the same layer
are joined into one unit whose ``parts`` are the originals: each
part is still read and written at its own offsets, the arithmetic runs once
over all of them (stacked bands for FP8, one flat run otherwise). Layers are
never mixed, so the delta report's per-layer sums stay exact; its moments are
booked under the first part's tensor. A batch whose values are not all finite
is redone part by part, so that an error names the tensor. A unit with an
adapter's delta (computed from LoRA's A and B per tensor, `workers.LoraRead`)
is left alone: its input is not bytes at an offset to read back to back.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, cast

from paramdelta.engine.delta import group_of

if TYPE_CHECKING:
    from paramdelta.engine.workers import Read, Unit

MAX_PARTS = 4096  # bounds the Python loops over one batch's reads and writes


def _kind(unit: Unit, group: int | str) -> Hashable:
    """Units of equal kind (``group``: the unit's layer) can be computed as one."""
    band = unit.band
    shape: Hashable = None
    if band is not None:
        fp8_inputs = tuple(s is None for s in band.scales)
        shape = (band.cols, unit.count, fp8_inputs, band.scale_offset is None)
    reads = tuple([(r.role, id(r.source), r.dtype) for r in unit.reads])
    return (unit.shard, unit.op, unit.out_dtype, unit.weights, reads, shape, group)


def batch_units(units: Sequence[Unit], budget: int) -> list[Unit]:
    """Join small units of one kind, up to ``budget`` elements each, within a run of
    units of one shard and layer (the experts' projections alternate in shape)."""
    out: list[Unit] = []
    runs: dict[Hashable, list[Unit]] = {}
    totals: dict[Hashable, int] = {}
    where: Hashable = None

    def flush(kind: Hashable) -> None:
        out.append(_joined(runs.pop(kind)))
        del totals[kind]

    for unit in units:
        group = group_of(unit.tensor)
        here = (unit.shard, group)
        if here != where:
            for kind in list(runs):
                flush(kind)
            where = here
        if unit.count > budget // 2 or unit.computed:
            out.append(unit)
            continue
        kind = _kind(unit, group)
        if kind in runs and (totals[kind] + unit.count > budget or len(runs[kind]) == MAX_PARTS):
            flush(kind)
        runs.setdefault(kind, []).append(unit)
        totals[kind] = totals.get(kind, 0) + unit.count
    for kind in list(runs):
        flush(kind)
    return out


def _joined(parts: list[Unit]) -> Unit:
    """One unit standing for ``parts``: their reads' bytes summed per operand."""
    first = parts[0]
    if len(parts) == 1:
        return first

    reads = tuple(
        # A Read: a computed (adapter) unit is never joined.
        cast("Read", read)._replace(nbytes=sum(p.reads[i].nbytes for p in parts))
        for i, read in enumerate(first.reads)
    )
    band = first.band
    if band is not None:
        band = band._replace(scale_nbytes=sum(p.band.scale_nbytes for p in parts if p.band))
    return replace(
        first, count=sum(p.count for p in parts), reads=reads, band=band, parts=tuple(parts)
    )
