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
    from paramdelta.bot.results import SUCCEEDED, write_results
    from paramdelta.bot.summary import summary_markdown

    results: list[TargetResult] = []
    try:
        _run_targets(args, results)
    finally:  # whatever ends the run, the report job gets a result for every target
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


def _run_targets(args: argparse.Namespace, results: list[TargetResult]) -> None:
    """Plan and run each target into ``results``; on the way out, the ones left get its error."""
    from paramdelta.bot import github_actions
    from paramdelta.bot.plan import TargetPlan, plan_watchlist
    from paramdelta.bot.run_target import RunOptions, not_run, run_target  # torch: only here
    from paramdelta.errors import as_error, interruption
    from paramdelta.hub.sources import HubFactory

    planned: dict[str, TargetPlan | None] = {args.target: None} if args.target else {}
    try:
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
        plans = [
            p
            for p in plan_watchlist(hub, watchlist, args.target, files=True)
            if p.status != "disabled"
        ]
        planned = {p.target.name: p for p in plans}
        for plan in plans:
            results.append(run_target(hub, plan, options))
    except KeyboardInterrupt as e:
        stop = interruption(e)
        results += [not_run(n, p, stop) for n, p in planned.items() if n not in _names(results)]
        raise stop from None
    except Exception as e:
        error = as_error(e)
        results += [not_run(n, p, error) for n, p in planned.items() if n not in _names(results)]
        raise


def _names(results: list[TargetResult]) -> set[str]:
    return {r.target for r in results}
