"""The one way a merge is written and published: `merge`, `publish` and `run` all come here.

Whatever the command, the output holds the weights, the card (README.md, with
the inherited licence and its attribution) and the lineage record
(paramdelta.json), and a publish commits all of them in one commit:

- `merge --output DIR` writes the card and record into DIR with the weights;
- `merge --push-to REPO` (and `run`) merge while uploading each finished shard,
  then commit everything at once (see `paramdelta.hub.publisher`); without a
  local output the merge happens in a scratch directory and each shard is
  deleted once uploaded, so disk holds about one shard uploading and one being
  written;
- `publish DIR --repo REPO` reads the record that `merge` wrote into DIR (the
  inputs are not opened again: the record names them), sets its output repo and
  renders the card again for that repo.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from huggingface_hub import metadata_load

from paramdelta.bot import github_actions, lineage
from paramdelta.bot.card import render_card
from paramdelta.engine.checkpoint import LocalSource, Source
from paramdelta.engine.files import CARD_FILE
from paramdelta.engine.layout import MergePlan
from paramdelta.engine.merge import MergeResult, Prepare, merge_to_dir
from paramdelta.engine.options import MergeOptions
from paramdelta.errors import UsageError
from paramdelta.hub.client import default_endpoint
from paramdelta.hub.publisher import Publisher, PublishResult
from paramdelta.hub.sources import HubSource


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
) -> dict[str, Any]:
    """The lineage record of a merge (``result`` None: planned, not yet computed)."""
    output: dict[str, Any] = {"repo": output_repo}
    if result is not None:
        output |= {
            "tensors": result.stats.tensors,
            "bytes": result.stats.bytes,
            "shards": [s.filename for s in result.shards],
        }
    return lineage.build_record(
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


def card_and_record(
    record: Mapping[str, Any], settings: CardSettings, hub_url: str
) -> dict[str, bytes]:
    """README.md and paramdelta.json for a record: the files every publish commits."""
    card = render_card(record, template=settings.template, tags=settings.tags, hub_url=hub_url)
    return {CARD_FILE: card.encode(), lineage.FILENAME: lineage.encode(record)}


def _result_files(
    sources: Mapping[str, Source],
    plan: MergePlan,
    output_repo: str | None,
    settings: CardSettings,
    hub_url: str,
    result: MergeResult,
) -> dict[str, bytes]:
    record = merge_record(sources, plan, output_repo, settings, result)
    return card_and_record(record, settings, hub_url)


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
) -> tuple[MergeResult, PublishResult]:
    """Merge while uploading each finished shard; then one commit with weights, card and record.

    ``out_dir`` keeps a local copy of the output (card and record included).
    """
    result_files = functools.partial(
        _result_files, sources, plan, publisher.repo_id, settings, publisher.hub.endpoint
    )
    with tempfile.TemporaryDirectory(prefix="paramdelta-") as scratch, publisher:
        merged = merge_to_dir(
            sources,
            out_dir or Path(scratch) / "merged",
            options,
            overwrite=overwrite,
            plan=plan,
            prepare=prepare,
            on_shard_written=functools.partial(publisher.upload_shard, delete=out_dir is None),
            result_files=result_files,
        )
        published = publisher.finish(merged.out_dir)
    return merged, published


def read_record(directory: Path) -> dict[str, Any]:
    """The record `merge --output` wrote into ``directory``, checked against what is there."""
    path = directory / lineage.FILENAME
    if not path.is_file():
        raise UsageError(
            f"{directory}: no {lineage.FILENAME}; `publish` takes a directory written by"
            " `paramdelta merge --output`, which records the merge's lineage there"
        )
    record = lineage.decode(path.read_bytes())
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
    return card_and_record(record, CardSettings(target=record.get("target")), hub_url)


def publish_directory(publisher: Publisher, directory: Path) -> PublishResult:
    """Commit a merged directory, its card rendered for the repo, in one commit."""
    files = directory_files(directory, publisher.repo_id, publisher.hub.endpoint)
    with publisher:
        return publisher.finish(directory, files)
