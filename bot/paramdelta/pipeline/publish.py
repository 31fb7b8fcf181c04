"""The one way a merge is written and published: `merge`, `publish` and `run` all come here.

Whatever the command, the output holds the weights, the card (README.md, with
the inherited licence and its attribution), the lineage record (paramdelta.json)
with the delta report measured in the merge pass, and the delta chart the card
shows (paramdelta-delta.png); a publish commits all of them in one commit:

- `merge --output DIR` writes the card and record into DIR with the weights;
- `merge --push-to REPO` (and `run`) merge while uploading each finished shard,
  then commit everything at once (see `paramdelta.hub.publisher`); without a
  local output the merge happens in a scratch directory and each shard is
  deleted once uploaded, so disk holds about one shard uploading and one being
  written (a scratch directory that a killed run left is removed by the next
  one); `run` first checks the staged output (`paramdelta.pipeline.check`), keeping
  the shards until the commit, and a failing check commits nothing;
- `publish DIR --repo REPO` reads the record that `merge` wrote into DIR (the
  inputs are not opened again: the record names them), sets its output repo and
  renders the card again for that repo.

A published record's output section names the content of every weight file of
the commit (`paramdelta.hub.content_ids`), so that `plan` can tell the record
from weights that someone else put beside it.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from huggingface_hub import metadata_load

from paramdelta.engine.checkpoint import LocalSource, Source
from paramdelta.engine.files import CARD_FILE
from paramdelta.engine.merge import MergeResult, Prepare, merge_to_dir
from paramdelta.engine.merge_plan import MergePlan
from paramdelta.engine.options import MergeOptions
from paramdelta.engine.safetensors_format import INDEX
from paramdelta.engine.workdirs import OwnedDir, sweep
from paramdelta.engine.writer import index_json
from paramdelta.errors import UsageError
from paramdelta.hub import content_ids
from paramdelta.hub.client import default_endpoint
from paramdelta.hub.publisher import Publisher, PublishResult, weight_ids
from paramdelta.hub.sources import HubSource
from paramdelta.pipeline import lineage
from paramdelta.pipeline.check_rules import CheckReport
from paramdelta.rendering import chart
from paramdelta.rendering.card import render_card
from paramdelta.reporting import github_actions
from paramdelta.tokens import redact

SCRATCH_PREFIX = "paramdelta-scratch-"
# The pre-publish check of a merged (staged) output; raises CheckError when it fails.
Check = Callable[[MergeResult], CheckReport]


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


def provenance(sources: Mapping[str, Source], plan: MergePlan) -> dict[str, dict[str, Any]]:
    """role -> its lineage entry: the commit and content ids of a Hub repo, or a local path."""
    entries = {}
    for role, source in sources.items():
        if isinstance(source, HubSource):
            entries[role] = lineage.hub_entry(role, source.repo, plan.read.get(role, []))
        else:
            entries[role] = lineage.checkpoint_entry(
                role, None, None, None, path=source.label, card_data=_local_card_data(source)
            )
    return entries


def _local_card_data(source: Source) -> dict[str, Any]:
    """A local checkpoint's README front matter (for its licence); {} if none or unreadable."""
    if not isinstance(source, LocalSource) or CARD_FILE not in source.list_files():
        return {}
    try:
        return metadata_load(source.root / CARD_FILE) or {}
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError):
        return {}


def merge_record(
    sources: Mapping[str, Source],
    plan: MergePlan,
    output_repo: str | None,
    settings: CardSettings,
    result: MergeResult | None = None,
    weights: Mapping[str, list[str]] | None = None,
    check: CheckReport | None = None,
) -> dict[str, Any]:
    """The lineage record of a merge (``result`` None: planned, not yet computed).

    ``weights``: the content ids of each weight file committed with the record;
    ``check``: what the pre-publish check found (or why it did not run).
    """
    output: dict[str, Any] = {"repo": output_repo}
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
        checkpoints=provenance(sources, plan),
        recipe={"alpha": plan.alpha, "dtype": plan.dtype, "vocab_policy": plan.vocab_policy},
        files=plan.files,
        written_dtype=plan.written_dtype,
        skipped=plan.skipped,
        config_changes=plan.config_changes,
        vocabulary=plan.vocabulary.to_dict() if plan.vocabulary else None,
        output=output,
        ci_run_url=github_actions.run_url(),
    )
    if result is not None:
        record["delta"] = result.stats.delta.summary()
    if check is not None:
        record["check"] = check.to_dict()
    return record


def card_and_record(
    record: Mapping[str, Any], settings: CardSettings, hub_url: str
) -> dict[str, bytes]:
    """README.md and paramdelta.json for a record: the files every publish commits.

    Both are redacted: no token the bot holds reaches a file it writes or commits.
    """
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


def _result_files(
    sources: Mapping[str, Source],
    plan: MergePlan,
    output_repo: str | None,
    settings: CardSettings,
    hub_url: str,
    result: MergeResult,
    *,
    publisher: Publisher | None = None,
    check: Check | None = None,
) -> dict[str, bytes]:
    report = check(result) if check is not None else None
    weights = output_ids(result, publisher.uploaded_ids()) if publisher is not None else None
    record = merge_record(sources, plan, output_repo, settings, result, weights, report)
    # The chart the card shows: made with the weights, so `publish DIR` commits DIR's own.
    chart_png = {chart.FILENAME: chart.delta_chart(record["delta"]["layers"])}
    return card_and_record(record, settings, hub_url) | chart_png


def merge_to_directory(
    sources: dict[str, Source],
    out_dir: Path,
    options: MergeOptions,
    *,
    plan: MergePlan,
    overwrite: bool = False,
    prepare: Prepare | None = None,
) -> MergeResult:
    """`merge --output` alone: weights, card and record in ``out_dir``, ready for `publish`."""
    return merge_to_dir(
        sources,
        out_dir,
        options,
        overwrite=overwrite,
        plan=plan,
        prepare=prepare,
        result_files=functools.partial(
            _result_files, sources, plan, None, NO_TARGET, default_endpoint()
        ),
    )


def merge_and_publish(
    publisher: Publisher,
    sources: dict[str, Source],
    options: MergeOptions,
    *,
    plan: MergePlan,
    settings: CardSettings = NO_TARGET,
    out_dir: Path | None = None,
    overwrite: bool = False,
    prepare: Prepare | None = None,
    already_published: Callable[[], PublishResult | None] | None = None,
    check: Check | None = None,
    keep_shards: bool = False,
) -> tuple[MergeResult, PublishResult]:
    """Merge while uploading each finished shard; then one commit with weights, card and record.

    ``out_dir`` keeps a local copy of the output (card and record included).
    ``already_published``, asked right before the commit, may say that the same
    merge was published meanwhile (an open pull request): then nothing is committed.
    ``check`` (the pre-publish check) reports on the staged output before the card
    is made, and may raise to stop the merge and the commit; ``keep_shards`` keeps
    the scratch copy until the commit (the check loads it: disk then holds the model).
    """
    result_files = functools.partial(
        _result_files,
        sources,
        plan,
        publisher.repo_id,
        settings,
        publisher.hub.endpoint,
        publisher=publisher,
        check=check,
    )
    with scratch_dir() as scratch, publisher:
        merged = merge_to_dir(
            sources,
            out_dir or scratch / "merged",
            options,
            overwrite=overwrite,
            plan=plan,
            prepare=prepare,
            on_shard_written=functools.partial(
                publisher.upload_shard, delete=out_dir is None and not keep_shards
            ),
            result_files=result_files,
        )
        done = already_published() if already_published is not None else None
        published = done or publisher.finish(merged.out_dir)
    return merged, published


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
    return card_and_record(record, CardSettings(target=record.get("target")), hub_url)


def publish_directory(publisher: Publisher, directory: Path) -> PublishResult:
    """Commit a merged directory, its card rendered for the repo, in one commit."""
    files = directory_files(directory, publisher.repo_id, publisher.hub.endpoint)
    with publisher:
        return publisher.finish(directory, files)
