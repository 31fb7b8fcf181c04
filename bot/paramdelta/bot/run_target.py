"""`run` for one target: merge a pending plan and publish weights, card and lineage in one commit.

A failing target becomes a failed `TargetResult` (with its error's exit code:
a full disk is 7, a bug 1) and never stops the others; only an interruption
(SIGINT, SIGTERM) ends the run.
"""

from __future__ import annotations

import os
import tempfile
import time
import traceback
from pathlib import Path
from typing import NamedTuple

from paramdelta.bot import github_actions, lineage
from paramdelta.bot.card import render_card
from paramdelta.bot.plan import TargetPlan, proposal_for
from paramdelta.bot.proposals import close_superseded
from paramdelta.bot.publish import merge_and_publish
from paramdelta.bot.results import Status, TargetResult
from paramdelta.engine.checkpoint import Source
from paramdelta.engine.layout import MergePlan
from paramdelta.engine.merge import MergeResult, preflight
from paramdelta.engine.options import DEFAULT_MAX_MEMORY, MergeOptions
from paramdelta.errors import Interrupted, ParamDeltaError, as_error
from paramdelta.hub.client import Hub
from paramdelta.hub.publisher import NEW_REPO, Publisher, PublishResult
from paramdelta.hub.sources import HubSource, download_inputs
from paramdelta.tokens import redact


class RunOptions(NamedTuple):
    device: str = "auto"
    max_memory: int = DEFAULT_MAX_MEMORY
    stream: bool = False
    dry_run: bool = False
    progress: bool = True
    workdir: Path | None = None  # where dry runs leave their card


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


def lineage_record(
    plan: TargetPlan,
    merge_plan: MergePlan,
    result: MergeResult | None,
    weights: dict[str, dict[str, str]] | None = None,
) -> dict[str, object]:
    """The lineage record; ``weights``: the content of each committed weight file."""
    output: dict[str, object] = {"repo": plan.output_repo}
    if result is not None:
        output |= {
            "tensors": result.stats.tensors,
            "bytes": result.stats.bytes,
            "shards": [s.filename for s in result.shards],
        }
    if weights is not None:
        output["files"] = weights
    return lineage.build_record(
        target=plan.target.name,
        checkpoints=plan.pins(),
        recipe=plan.target.recipe(),
        files=merge_plan.files,
        output=output,
        ci_run_url=github_actions.run_url(),
    )


def card_for(hub: Hub, plan: TargetPlan, record: dict[str, object]) -> str:
    return render_card(
        record,
        card_data={role: files.card_data for role, files in plan.checkpoints.items()},
        template=plan.target.card_template,
        tags=plan.target.tags,
        hub_url=hub.endpoint,
    )


def run_target(hub: Hub, plan: TargetPlan, options: RunOptions) -> TargetResult:
    """Merge and publish one planned target; raises nothing but an interruption."""
    started = time.perf_counter()

    def result(status: Status, **fields: object) -> TargetResult:
        return plan.result(status, seconds=time.perf_counter() - started, **fields)

    if plan.error is not None:
        return result("failed", error=str(plan.error), exit_code=plan.error.exit_code)
    if plan.status == "in-review":
        return result("in-review", url=plan.review_url)
    if not plan.pending:
        return result("up-to-date")
    try:
        sources: dict[str, Source] = {
            role: HubSource(hub, files) for role, files in plan.checkpoints.items()
        }
        merge_opts = merge_options(plan, options)
        merge_plan = preflight(sources, merge_opts)
        if options.dry_run:
            workdir = options.workdir or Path(tempfile.mkdtemp(prefix="paramdelta-dry-run-"))
            card_path = workdir / plan.target.name / "README.md"
            card_path.parent.mkdir(parents=True, exist_ok=True)
            card = card_for(hub, plan, lineage_record(plan, merge_plan, None))
            card_path.write_text(redact(card))
            return result("dry-run", url=card_path.as_uri())
        published = publish_merge(hub, plan, sources, merge_plan, merge_opts, options)
    except Exception as e:  # whatever it is, it is this target's failure, not the run's
        if os.environ.get("PARAMDELTA_DEBUG"):
            traceback.print_exc()
        error = as_error(e)
        return result("failed", error=str(error), exit_code=error.exit_code)
    if published.in_review:
        return result("in-review", url=published.url)
    return result("pr-opened" if published.pr_url else "published", url=published.url)


def not_run(
    name: str, plan: TargetPlan | None, error: ParamDeltaError | Interrupted
) -> TargetResult:
    """The result of a target that ``error`` kept from running or from finishing."""
    if plan is None:  # the watchlist or the plan itself failed
        return TargetResult(
            target=name,
            status="failed",
            error=str(error),
            exit_code=error.exit_code,
            duration_s=0.0,
        )
    return plan.result("failed", error=str(error), exit_code=error.exit_code)


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
        parent=plan.output_head or NEW_REPO,  # what the plan saw, not what is there hours later
    )

    def card_and_lineage(merged: MergeResult) -> dict[str, bytes]:
        record = lineage_record(plan, merge_plan, merged, publisher.weight_ids(merged.out_dir))
        return {
            "README.md": card_for(hub, plan, record).encode(),
            lineage.FILENAME: lineage.encode(record),
        }

    def already_proposed() -> PublishResult | None:
        """Right before opening a pull request: is the same merge in one of ours by now?"""
        if not publisher.create_pr or (proposal := proposal_for(hub, plan)) is None:
            return None
        url = proposal.url(hub, publisher.repo_id)
        return PublishResult(publisher.repo_id, "main", [], pr_url=url, in_review=True)

    _, published = merge_and_publish(
        publisher,
        sources,
        merge_opts,
        plan=merge_plan,
        prepare=None if options.stream else download_inputs,
        extra_files=card_and_lineage,
        already_published=already_proposed,
    )
    if published.pr_number is not None:
        close_superseded(hub, publisher.repo_id, plan.target.name, published)
    return published
