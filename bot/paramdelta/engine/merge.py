"""One merge end to end: open and check the three checkpoints, plan, compute, finish the files.

This is the function the `merge` and `run` commands share; it knows nothing of
the Hub beyond the `Source` objects it is given and the optional shard hook.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from paramdelta.engine.checkpoint import Checkpoint, LocalSource, Source, open_checkpoint
from paramdelta.engine.files import RESULT_FILES
from paramdelta.engine.merge_plan import CONFIG, ROLES, MergePlan, plan_merge
from paramdelta.engine.options import MergeOptions
from paramdelta.engine.safetensors_format import INDEX
from paramdelta.engine.workers import MergeStats, execute
from paramdelta.engine.writer import (
    OutputWriter,
    ShardHook,
    ShardPlan,
    check_not_an_input,
    check_output_dir,
    plan_shards,
)

Prepare = Callable[[MergePlan, dict[str, Source]], dict[str, Source]]


DEFAULT_OPTIONS = MergeOptions()


@dataclass
class MergeResult:
    out_dir: Path
    plan: MergePlan
    shards: list[ShardPlan]
    stats: MergeStats
    files: dict[str, str]  # every output file -> where it came from ("merge", a role, "result")
    sources: dict[str, Source] = field(default_factory=dict)  # what was read (after prepare)


# Files made from a finished merge (the card, the lineage record), added to its output.
ResultFiles = Callable[[MergeResult], Mapping[str, bytes]]


def open_trio(sources: dict[str, Source]) -> dict[str, Checkpoint]:
    """Open and validate the base, post and new base checkpoints (headers only)."""
    return {role: open_checkpoint(sources[role], role) for role in ROLES}


def preflight(sources: dict[str, Source], options: MergeOptions) -> MergePlan:
    """Everything that can fail before a weight byte is read: validation and compatibility."""
    trio = open_trio(sources)
    return plan_merge(
        trio["base"],
        trio["post"],
        trio["new_base"],
        alpha=options.alpha,
        dtype=options.dtype,
        vocab_policy=options.vocab_policy,
    )


def merge_to_dir(
    sources: dict[str, Source],
    out_dir: str | Path,
    options: MergeOptions = DEFAULT_OPTIONS,
    *,
    overwrite: bool = False,
    on_shard_written: ShardHook | None = None,
    plan: MergePlan | None = None,
    prepare: Prepare | None = None,
    result_files: ResultFiles | None = None,
) -> MergeResult:
    """Merge the checkpoints behind ``sources`` into ``out_dir`` (created atomically).

    ``prepare`` may swap sources once the plan is known (e.g. download Hub files);
    ``on_shard_written`` receives each finished shard (e.g. to upload it);
    ``result_files`` makes files from the result, written before the output appears
    (the result it gets has ``out_dir`` the staging directory, where the files are).
    """
    out_dir = Path(out_dir)
    check_output_dir(out_dir, overwrite)
    check_not_an_input(out_dir, (s.root for s in sources.values() if isinstance(s, LocalSource)))
    if plan is None:
        plan = preflight(sources, options)
    if prepare is not None:
        sources = prepare(plan, sources)
    shards = plan_shards(plan.items, options.shard_size)
    with OutputWriter(
        out_dir, shards, overwrite=overwrite, on_shard_written=on_shard_written
    ) as writer:
        stats = execute(
            plan,
            sources,
            writer,
            device=options.device,
            max_memory=options.max_memory,
            progress=options.progress,
        )
        files = {shard.filename: "merge" for shard in shards}
        if len(shards) > 1:
            files[INDEX] = "merge"
        for path, role in plan.files.items():
            source = sources[role]
            if path == CONFIG:
                writer.add_file(path, plan.config_bytes(source))
            else:
                writer.copy_file(path, source)
            files[path] = role
        # The staged output, complete but for the result's files: ``result_files`` may load
        # it as a model (the pre-publish check does), so a sharded one has its index.
        writer.write_index()
        staged = MergeResult(writer.tmp_dir, plan, shards, stats, files, sources)
        for path, data in (result_files(staged) if result_files else {}).items():
            writer.add_file(path, data)
            files[path] = RESULT_FILES
        writer.commit()
    return replace(staged, out_dir=writer.out_dir, files=dict(sorted(files.items())))
