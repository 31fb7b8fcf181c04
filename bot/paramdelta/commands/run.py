"""`paramdelta run`: plan, then merge and publish every pending target.

Each target is merged and published on its own: a failing target is
reported and the next one runs. The exit code is 0 when every target
succeeded (or had nothing to do), else the first failure's exit code.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from paramdelta.commands import arguments
from paramdelta.commands.output import emit
from paramdelta.commands.plan import load_watchlist
from paramdelta.units import plural

if TYPE_CHECKING:
    from paramdelta.pipeline.plan import TargetPlan
    from paramdelta.reporting.results import TargetResult

# A target with nothing to merge (the output is published, or proposed), in words: an
# up-to-date result says its plan's status.
IDLE = ("up-to-date", "in-review")
IDLE_WORDS = {"up-to-date": "up to date", "in-review": "in review", "skipped": "skipped"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    arguments.add_watchlist_arguments(parser)
    parser.add_argument(
        "--dry-run", action="store_true", help="plan and render the cards; merge nothing"
    )
    parser.add_argument(
        "--stream", action="store_true", help="read inputs by byte ranges, do not download them"
    )
    arguments.add_device_options(parser)
    parser.add_argument(
        "--check",
        choices=("auto", "on", "off"),
        help="the pre-publish check, for every target (default: each target's `check`, auto):"
        " auto runs it when transformers is installed and the model fits in memory,"
        " on makes a check that cannot run an error, off skips it",
    )
    parser.add_argument("--workdir", type=Path, help="where --dry-run writes the cards")
    fan_out = parser.add_mutually_exclusive_group()
    fan_out.add_argument(
        "--leg",
        type=arguments.leg,
        metavar="K/N",
        help="fan-out (a target with `legs: N`, needs --target): merge leg K's shards into"
        " the output repo's staging branch",
    )
    fan_out.add_argument(
        "--finish",
        action="store_true",
        help="fan-out (needs --target): check that every leg is staged, publish them in one"
        " commit, delete the staging branch",
    )
    parser.add_argument("--result-file", type=Path, help="write the results as JSON here")
    arguments.add_github_argument(parser)
    arguments.add_format_argument(parser)


def human_results(plans: list[TargetPlan], results: list[TargetResult]) -> str:
    """One line per target; a single line when none had anything to merge."""
    planned = {p.target.name: p.status for p in plans}

    def status(r: TargetResult) -> str:
        return planned.get(r.target, r.status) if r.status == "up-to-date" else r.status

    idle = [status(r) for r in results if r.status in IDLE]
    if results and len(idle) == len(results):
        counts = Counter(IDLE_WORDS.get(s, s) for s in idle)
        return "nothing to do: " + ", ".join(
            f"{plural(n, 'target')} {w}" for w, n in counts.items()
        )
    lines = []
    for r in results:
        word = IDLE_WORDS.get(status(r), status(r)) if r.status == "up-to-date" else r.status
        detail = r.error if r.error else r.url
        lines.append(f"{r.target}: {word}{f' ({detail})' if detail else ''}")
        if r.check and not r.error:
            lines.append(f"  {check_line(r.check)}")
    return "\n".join(lines)


def check_line(check: dict[str, object]) -> str:
    """The pre-publish check in one line of the run's log."""
    if check["status"] == "not-checked":
        return f"pre-publish check: not checked: {check['reason']}"
    perplexity = check.get("perplexity") or {}
    assert isinstance(perplexity, dict)
    return (
        f"pre-publish check: {check['status']} in {check['seconds']} s on {check['device']}"
        f" (perplexity {perplexity.get('merged')}, {perplexity.get('ratio')} x the better"
        f" reference, at most {perplexity.get('factor')})"
    )


def run(args: argparse.Namespace) -> int:
    from paramdelta.reporting import github_actions
    from paramdelta.reporting.results import FAILED, SUCCEEDED, write_results
    from paramdelta.reporting.summary import summary_markdown

    results: list[TargetResult] = []
    plans: list[TargetPlan] = []
    try:
        _run_targets(args, plans, results)
    finally:  # whatever ends the run, the report job gets a result for every target
        if args.result_file:
            write_results(args.result_file, results)
    if args.github:
        published = [r.to_dict() for r in results if r.status in SUCCEEDED]
        summary = summary_markdown(results, github_actions.run_url())
        github_actions.set_output("published", json.dumps(published))
        github_actions.set_output("summary", summary)
        github_actions.append_summary(summary)
    emit(args.format, {"results": [r.to_dict() for r in results]}, human_results(plans, results))
    failed = [r for r in results if r.status in FAILED]
    return failed[0].exit_code if failed else 0


def _run_targets(
    args: argparse.Namespace, plans: list[TargetPlan], results: list[TargetResult]
) -> None:
    """Plan into ``plans``, run each target into ``results``; on the way out, the ones left
    get its error."""
    from paramdelta.errors import UsageError, interruption
    from paramdelta.hub.sources import HubFactory
    from paramdelta.pipeline import fan_out
    from paramdelta.pipeline.plan import plan_watchlist
    from paramdelta.pipeline.run_target import RunOptions, failure, run_target  # torch: only here
    from paramdelta.reporting import github_actions

    planned: dict[str, TargetPlan | None] = {args.target: None} if args.target else {}
    try:
        if args.github:
            github_actions.require_runner_files()
        if (args.leg or args.finish) and not args.target:
            option = "--finish" if args.finish else "--leg"
            raise UsageError(f"{option}: a fan-out runs one target: pass --target NAME")
        runtime = arguments.runtime(args)
        watchlist = load_watchlist(args.watchlist)
        options = RunOptions(
            runtime=runtime,
            stream=args.stream,
            dry_run=args.dry_run,
            workdir=args.workdir,
            check=args.check,
        )
        hub = HubFactory(args.token_file)()
        # A disabled target is neither run nor reported (its issue, if any, stays as it is).
        planned_all = plan_watchlist(hub, watchlist, args.target)
        plans.extend(p for p in planned_all if p.status != "disabled")
        planned = {p.target.name: p for p in plans}
        for plan in plans:
            if args.leg:
                results.append(fan_out.run_leg(hub, plan, args.leg, options))
            elif args.finish:
                results.append(fan_out.finish(hub, plan, options))
            else:
                results.append(run_target(hub, plan, options))
    except (KeyboardInterrupt, Exception) as e:  # every target left gets it as its result
        done = {r.target for r in results}
        results += [failure(name, plan, e) for name, plan in planned.items() if name not in done]
        if isinstance(e, KeyboardInterrupt):
            raise interruption(e) from None
        raise
