"""A merge in stages that the caller drives in straight-line code.

    plan = preflight(sources, recipe)             # headers only: every check, no weight byte
    with stage(plan, sources, out_dir, runtime) as staged:
        for shard in staged.write():              # each shard as soon as its file is complete
            publisher.upload_shard(shard)         #   (e.g. uploaded while the next is written)
        report = check(staged.directory)          # the complete output, not yet in place
        staged.add_files(card_and_record(...))    # files made from the result
        result = staged.finish()                  # renamed into place, atomically

Each stage is one function or method, testable alone. Leaving the ``with``
block early (an error, Ctrl-C, a failed check) stops the workers and removes
everything staged: an output that looks finished exists only after `finish`.
The engine knows nothing of the Hub beyond the `Source` objects it is given.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from paramdelta.engine.adapter import open_post
from paramdelta.engine.checkpoint import Checkpoint, Source, open_checkpoint
from paramdelta.engine.files import RESULT_FILES
from paramdelta.engine.gc_pause import gc_paused
from paramdelta.engine.merge_plan import CONFIG, Delta, MergePlan, plan_deltas
from paramdelta.engine.recipe import Recipe, Runtime
from paramdelta.engine.roles import delta_roles, merge_roles
from paramdelta.engine.safetensors_format import INDEX
from paramdelta.engine.workers import Execution, MergeStats
from paramdelta.engine.writer import (
    OutputWriter,
    ShardPlan,
    WrittenShard,
    check_not_an_input,
    check_output_dir,
    plan_shards,
)


@dataclass
class MergeResult:
    out_dir: Path
    plan: MergePlan
    shards: list[ShardPlan]
    stats: MergeStats
    files: dict[str, str]  # every output file -> where it came from ("merge", a role, "result")
    sources: dict[str, Source]  # what was read


def open_checkpoints(sources: Mapping[str, Source], deltas: int = 1) -> dict[str, Checkpoint]:
    """Open and validate every checkpoint of a merge of ``deltas`` deltas (headers only).

    A post that is a PEFT adapter is opened against its own delta's base
    (`paramdelta.engine.adapter`).
    """
    roles = merge_roles(deltas)
    if set(sources) != set(roles):
        raise ValueError(f"a merge of {deltas} deltas reads {roles}, not {tuple(sources)}")
    opened = {}
    for post, base in map(delta_roles, range(deltas)):  # in `merge_roles` order
        opened[base] = open_checkpoint(sources[base], base)
        opened[post] = open_post(sources[post], opened[base], post)
    opened["new_base"] = open_checkpoint(sources["new_base"], "new_base")
    return opened


def preflight(sources: Mapping[str, Source], recipe: Recipe) -> MergePlan:
    """Everything that can fail before a weight byte is read: validation and compatibility.

    ``sources``: one per role of `merge_roles` (the new base, each delta's post and base).
    """
    weights = recipe.delta_weights
    with gc_paused():  # full collections would walk the whole plan as it grows (a MoE's 95k)
        opened = open_checkpoints(sources, len(weights))
        roles = map(delta_roles, range(len(weights)))
        deltas = [
            Delta(opened[post], opened[base], weight)
            for (post, base), weight in zip(roles, weights, strict=True)
        ]
        return plan_deltas(opened["new_base"], deltas, recipe)


def stage(
    plan: MergePlan,
    sources: dict[str, Source],
    out_dir: str | Path,
    runtime: Runtime = Runtime(),
    *,
    overwrite: bool = False,
    only: Sequence[int] | None = None,
) -> Staged:
    """A merge of ``plan`` into ``out_dir``, staged in a hidden directory beside it.

    ``only``: the indexes of the output shards to write, and nothing else (a fan-out
    leg's, `paramdelta.engine.legs`); the layout is still the whole merge's.
    """
    out_dir = Path(out_dir)
    check_output_dir(out_dir, overwrite)
    check_not_an_input(out_dir, (d for s in sources.values() if (d := s.directory) is not None))
    with gc_paused():
        shards = plan_shards(plan.items, plan.recipe.shard_size)
    writer = OutputWriter(out_dir, shards, overwrite=overwrite)
    return Staged(plan, sources, writer, runtime, only)


class Staged:
    """A merge being written into its staging directory; use it as a context manager.

    Leaving the context without `finish` (an error, Ctrl-C, a failed check, or no call
    at all) removes the staging directory: only a finished merge leaves an output.
    """

    def __init__(
        self,
        plan: MergePlan,
        sources: dict[str, Source],
        writer: OutputWriter,
        runtime: Runtime,
        only: Sequence[int] | None = None,
    ) -> None:
        self.plan, self.sources, self.runtime, self.only = plan, sources, runtime, only
        self.writer = writer
        self.shards = writer.shards
        self.files: dict[str, str] = {}
        self.stats: MergeStats | None = None
        self._finished = False
        self._writing: Generator[WrittenShard, None, None] | None = None

    def __enter__(self) -> Staged:
        self.writer.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._writing is not None:  # a caller that stopped taking shards: stop the workers
            self._writing.close()
        if not self._finished:  # failed, interrupted, or left unfinished: nothing stays
            self.writer.abort()

    @property
    def directory(self) -> Path:
        """The staging directory: the complete output once `write` is done, until `finish`."""
        return self.writer.tmp_dir

    def write(self) -> Iterator[WrittenShard]:
        """Merge, yielding each shard as soon as its file is complete, one at a time: the
        next shard is started only once the caller asks for it (disk holds ~two shards).
        After the last one, the files from the inputs and the index are written too
        (not for a stage of some shards only: those are the finish job's)."""
        self._writing = self._write(hand_over=True)
        return self._writing

    def write_all(self) -> None:
        """Merge every shard at once (nothing waits for a caller), then the other files."""
        with gc_paused():  # the plan's objects stay alive throughout: no collection walks them
            for _ in self._write(hand_over=False):
                pass

    def _write(self, *, hand_over: bool) -> Generator[WrittenShard, None, None]:
        execution = Execution(
            self.plan, self.sources, self.writer, self.runtime, hand_over=hand_over, only=self.only
        )
        for shard in execution.shards():
            yield WrittenShard(self.writer.shard_path(shard), self.shards[shard])
        assert execution.stats is not None
        if self.only is None:
            self.write_files(execution.stats)
        else:
            self.stats = execution.stats
            self.files = {self.shards[s].filename: "merge" for s in sorted(self.only)}

    def write_files(self, stats: MergeStats) -> None:
        """The files beside the weights: config, the donated files, the index; ``stats``: what
        the merge did. After `write`, or alone where the weights were merged elsewhere (the
        finish job of a fan-out, whose legs merged them)."""
        self.stats = stats
        files = {shard.filename: "merge" for shard in self.shards}
        if len(self.shards) > 1:
            files[INDEX] = "merge"
        for path, role in self.plan.files.items():
            source = self.sources[role]
            if path == CONFIG:
                self.writer.add_file(path, self.plan.config_bytes(source))
            else:
                self.writer.copy_file(path, source)
            files[path] = role
        # Complete but for the result's files: the pre-publish check may load it as a
        # model, so a sharded one has its index.
        self.writer.write_index()
        self.files = files

    def add_files(self, files: Mapping[str, bytes]) -> None:
        """Files made from the result (card, lineage record, chart), written beside it."""
        for path, data in files.items():
            self.writer.add_file(path, data)
            self.files[path] = RESULT_FILES

    def result(self) -> MergeResult:
        """What the merge did, its output still staged (``out_dir`` the staging directory)."""
        assert self.stats is not None, "write the merge first"
        return MergeResult(
            self.directory,
            self.plan,
            self.shards,
            self.stats,
            dict(sorted(self.files.items())),
            self.sources,
        )

    def finish(self) -> MergeResult:
        """Move the finished output into place (atomically); what the merge did."""
        result = self.result()
        result.out_dir = self.writer.commit()
        self._finished = True
        return result


def merge_to_dir(
    sources: dict[str, Source],
    out_dir: str | Path,
    recipe: Recipe = Recipe(),
    runtime: Runtime = Runtime(),
    *,
    overwrite: bool = False,
) -> MergeResult:
    """The weights alone, merged into ``out_dir``: every stage in a row, nothing added."""
    plan = preflight(sources, recipe)
    with stage(plan, sources, out_dir, runtime, overwrite=overwrite) as staged:
        staged.write_all()
        return staged.finish()
