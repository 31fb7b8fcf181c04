"""`run` for one target: merge a pending plan and publish weights, card and lineage in one commit.

Before the commit, the pre-publish check (paramdelta.pipeline.check) loads and uses
the merged model; a failing check blocks the publish. A failing target becomes
a failed (or check-failed) `TargetResult` with its error's exit code (a full
disk is 7, a bug 1) and never stops the others; only an interruption (SIGINT,
SIGTERM) ends the run.
"""

from __future__ import annotations

import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from paramdelta.engine.checkpoint import Source
from paramdelta.engine.files import CARD_FILE
from paramdelta.engine.merge import MergeResult, preflight
from paramdelta.engine.merge_plan import MergePlan, VocabularyError
from paramdelta.engine.options import DEFAULT_MAX_MEMORY, MergeOptions
from paramdelta.errors import DEBUG, CheckError, Interrupted, ParamDeltaError, as_error
from paramdelta.hub.client import Hub
from paramdelta.hub.publisher import NEW_REPO, Publisher, PublishResult
from paramdelta.hub.sources import HubSource, download_inputs
from paramdelta.pipeline import check as pre_publish
from paramdelta.pipeline.check_rules import REFERENCES, CheckReport, model_bytes
from paramdelta.pipeline.plan import TargetPlan, proposal_for
from paramdelta.pipeline.proposals import close_superseded
from paramdelta.pipeline.publish import (
    CardSettings,
    card_and_record,
    merge_and_publish,
    merge_record,
    plan_notes,
)
from paramdelta.reporting.results import Status, TargetResult

VOCAB_FIX = "set `vocab_policy: shared` on the target in the watchlist"


class RunOptions(NamedTuple):
    device: str = "auto"
    max_memory: int = DEFAULT_MAX_MEMORY
    stream: bool = False
    dry_run: bool = False
    progress: bool = True
    workdir: Path | None = None  # where dry runs leave their card
    log: Callable[[str], None] | None = None  # what each merge does with rows and files
    check: str | None = None  # --check auto|on|off; None: each target's own (watchlist `check`)


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
        if options.log is not None:
            for note in plan_notes(merge_plan):
                options.log(f"{plan.target.name}: {note}")
        # Decided before merging: with `check: on`, a check that cannot run fails now.
        mode = options.check or plan.target.check
        skipped = pre_publish.decide(mode, model_bytes(merge_plan), options.device)
        if options.dry_run:
            return result("dry-run", url=dry_run_card(hub, plan, sources, merge_plan, options))
        published, check = publish_merge(
            hub, plan, sources, merge_plan, merge_opts, options, skipped
        )
    except CheckError as e:
        return result("check-failed", error=str(e), exit_code=e.exit_code, check=e.details)
    except VocabularyError as e:  # the fix is the watchlist's, not a flag `run` does not take
        fixed = e.with_fix(VOCAB_FIX)
        return result("failed", error=str(fixed), exit_code=fixed.exit_code)
    except Exception as e:  # whatever it is, it is this target's failure, not the run's
        if DEBUG:
            traceback.print_exc()
        error = as_error(e)
        return result("failed", error=str(error), exit_code=error.exit_code)
    if published.in_review:
        return result("in-review", url=published.url, check=check.to_dict())
    status: Status = "pr-opened" if published.pr_url else "published"
    return result(status, url=published.url, check=check.to_dict())


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


def dry_run_card(
    hub: Hub,
    plan: TargetPlan,
    sources: dict[str, Source],
    merge_plan: MergePlan,
    options: RunOptions,
) -> str:
    """Render the card a merge would publish, from the planned record; its file URL."""
    settings = card_settings(plan)
    record = merge_record(
        sources,
        merge_plan,
        plan.output_repo,
        settings,
        check=CheckReport.not_checked("dry run, nothing was merged"),
    )
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
    skipped: str | None = None,
) -> tuple[PublishResult, CheckReport]:
    """Merge, uploading each shard as written; check; weights, card and lineage in one commit.

    ``skipped`` is why the pre-publish check does not run (None: it runs, on the
    merged files kept on disk until the commit; a failure raises CheckError and
    nothing is committed).
    """
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

    checks: list[CheckReport] = []

    def check_merge(merged: MergeResult) -> CheckReport:
        """The pre-publish check of the staged output (or why it does not run)."""
        if skipped is None:
            check = pre_publish.run_check(
                merged.out_dir,
                {role: merged.sources[role] for role in REFERENCES},
                device=options.device,
                perplexity_factor=plan.target.perplexity_factor,
            )
            if check.failed:
                raise check.error()
        else:
            check = CheckReport.not_checked(skipped)
        checks.append(check)
        return check

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
        settings=card_settings(plan),
        prepare=None if options.stream else download_inputs,
        already_published=already_proposed,
        check=check_merge,
        keep_shards=skipped is None,
    )
    if published.pr_number is not None:
        close_superseded(hub, publisher.repo_id, plan.target.name, published)
    return published, checks[0]  # the merge ran the check (or said why not)
