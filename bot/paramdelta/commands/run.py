"""`paramdelta run`: plan, then merge and publish every pending target.

Each target is merged and published on its own: a failing target is
reported and the next one runs. The exit code is 0 when every target
succeeded (or had nothing to do), else the first failure's exit code.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from paramdelta.commands import arguments
from paramdelta.commands.output import emit
from paramdelta.commands.plan import load_watchlist

if TYPE_CHECKING:
    from paramdelta.bot.plan import TargetPlan
    from paramdelta.bot.results import TargetResult

# What a target with nothing to merge is, in words: its plan's status, not its result's.
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
    parser.add_argument("--workdir", type=Path, help="where --dry-run writes the cards")
    parser.add_argument("--result-file", type=Path, help="write the results as JSON here")
    arguments.add_github_argument(parser)
    arguments.add_format_argument(parser)


def human_results(plans: list[TargetPlan], results: list[TargetResult]) -> str:
    """One line per target; a single line when none had anything to merge."""
    idle = [p.status for p, r in zip(plans, results, strict=True) if r.status == "up-to-date"]
    if results and len(idle) == len(results):
        counts = Counter(IDLE_WORDS.get(status, status) for status in idle)
        return "nothing to do: " + ", ".join(f"{n} target(s) {w}" for w, n in counts.items())
    lines = []
    for plan, r in zip(plans, results, strict=True):
        status = IDLE_WORDS.get(plan.status, r.status) if r.status == "up-to-date" else r.status
        detail = r.error if r.status == "failed" else r.url
        lines.append(f"{r.target}: {status}{f' ({detail})' if detail else ''}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from paramdelta.bot import github_actions
    from paramdelta.bot.plan import plan_watchlist
    from paramdelta.bot.results import SUCCEEDED, write_results
    from paramdelta.bot.run_target import RunOptions, run_target  # torch: only when running
    from paramdelta.bot.summary import summary_markdown
    from paramdelta.hub.sources import HubFactory

    if args.github:
        github_actions.require_runner_files()
    device, max_memory = arguments.device_options(args)
    watchlist = load_watchlist(args.watchlist)
    options = RunOptions(
        device=device,
        max_memory=max_memory,
        stream=args.stream,
        dry_run=args.dry_run,
        progress=args.format == "human",
        workdir=args.workdir,
        log=lambda line: print(line, file=sys.stderr),
    )
    hub = HubFactory(args.token_file)()
    # A disabled target is neither run nor reported (its issue, if any, stays as it is).
    plans = [p for p in plan_watchlist(hub, watchlist, args.target) if p.status != "disabled"]
    results = [run_target(hub, plan, options) for plan in plans]
    if args.result_file:
        write_results(args.result_file, results)
    if args.github:
        published = [r.to_dict() for r in results if r.status in SUCCEEDED]
        summary = summary_markdown(results, github_actions.run_url())
        github_actions.set_output("published", json.dumps(published))
        github_actions.set_output("summary", summary)
        github_actions.append_summary(summary)
    emit(args.format, {"results": [r.to_dict() for r in results]}, human_results(plans, results))
    failed = [r for r in results if r.status == "failed"]
    return failed[0].exit_code if failed else 0
