"""The one way a merge is written and published: `merge`, `publish` and `run` all come here.

Whatever the command, the output holds the weights, the card (README.md, with
the inherited licence and its attribution), the lineage record (paramdelta.json)
with the delta report measured in the merge pass, and the delta chart the card
shows (paramdelta-delta.png); a publish commits all of them in one commit:

- `merge --output DIR` writes the card and record into DIR with the weights;
- `merge --push-to REPO` (and `run`, `paramdelta.pipeline.run_target`) drive the
  stages of `paramdelta.engine.stages` in a row: each finished shard is uploaded
  while the next is written (`upload_while_writing`), then the card and record
  are made (`result_files`) and everything is committed at once (see
  `paramdelta.hub.publisher`); without a local output the merge happens in a
  scratch directory and each shard is deleted once uploaded, so disk holds about
  one shard uploading and one being written (a scratch directory that a killed
  run left is removed by the next one); `run` checks the staged output before
  the card is made, keeping the shards until the commit, and a failing check
  commits nothing;
- `publish DIR --repo REPO` reads the record that `merge` wrote into DIR (the
  inputs are not opened again: the record names them), sets its output repo and
  renders the card again for that repo;
- `check DIR --record` puts its report into DIR's record and card (`record_check`),
  as `run` puts its pre-publish check's into what it commits.

A local output's record names each local input by its absolute path, so `check
DIR` finds them again; a record that leaves the machine (a repo is set) names
them by their folder's name only (`lineage.published`), and no card ever shows a
path.

A published record's output section names the content of every weight file of
the commit (`paramdelta.hub.content_ids`), so that `plan` can tell the record
from weights that someone else put beside it.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from paramdelta.engine.checkpoint import Source
from paramdelta.engine.files import CARD_FILE, has_tokenizer, no_tokenizer
from paramdelta.engine.merge_plan import MergePlan
from paramdelta.engine.recipe import Runtime
from paramdelta.engine.safetensors_format import INDEX
from paramdelta.engine.stages import MergeResult, Staged, stage
from paramdelta.engine.workdirs import OwnedDir, sweep
from paramdelta.engine.writer import index_json
from paramdelta.errors import UsageError, local_io
from paramdelta.hub import content_ids
from paramdelta.hub.client import default_endpoint
from paramdelta.hub.publisher import Publisher, PublishResult, weight_ids
from paramdelta.pipeline import lineage
from paramdelta.pipeline.check_rules import CheckReport
from paramdelta.rendering import chart
from paramdelta.rendering.card import checkpoint_name, render_card
from paramdelta.rendering.model_kind import architecture
from paramdelta.reporting import github_actions
from paramdelta.tokens import redact

log = logging.getLogger(__name__)

SCRATCH_PREFIX = "paramdelta-scratch-"


class CardSettings(NamedTuple):
    """What a watchlist target adds to the card and record (the CLI's merges add nothing)."""

    target: str | None = None
    tags: tuple[str, ...] = ()
    template: Path | None = None


NO_TARGET = CardSettings()


def plan_notes(plan: MergePlan) -> list[str]:
    """What the log says about a merge beyond its tensors: rows and files left out."""
    notes = []
    if plan.vocabulary is not None:
        notes.append(f"vocabulary: {plan.vocabulary.describe()}")
    if plan.skipped:
        notes.append("left out: " + ", ".join(f"{p} ({why})" for p, why in plan.skipped.items()))
    return notes


def merge_record(
    sources: Mapping[str, Source],
    plan: MergePlan,
    output_repo: str | None,
    settings: CardSettings,
    result: MergeResult | None = None,
    weights: Mapping[str, list[str]] | None = None,
    check: CheckReport | None = None,
    directory: Path | None = None,
) -> dict[str, Any]:
    """The lineage record of a merge (``result`` None: planned, not yet computed).

    ``weights``: the content ids of each weight file committed with the record;
    ``check``: what the pre-publish check found (or why it did not run);
    ``directory``: the local output folder (the card names it while no repo is set).
    """
    # What the card's pipeline tag and Use snippet follow (`paramdelta.rendering.model_kind`).
    output: dict[str, Any] = {"repo": output_repo, "architecture": architecture(plan.config)}
    if directory is not None:
        output["directory"] = directory.absolute().name
    if result is not None:
        output |= {
            "tensors": result.stats.tensors,
            "bytes": result.stats.bytes,
            "shards": [s.filename for s in result.shards],
        }
    if weights is not None:
        output["files"] = dict(sorted(weights.items()))
    record = lineage.build_record(
        target=settings.target,
        checkpoints={
            role: lineage.source_entry(role, source.provenance, plan.read.get(role, []))
            for role, source in sources.items()
        },
        recipe=plan.recipe,
        files=plan.files,
        written_dtype=plan.written_dtype,
        skipped=plan.skipped,
        config_changes=plan.config_changes,
        vocabulary=plan.vocabulary.to_dict() if plan.vocabulary else None,
        adapter=plan.adapter,
        output=output,
        ci_run_url=github_actions.run_url(),
    )
    if result is not None:
        record["delta"] = result.stats.delta.summary()
    if check is not None:
        record["check"] = check.to_dict()
    warn_without_tokenizer(record)
    return record


def warn_without_tokenizer(record: Mapping[str, Any]) -> None:
    """One line when the output cannot be used with AutoTokenizer (`merge`, `publish`, `run`)."""
    if not has_tokenizer(record["recipe"]["file_donors"]):
        post = next(c for c in record["checkpoints"] if c["role"] == "post")
        log.warning(f"{no_tokenizer(checkpoint_name(post))}; AutoTokenizer cannot load it")


def card_and_record(
    record: Mapping[str, Any], settings: CardSettings, hub_url: str
) -> dict[str, bytes]:
    """README.md and paramdelta.json for a record: the files every publish commits.

    Both are redacted: no token the bot holds reaches a file it writes or commits. A
    record for a repo names local inputs by their folder's name only.
    """
    if record["output"].get("repo") is not None:
        record = lineage.published(record)
    card = render_card(record, template=settings.template, tags=settings.tags, hub_url=hub_url)
    files = {CARD_FILE: card.encode(), lineage.FILENAME: lineage.encode(record)}
    return {path: redact(data.decode()).encode() for path, data in files.items()}


def output_ids(result: MergeResult, uploaded: Mapping[str, list[str]]) -> dict[str, list[str]]:
    """The content ids of each weight file a merge commits: each shard's from its upload,
    the index's from the bytes the writer writes."""
    ids = {shard.filename: uploaded[shard.filename] for shard in result.shards}
    if INDEX in result.files:
        ids[INDEX] = content_ids.of_bytes(index_json(result.shards), INDEX)
    return ids


def result_files(
    result: MergeResult,
    settings: CardSettings = NO_TARGET,
    *,
    publisher: Publisher | None = None,
    check: CheckReport | None = None,
    directory: Path | None = None,
    shard_ids: Mapping[str, list[str]] | None = None,
) -> dict[str, bytes]:
    """The card, the record and the delta chart of a staged merge (for ``publisher``'s
    repo, naming the shards it uploaded, or ``shard_ids``: the content ids of shards
    uploaded elsewhere; without one, for the local folder ``directory``)."""
    if publisher is None:
        output_repo, weights, hub_url = None, None, default_endpoint()
    else:
        output_repo, hub_url = publisher.repo_id, publisher.hub.endpoint
        uploaded = publisher.uploaded_ids() if shard_ids is None else shard_ids
        weights = output_ids(result, uploaded)
    record = merge_record(
        result.sources, result.plan, output_repo, settings, result, weights, check, directory
    )
    # The chart the card shows: made with the weights, so `publish DIR` commits DIR's own.
    chart_png = {chart.FILENAME: chart.delta_chart(record)}
    return card_and_record(record, settings, hub_url) | chart_png


def merge_to_directory(
    plan: MergePlan,
    sources: dict[str, Source],
    out_dir: Path,
    runtime: Runtime,
    *,
    overwrite: bool = False,
) -> MergeResult:
    """`merge --output` alone: weights, card and record in ``out_dir``, ready for `publish`."""
    with stage(plan, sources, out_dir, runtime, overwrite=overwrite) as staged:
        staged.write_all()
        staged.add_files(result_files(staged.result(), directory=out_dir))
        return staged.finish()


def upload_while_writing(staged: Staged, publisher: Publisher, *, keep: bool) -> None:
    """Merge, uploading each shard while the next one is written; ``keep``: leave each on
    disk (a local output, or the pre-publish check to come), else delete it once sent."""
    for shard in staged.write():
        publisher.upload_shard(shard, delete=not keep)


def push_merge(
    plan: MergePlan,
    sources: dict[str, Source],
    publisher: Publisher,
    runtime: Runtime,
    *,
    out_dir: Path | None = None,
    overwrite: bool = False,
) -> tuple[MergeResult, PublishResult]:
    """`merge --push-to`: upload each shard as written, then commit weights, card and record.

    ``out_dir`` keeps a local copy of the output (card and record included).
    """
    with scratch_dir() as scratch, publisher:
        target = out_dir or scratch / "merged"
        with stage(plan, sources, target, runtime, overwrite=overwrite) as staged:
            upload_while_writing(staged, publisher, keep=out_dir is not None)
            staged.add_files(result_files(staged.result(), publisher=publisher))
            merged = staged.finish()
        return merged, publisher.commit(merged.out_dir)


@contextmanager
def scratch_dir() -> Iterator[Path]:
    """A scratch directory in the temp dir, removed after; a killed run's are swept first."""
    parent = Path(tempfile.gettempdir())
    sweep(parent, SCRATCH_PREFIX)
    work = OwnedDir(parent, SCRATCH_PREFIX)
    try:
        yield work.path
    finally:
        shutil.rmtree(work.path, ignore_errors=True)
        work.release()


def read_record(directory: Path) -> dict[str, Any]:
    """The record `merge --output` wrote into ``directory``, checked against what is there."""
    path = directory / lineage.FILENAME
    if not path.is_file():
        raise UsageError(
            f"{directory}: no {lineage.FILENAME}; `publish` takes a directory written by"
            " `paramdelta merge --output`, which records the merge's lineage there"
        )
    record = lineage.read_local(path)
    output = record.get("output") if record else None
    if record is None or not isinstance(output, dict):
        raise UsageError(f"{path}: not a lineage record this version of paramdelta reads")
    for shard in output.get("shards") or []:
        if not (directory / str(shard)).is_file():
            raise UsageError(f"{path}: names the shard {shard}, which {directory} does not have")
    return record


def directory_files(directory: Path, repo_id: str, hub_url: str) -> dict[str, bytes]:
    """The card and record a publish of ``directory`` to ``repo_id`` commits."""
    record = read_record(directory)
    record["output"]["repo"] = repo_id
    record["output"]["files"] = weight_ids(directory)
    warn_without_tokenizer(record)
    return card_and_record(record, CardSettings(target=record.get("target")), hub_url)


def record_check(directory: Path, check: CheckReport) -> None:
    """`check DIR --record`: the check into DIR's record and card, as `run` commits its
    pre-publish check's, so that `publish DIR` ships a card that says the model was checked."""
    record = read_record(directory)
    record["check"] = check.to_dict()
    if record["output"].get("repo") is None:  # the folder may have been renamed since
        record["output"]["directory"] = directory.absolute().name
    files = card_and_record(record, CardSettings(target=record.get("target")), default_endpoint())
    for name, data in files.items():
        path = directory / name
        tmp = path.with_name(f".{name}.tmp")
        with local_io(path):  # each file whole: a reader sees the old one or the new one
            tmp.write_bytes(data)
            tmp.replace(path)


def publish_directory(publisher: Publisher, directory: Path) -> PublishResult:
    """Commit a merged directory, its card rendered for the repo, in one commit."""
    files = directory_files(directory, publisher.repo_id, publisher.hub.endpoint)
    with publisher:
        return publisher.commit(directory, files)
