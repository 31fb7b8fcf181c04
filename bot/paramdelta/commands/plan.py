"""`paramdelta plan`: which targets need a new merge (cheap: no weight bytes).

`--format json` prints the list of pending targets, the shape a GitHub Actions
matrix takes as `include`. Targets that could not be resolved (a missing or
gated repo) are listed too, with status "error": their matrix leg then fails
with the real error and the report job files an issue for that target alone.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from paramdelta.commands import arguments
from paramdelta.commands.output import emit
from paramdelta.errors import UsageError
from paramdelta.rendering import markdown

if TYPE_CHECKING:
    from paramdelta.pipeline.plan import TargetPlan
    from paramdelta.pipeline.watchlist import Problem, Watchlist
    from paramdelta.reporting.results import TargetResult

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    arguments.add_watchlist_arguments(parser)
    arguments.add_github_argument(parser)
    parser.add_argument(
        "--result-file",
        type=Path,
        help="write a result per target: up to date or in review (so `report` can close their"
        " issues), or planned (so `report` can tell a merge job that never reported)",
    )
    arguments.add_format_argument(parser)


def load_watchlist(path: str) -> Watchlist:
    """Load (and fully validate) the watchlist; its warnings are logged."""
    from paramdelta.pipeline.watchlist import load

    if (
        path == arguments.DEFAULT_WATCHLIST and not Path(path).exists()
    ):  # run elsewhere than its folder
        raise UsageError(
            f"no {path} in {Path.cwd()}: pass --watchlist PATH (or run in the watchlist's folder)"
        )
    watchlist = load(path)
    log_warnings(watchlist.warnings)
    return watchlist


def log_warnings(warnings: Iterable[Problem]) -> None:
    """Watchlist warnings, logged as they read: ``file:line: warning: field: message``."""
    for warning in warnings:
        log.warning("%s", warning, extra={"located": True})


def matrix(plans: list[TargetPlan]) -> list[dict[str, object]]:
    """One entry per merge job: a pending target with `legs: N` gets N, with "leg": K."""
    entries: list[dict[str, object]] = []
    for p in to_run(plans):
        if p.pending and p.target.legs > 1:
            legs = p.target.legs
            entries += [{**p.to_dict(), "leg": k, "legs": legs} for k in range(1, legs + 1)]
        else:
            entries.append(p.to_dict())
    return entries


def to_run(plans: list[TargetPlan]) -> list[TargetPlan]:
    """The targets a run takes: the pending ones, and those whose plan failed (to report)."""
    return [p for p in plans if p.pending or p.status == "error"]


def fan_outs(plans: list[TargetPlan]) -> list[dict[str, object]]:
    """One entry per finish job: the pending targets merged in legs."""
    return [
        {
            "target": p.target.name,
            "output_repo": p.output_repo,
            "legs": p.target.legs,
            "staging_branch": p.staging_branch,
        }
        for p in plans
        if p.pending and p.target.legs > 1
    ]


def human_plan(plans: list[TargetPlan]) -> str:
    lines = []
    for p in plans:
        new = p.checkpoints.get("new_base")
        base = f"{new.repo_id}@{new.sha[:7]}" if new else "-"
        why = "; ".join(p.reasons)
        lines.append(f"{p.target.name}: {p.status} (new base {base}){': ' + why if why else ''}")
    pending = sum(p.pending for p in plans)
    errors = sum(p.status == "error" for p in plans)
    unresolved = f", {errors} could not be resolved" if errors else ""
    lines.append(f"{pending} of {len(plans)} targets pending{unresolved}")
    return "\n".join(lines)


def summary_table(plans: list[TargetPlan]) -> str:
    rows = [
        "### ParamΔ plan",
        "",
        "| target | status | new base | output | why |",
        "|---|---|---|---|---|",
    ]
    for p in plans:
        new = p.checkpoints.get("new_base")
        base = markdown.code(f"{new.repo_id}@{new.sha[:7]}") if new else "-"
        cells = [markdown.text(p.target.name), p.status, base, markdown.text(p.output_repo)]
        rows.append("| " + " | ".join([*cells, markdown.text("; ".join(p.reasons), "")]) + " |")
    return "\n".join(rows) + "\n"


def plan_result(plan: TargetPlan) -> TargetResult:
    """What the plan says of a target for `report`: done already, or planned for a merge job."""
    if plan.status == "in-review":
        return plan.result("in-review", url=plan.review_url)
    if plan.status in ("up-to-date", "skipped"):
        return plan.result("up-to-date")
    return plan.result("planned")  # pending or error: its matrix leg reports on it


def run(args: argparse.Namespace) -> int:
    from paramdelta.hub.sources import HubFactory
    from paramdelta.pipeline.plan import plan_watchlist
    from paramdelta.reporting import github_actions
    from paramdelta.reporting.results import write_results

    if args.github:
        github_actions.require_runner_files()
    watchlist = load_watchlist(args.watchlist)
    hub = HubFactory(args.token_file)()
    plans = plan_watchlist(hub, watchlist, args.target)
    pending = matrix(plans)
    if args.result_file:
        write_results(args.result_file, [plan_result(p) for p in plans if p.status != "disabled"])
    if args.github:
        github_actions.set_output("pending", json.dumps(pending))
        github_actions.set_output("pending-count", str(len(pending)))
        # The fan-out workflow's jobs: whole merges, legs, and one finish per fan-out.
        # A workflow without legs jobs (the plain example) merges `targets` instead: each
        # target once, a fan-out target as one whole merge rather than N copies of it.
        lists = {
            "targets": [p.to_dict() for p in to_run(plans)],
            "whole": [m for m in pending if "leg" not in m],
            "legs": [m for m in pending if "leg" in m],
            "fan-out": fan_outs(plans),
        }
        for name, entries in lists.items():
            github_actions.set_output(name, json.dumps(entries))
            github_actions.set_output(f"{name}-count", str(len(entries)))
        github_actions.append_summary(summary_table(plans))
    emit(args.format, pending, human_plan(plans))
    return 0
