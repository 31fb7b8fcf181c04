"""Fan-out: one merge's output shards split between N legs, each on its own runner.

The output layout (which tensor goes in which shard) is a pure function of the
headers (`writer.plan_shards`), so every leg computes the same one; so is the
assignment of shards to legs here. Each leg then reads the input bytes and
writes the output bytes of its own shards only: the assignment balances what
a shard costs a runner, the bytes it reads plus the bytes it writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from typing import Any, NamedTuple

from paramdelta.engine.delta import DeltaReport
from paramdelta.engine.dtypes import ITEMSIZE
from paramdelta.engine.kernel import Moments
from paramdelta.engine.merge_plan import CONFIG, MergePlan
from paramdelta.engine.safetensors_format import INDEX
from paramdelta.engine.workers import MergeStats
from paramdelta.engine.writer import ShardPlan

_STAT_FIELDS = tuple(f.name for f in fields(MergeStats) if f.name != "delta")


class Leg(NamedTuple):
    """Leg ``number`` of ``of`` (1-based, as `--leg K/N` names it)."""

    number: int
    of: int

    def __str__(self) -> str:
        return f"{self.number}/{self.of}"


def shard_costs(plan: MergePlan, shards: Sequence[ShardPlan]) -> list[int]:
    """Per output shard, the bytes a leg reads and writes to make it."""
    items = {item.name: item for item in plan.items}
    costs = []
    for shard in shards:
        cost = 0
        for name in shard.offsets:
            item = items[name]
            cost += item.nbytes
            for segment in item.segments:
                cost += sum(segment.count * ITEMSIZE[op.ref.dtype] for op in segment.inputs)
        costs.append(cost)
    return costs


def assign_legs(plan: MergePlan, shards: Sequence[ShardPlan], count: int) -> list[tuple[int, ...]]:
    """The shard indexes of each of ``count`` legs (a leg may get none, if shards are few).

    Largest shard first, each to the leg with the least so far (ties: the lower leg):
    deterministic, and within one shard of an even split.
    """
    if count < 1:
        raise ValueError(f"legs must be at least 1, not {count}")
    costs = shard_costs(plan, shards)
    loads = [0] * count
    legs: list[list[int]] = [[] for _ in range(count)]
    for shard in sorted(range(len(shards)), key=lambda s: (-costs[s], s)):
        leg = min(range(count), key=lambda k: (loads[k], k))
        legs[leg].append(shard)
        loads[leg] += costs[shard]
    return [tuple(sorted(shards_of_leg)) for shards_of_leg in legs]


def files_read(
    plan: MergePlan, shards: Sequence[ShardPlan], chosen: Sequence[int]
) -> dict[str, list[str]]:
    """Per role, the files the ``chosen`` shards read: their input shards, plus the small
    files a checkpoint opens with (config, index); no donated file (the finish job's)."""
    names = {name for s in chosen for name in shards[s].offsets}
    weights: dict[str, set[str]] = {}
    for item in plan.items:
        if item.name in names:
            for role, file in item.input_files():  # an FP8 weight's scales may lie elsewhere
                weights.setdefault(role, set()).add(file)
    return {
        role: [f for f in files if f in weights.get(role, set()) or f in (CONFIG, INDEX)]
        for role, files in plan.read.items()
    }


def stats_to_dict(stats: MergeStats) -> dict[str, Any]:
    """A leg's stats as JSON, its delta report exact (`DeltaReport.raw`)."""
    return {**{k: getattr(stats, k) for k in _STAT_FIELDS}, "delta": stats.delta.raw()}


def stats_from_dict(data: dict[str, Any]) -> MergeStats:
    """What `stats_to_dict` gave; ValueError if ``data`` is not of that shape."""
    try:
        fields = {k: data[k] for k in _STAT_FIELDS}
        return MergeStats(**fields, delta=DeltaReport.from_raw(data["delta"]))
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"not a leg's merge stats: {e!r}") from None


def combined_stats(plan: MergePlan, parts: Sequence[MergeStats]) -> MergeStats:
    """The whole merge's stats from its legs': sums, the slowest leg's time, the tensors'
    moments in the plan's order (an FP8 output's scale tensor is part of its weight's)."""
    delta = DeltaReport({i.name: Moments() for i in plan.items if i.scale_of is None}, plan.deltas)
    delta.merge(part.delta for part in parts)
    return MergeStats(
        tensors=sum(p.tensors for p in parts),
        bytes=sum(p.bytes for p in parts),
        seconds=max((p.seconds for p in parts), default=0.0),
        cpu_seconds=sum(p.cpu_seconds for p in parts),
        device=", ".join(sorted({p.device for p in parts})) or "none",
        workers=max((p.workers for p in parts), default=0),
        chunk_elements=max((p.chunk_elements for p in parts), default=0),
        peak_rss_bytes=max((p.peak_rss_bytes for p in parts), default=0),
        delta=delta,
    )
