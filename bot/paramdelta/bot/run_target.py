"""`run` for one target: merge a pending plan and publish weights, card and lineage in one commit.

A failing target becomes a failed `TargetResult` (with its error's exit code)
and never stops the others.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from paramdelta.bot.plan import TargetPlan
from paramdelta.bot.publish import (
    CardSettings,
    card_and_record,
    merge_and_publish,
    merge_record,
    plan_notes,
)
from paramdelta.bot.results import Status, TargetResult
from paramdelta.engine.checkpoint import Source
from paramdelta.engine.files import CARD_FILE
from paramdelta.engine.layout import MergePlan, VocabularyError
from paramdelta.engine.merge import preflight
from paramdelta.engine.options import DEFAULT_MAX_MEMORY, MergeOptions
from paramdelta.errors import ParamDeltaError
from paramdelta.hub.client import Hub
from paramdelta.hub.publisher import Publisher, PublishResult
from paramdelta.hub.sources import HubSource, download_inputs

VOCAB_FIX = "set `vocab_policy: shared` on the target in the watchlist"


class RunOptions(NamedTuple):
    device: str = "auto"
    max_memory: int = DEFAULT_MAX_MEMORY
    stream: bool = False
    dry_run: bool = False
    progress: bool = True
    workdir: Path | None = None  # where dry runs leave their card
    log: Callable[[str], None] | None = None  # what each merge does with rows and files


def merge_options(plan: TargetPlan, options: RunOptions) -> MergeOptions:
    target = plan.target
    return MergeOptions(
        alpha=target.alpha,
        dtype=target.dtype,
        vocab_policy=target.vocab_policy,
        shard_size=target.shard_size,
        device=options.device,
        max_memory=options.max_memory,
        progress=options.progress,
    )


def commit_message(plan: TargetPlan) -> str:
    pins = plan.pins()
    new = pins["new_base"]
    return f"ParamΔ: {pins['post']['repo']} onto {new['repo']}@{new['sha'][:7]}"


def card_settings(plan: TargetPlan) -> CardSettings:
    target = plan.target
    return CardSettings(target=target.name, tags=target.tags, template=target.card_template)


def run_target(hub: Hub, plan: TargetPlan, options: RunOptions) -> TargetResult:
    """Merge and publish one planned target; never raises a ParamDeltaError."""
    started = time.perf_counter()

    def result(status: Status, **fields: object) -> TargetResult:
        return plan.result(status, seconds=time.perf_counter() - started, **fields)

    if plan.error is not None:
        return result("failed", error=str(plan.error), exit_code=plan.error.exit_code)
    if not plan.pending:
        return result("up-to-date")
    try:
        sources: dict[str, Source] = {
            role: HubSource(hub, files) for role, files in plan.checkpoints.items()
        }
        merge_opts = merge_options(plan, options)
        merge_plan = preflight(sources, merge_opts)
        if options.log is not None:
            for note in plan_notes(merge_plan):
                options.log(f"{plan.target.name}: {note}")
        if options.dry_run:
            return result("dry-run", url=dry_run_card(hub, plan, sources, merge_plan, options))
        published = publish_merge(hub, plan, sources, merge_plan, merge_opts, options)
    except VocabularyError as e:  # the fix is the watchlist's, not a flag `run` does not take
        error = e.with_fix(VOCAB_FIX)
        return result("failed", error=str(error), exit_code=error.exit_code)
    except ParamDeltaError as e:
        return result("failed", error=str(e), exit_code=e.exit_code)
    return result("pr-opened" if published.pr_url else "published", url=published.url)


def dry_run_card(
    hub: Hub,
    plan: TargetPlan,
    sources: dict[str, Source],
    merge_plan: MergePlan,
    options: RunOptions,
) -> str:
    """Render the card a merge would publish, from the planned record; its file URL."""
    settings = card_settings(plan)
    record = merge_record(sources, merge_plan, plan.output_repo, settings)
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="paramdelta-dry-run-"))
    card_path = workdir / plan.target.name / CARD_FILE
    card_path.parent.mkdir(parents=True, exist_ok=True)
    card_path.write_bytes(card_and_record(record, settings, hub.endpoint)[CARD_FILE])
    return card_path.as_uri()


def publish_merge(
    hub: Hub,
    plan: TargetPlan,
    sources: dict[str, Source],
    merge_plan: MergePlan,
    merge_opts: MergeOptions,
    options: RunOptions,
) -> PublishResult:
    """Merge, uploading each shard as written; weights, card and lineage in one commit."""
    assert plan.output_repo is not None
    publisher = Publisher(
        hub,
        plan.output_repo,
        message=commit_message(plan),
        description=f"Made by paramdelta-bot for target `{plan.target.name}`.",
        private=plan.target.private,
        create_pr=plan.target.publish == "pr",
    )
    _, published = merge_and_publish(
        publisher,
        sources,
        merge_opts,
        plan=merge_plan,
        settings=card_settings(plan),
        prepare=None if options.stream else download_inputs,
    )
    return published
