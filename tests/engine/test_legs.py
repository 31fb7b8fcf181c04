"""Fan-out legs: the shards of one layout split by bytes, each leg writing its own alone."""

import json

import pytest
import torch

from paramdelta.engine.checkpoint import LocalSource
from paramdelta.engine.legs import (
    assign_legs,
    combined_stats,
    files_read,
    shard_costs,
    stats_from_dict,
    stats_to_dict,
)
from paramdelta.engine.recipe import Recipe, Runtime
from paramdelta.engine.stages import preflight, stage
from paramdelta.engine.writer import plan_shards
from paramdelta.testing.checkpoints import make_trio, save_checkpoint
from paramdelta.testing.fp8_checkpoints import QUANTIZATION_CONFIG, fp8_state

QUIET = Runtime(progress=False)
OPENING = ("config.json", "model.safetensors.index.json")


@pytest.fixture
def trio(tmp_path):
    return make_trio(tmp_path / "in", max_shard_size=60_000)


def _plan(trio, shard_size=30_000):
    sources = {role: LocalSource(path) for role, path in trio.items()}
    plan = preflight(sources, Recipe(shard_size=shard_size))
    return sources, plan, plan_shards(plan.items, shard_size)


def test_every_shard_goes_to_exactly_one_leg_and_legs_balance_by_bytes(trio):
    _, plan, shards = _plan(trio)
    costs = shard_costs(plan, shards)
    # bf16 in and out: a shard costs its three inputs' bytes plus its own.
    assert costs == [4 * (s.data_bytes) for s in shards]
    legs = assign_legs(plan, shards, 3)
    assert sorted(s for leg in legs for s in leg) == list(range(len(shards)))
    loads = [sum(costs[s] for s in leg) for leg in legs]
    assert max(loads) - min(loads) <= max(costs)  # within one shard of an even split
    assert assign_legs(plan, shards, 3) == legs  # a pure function: every leg agrees
    assert assign_legs(plan, shards, 1) == [tuple(range(len(shards)))]
    many = assign_legs(plan, shards, len(shards) + 2)
    assert sorted(len(leg) for leg in many)[:2] == [0, 0]  # more legs than shards: idle legs


def test_a_leg_writes_its_shards_bit_exact_and_nothing_else(tmp_path, trio):
    sources, plan, shards = _plan(trio)
    with stage(plan, sources, tmp_path / "whole", QUIET) as whole:
        whole.write_all()
        full = whole.finish()
    legs = assign_legs(plan, shards, 2)
    mine = legs[1]
    with stage(plan, sources, tmp_path / "leg", QUIET, only=mine) as staged:
        written = [shard.plan.filename for shard in staged.write()]
        on_disk = sorted(p.name for p in staged.directory.iterdir())
        for name in written:
            assert (staged.directory / name).read_bytes() == (full.out_dir / name).read_bytes()
        result = staged.result()
    assert sorted(written) == sorted(shards[s].filename for s in mine)
    assert on_disk == sorted(written)  # no config, index or donated file: the finish job's
    names = {n for s in mine for n in shards[s].offsets}
    assert set(result.stats.delta.tensors) == names
    assert result.stats.tensors == len(names)
    assert result.stats.delta.tensors == {n: full.stats.delta.tensors[n] for n in names}


def test_a_leg_reads_only_the_input_shards_its_output_shards_need(trio):
    _, plan, shards = _plan(trio)
    first = files_read(plan, shards, [0])
    everything = files_read(plan, shards, range(len(shards)))
    for role, files in plan.read.items():
        wanted = [f for f in files if f.endswith(".safetensors") or f in OPENING]
        assert everything[role] == wanted  # no donated file: the finish job copies those
    for role, files in first.items():
        assert "config.json" in files and set(files) <= set(plan.read[role])
        assert len([f for f in files if f.endswith(".safetensors")]) < len(
            [f for f in plan.read[role] if f.endswith(".safetensors")]
        )


def _fp8_trio(tmp_path):
    """FP8 block-scaled checkpoints of three layers' projections, two weights per shard."""
    shapes = {
        f"model.layers.{i}.mlp.{proj}.weight": (130, 200)
        for i in range(3)
        for proj in ("up", "down")
    }
    config = {"model_type": "deepseek_v3", "quantization_config": QUANTIZATION_CONFIG}
    sources = {}
    for seed, role in enumerate(("base", "post", "new_base")):
        g = torch.Generator().manual_seed(seed)
        state = {
            n: (0.05 * torch.randn(s, generator=g)).to(torch.bfloat16) for n, s in shapes.items()
        }
        stored = fp8_state(state)
        # The scales after every weight: layer 0's lie in another file than its weights.
        stored = dict(sorted(stored.items(), key=lambda kv: kv[0].endswith("_scale_inv")))
        path = save_checkpoint(tmp_path / role, stored, config, max_shard_size=60_000)
        sources[role] = LocalSource(path)
    return sources


def test_fp8_legs_read_their_scales_and_their_reports_sum_to_the_whole(tmp_path):
    sources = _fp8_trio(tmp_path / "in")
    plan = preflight(sources, Recipe(shard_size=60_000))
    shards = plan_shards(plan.items, 60_000)
    with stage(plan, sources, tmp_path / "whole", QUIET) as whole:
        whole.write_all()
        full = whole.finish()
    legs = assign_legs(plan, shards, 2)
    assert all(legs)
    elsewhere = [
        i.name for i in plan.items if i.fp8 and i.fp8.scales[0].file != i.segments[0].start.ref.file
    ]
    assert elsewhere  # what a leg must download besides its weights' files
    parts = []
    for number, mine in enumerate(legs):
        read = files_read(plan, shards, mine)
        for item in plan.items:
            if item.fp8 is not None and item.name in {n for s in mine for n in shards[s].offsets}:
                for (role, _, _), scale in zip(
                    item.segments[0].inputs, item.fp8.scales, strict=True
                ):
                    assert scale.file in read[role], (item.name, role)
        with stage(plan, sources, tmp_path / f"leg{number}", QUIET, only=mine) as staged:
            for shard in staged.write():
                name = shard.plan.filename
                assert (staged.directory / name).read_bytes() == (full.out_dir / name).read_bytes()
            # What the finish job gets: the leg's stats as JSON, its moments exact.
            parts.append(
                stats_from_dict(json.loads(json.dumps(stats_to_dict(staged.result().stats))))
            )
    combined = combined_stats(plan, parts)
    assert combined.delta.tensors == full.stats.delta.tensors  # requant sums included
    summary = combined.delta.summary()
    assert summary == full.stats.delta.summary()
    assert summary["overall"]["tensors"] == 6  # weights only: a scale tensor is part of one
    assert 0 < summary["overall"]["requant_error"] < 0.1
