"""`paramdelta run`: plan, then merge and publish every pending target.

Each target is merged and published on its own: a failing target is
reported and the next one runs. The exit code is 0 when every target
succeeded (or had nothing to do), else the first failure's exit code.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from paramdelta.commands import arguments
from paramdelta.commands.output import emit
from paramdelta.commands.plan import load_watchlist

if TYPE_CHECKING:
    from paramdelta.bot.results import TargetResult


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


def human_results(results: list[TargetResult]) -> str:
    if results and all(r.status == "up-to-date" for r in results):
        return f"nothing to do: {len(results)} target(s) up to date"
    lines = []
    for r in results:
        detail = r.error if r.status == "failed" else r.url
        lines.append(f"{r.target}: {r.status}{f' ({detail})' if detail else ''}")
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
    emit(args.format, {"results": [r.to_dict() for r in results]}, human_results(results))
    failed = [r for r in results if r.status == "failed"]
    return failed[0].exit_code if failed else 0
