"""`run` for one target: merge a pending plan and publish weights, card and lineage in one commit.

Before the commit, the pre-publish check (paramdelta.pipeline.check) loads and uses
the merged model; a failing check blocks the publish. A failing target becomes
a failed (or check-failed) `TargetResult` with its error's exit code (a full
disk is 7, a bug 1; `failure` is the one place an exception becomes a result)
and never stops the others; only an interruption (SIGINT, SIGTERM) ends the run.
"""

from __future__ import annotations

import logging
import tempfile
import time
import traceback
from pathlib import Path
from typing import NamedTuple

from paramdelta.engine.checkpoint import Source
from paramdelta.engine.files import CARD_FILE
from paramdelta.engine.merge_plan import MergePlan, VocabularyError
from paramdelta.engine.recipe import Runtime
from paramdelta.engine.stages import Staged, preflight, stage
from paramdelta.errors import DEBUG, CheckError, UnexpectedError, as_error, interruption
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
    merge_record,
    plan_notes,
    result_files,
    scratch_dir,
    upload_while_writing,
)
from paramdelta.reporting.results import Status, TargetResult

log = logging.getLogger(__name__)

VOCAB_FIX = "set `vocab_policy: shared` on the target in the watchlist"


class RunOptions(NamedTuple):
    runtime: Runtime = Runtime()
    stream: bool = False
    dry_run: bool = False
    workdir: Path | None = None  # where dry runs leave their card
    check: str | None = None  # --check auto|on|off; None: each target's own (watchlist `check`)


def commit_message(plan: TargetPlan) -> str:
    pins = plan.pins()
    new = pins["new_base"]
    return f"ParamΔ: {pins['post']['repo']} onto {new['repo']}@{new['sha'][:7]}"


def card_settings(plan: TargetPlan) -> CardSettings:
    target = plan.target
    return CardSettings(target=target.name, tags=target.tags, template=target.card_template)


def input_sources(hub: Hub, plan: TargetPlan) -> dict[str, Source]:
    """Each checkpoint of a planned target, by role, at the commit the plan pinned."""
    return {role: HubSource(hub, files) for role, files in plan.checkpoints.items()}


def run_target(hub: Hub, plan: TargetPlan, options: RunOptions) -> TargetResult:
    """Merge and publish one planned target; raises nothing but an interruption."""
    started = time.perf_counter()

    def result(status: Status, **fields: object) -> TargetResult:
        return plan.result(status, seconds=time.perf_counter() - started, **fields)

    if (settled := nothing_to_merge(plan)) is not None:
        return settled
    try:
        sources = input_sources(hub, plan)
        merge_plan = preflight(sources, plan.target.recipe)
        for note in plan_notes(merge_plan):
            log.info(f"{plan.target.name}: {note}")
        # Decided before merging: with `check: on`, a check that cannot run fails now.
        mode = options.check or plan.target.check
        skipped = pre_publish.decide(mode, model_bytes(merge_plan), options.runtime.device)
        if options.dry_run:
            return result("dry-run", url=dry_run_card(hub, plan, sources, merge_plan, options))
        if not options.stream:
            sources = download_inputs(merge_plan, sources)
        published, check = publish_merge(hub, plan, merge_plan, sources, options, skipped)
    except Exception as e:  # whatever it is, it is this target's failure, not the run's
        return failure(plan.target.name, plan, e, time.perf_counter() - started)
    if published.in_review:
        return result("in-review", url=published.url, check=check.to_dict())
    if published.up_to_date:
        return result("up-to-date", url=published.url, check=check.to_dict())
    status: Status = "pr-opened" if published.pr_url else "published"
    return result(status, url=published.url, check=check.to_dict())


def nothing_to_merge(plan: TargetPlan) -> TargetResult | None:
    """The result of a plan that leaves nothing to merge (it failed, the merge is in review
    or published); None when it is pending."""
    if plan.error is not None:
        return plan.result("failed", error=str(plan.error), exit_code=plan.error.exit_code)
    if plan.status == "in-review":
        return plan.result("in-review", url=plan.review_url)
    if not plan.pending:
        return plan.result("up-to-date")
    return None


def failure(
    name: str, plan: TargetPlan | None, e: Exception | KeyboardInterrupt, seconds: float = 0.0
) -> TargetResult:
    """The result of a target that ``e`` kept from running or from finishing: the one
    place where an exception becomes a target's status, message and exit code."""
    status: Status = "failed"
    details = None
    if isinstance(e, CheckError):
        status, details = "check-failed", e.details
    if isinstance(e, VocabularyError):  # the fix is the watchlist's, not a flag `run` takes
        e = e.with_fix(VOCAB_FIX)
    error = interruption(e) if isinstance(e, KeyboardInterrupt) else as_error(e)
    if DEBUG and isinstance(error, UnexpectedError):
        traceback.print_exception(e)
    if plan is None:  # the watchlist or the plan itself failed
        return TargetResult(
            target=name, status=status, error=str(error), exit_code=error.exit_code, duration_s=0.0
        )
    return plan.result(
        status, seconds=seconds, error=str(error), exit_code=error.exit_code, check=details
    )


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
    merge_plan: MergePlan,
    sources: dict[str, Source],
    options: RunOptions,
    skipped: str | None = None,
) -> tuple[PublishResult, CheckReport]:
    """Merge, uploading each shard as written; check; weights, card and lineage in one commit.

    ``skipped`` is why the pre-publish check does not run (None: it runs, on the
    merged files kept on disk until the commit; a failure raises CheckError and
    nothing is committed).
    """
    publisher = output_publisher(hub, plan)
    with scratch_dir() as scratch, publisher:
        with stage(merge_plan, sources, scratch / "merged", options.runtime) as staged:
            upload_while_writing(staged, publisher, keep=skipped is None)
            report = check_staged(staged, plan, options, skipped)
            settings = card_settings(plan)
            files = result_files(staged.result(), settings, publisher=publisher, check=report)
            staged.add_files(files)
            merged = staged.finish()
        published = already_proposed(hub, plan, publisher) or publisher.commit(merged.out_dir)
    if not (published.in_review or published.up_to_date):  # a commit, or a new pull request
        close_superseded(hub, publisher.repo_id, plan.target.name, published)
    return published, report


def output_publisher(hub: Hub, plan: TargetPlan) -> Publisher:
    """One commit (or pull request) to the target's output repo, on the head it planned on."""
    assert plan.output_repo is not None
    return Publisher(
        hub,
        plan.output_repo,
        message=commit_message(plan),
        description=f"Made by paramdelta-bot for target `{plan.target.name}`.",
        private=plan.target.private,
        create_pr=plan.target.publish == "pr",
        parent=plan.output_head or NEW_REPO,  # what the plan saw, not what is there hours later
    )


def check_staged(
    staged: Staged, plan: TargetPlan, options: RunOptions, skipped: str | None
) -> CheckReport:
    """The pre-publish check of the staged output, or why it does not run; raises CheckError
    when it fails (leaving the stage removes the output: nothing is committed)."""
    if skipped is not None:
        return CheckReport.not_checked(skipped)
    report = pre_publish.run_check(
        staged.directory,
        {role: staged.sources[role] for role in (*REFERENCES, "base")},  # base: an adapter's
        device=options.runtime.device,
        perplexity_factor=plan.target.perplexity_factor,
    )
    if report.failed:
        raise report.error()
    return report


def already_proposed(hub: Hub, plan: TargetPlan, publisher: Publisher) -> PublishResult | None:
    """Right before opening a pull request: is the same merge in one of ours by now?"""
    if not publisher.create_pr or (proposal := proposal_for(hub, plan)) is None:
        return None
    url = proposal.url(hub, publisher.repo_id)
    return PublishResult(publisher.repo_id, "main", [], pr_url=url, in_review=True)
