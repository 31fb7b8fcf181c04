"""`paramdelta report`: summarise result files; in Actions, the job summary and issues.

Failing targets are reported, not failed again: the exit code says whether
reporting worked. Result files are taken only for the watchlist's targets, and a
target the plan planned that no merge job reported on counts as failed (see
`paramdelta.reporting.collect`).
"""

from __future__ import annotations

import argparse
import logging
import re
from typing import Any

from paramdelta.commands import arguments
from paramdelta.commands.output import emit
from paramdelta.commands.plan import load_watchlist
from paramdelta.errors import UsageError
from paramdelta.tokens import github_token

log = logging.getLogger(__name__)
_REPO_RE = re.compile(r"[\w.-]+/[\w.-]+")
_ACTION_WORDS = {
    "opened": "opened",
    "commented": "commented on",
    "closed": "closed",
    "announced": "announced in",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "results",
        nargs="+",
        metavar="RESULTS",
        help="result files from `paramdelta run --result-file`, or directories of them",
    )
    parser.add_argument(
        "--watchlist",
        default=arguments.DEFAULT_WATCHLIST,
        help="the watchlist: results are taken for its targets only (default: watchlist.yaml)",
    )
    parser.add_argument(
        "--github",
        action="store_true",
        help="also add the table to the job summary and set the step output `summary`",
    )
    parser.add_argument(
        "--issues",
        action="store_true",
        help="open or comment on one issue per failing target, close it once fixed"
        " (token from GITHUB_TOKEN or GH_TOKEN)",
    )
    parser.add_argument(
        "--notify-success",
        action="store_true",
        help="with --issues: open one issue announcing each new publish",
    )
    parser.add_argument(
        "--repo", metavar="OWNER/NAME", help="repository for issues (default: $GITHUB_REPOSITORY)"
    )
    parser.add_argument(
        "--label", default="paramdelta", help="label of the bot's issues (default: paramdelta)"
    )
    arguments.add_format_argument(parser)


def run(args: argparse.Namespace) -> int:
    from paramdelta.reporting import github_actions
    from paramdelta.reporting.collect import collect
    from paramdelta.reporting.issues import sync_issues
    from paramdelta.reporting.summary import summary_markdown

    # Check every setting before the first side effect.
    if args.notify_success and not args.issues:
        raise UsageError("--notify-success needs --issues")
    if args.github:
        github_actions.require_runner_files()
    issue_settings = _issue_settings(args) if args.issues else None
    watchlist = load_watchlist(args.watchlist)
    results, ignored = collect(args.results, {t.name for t in watchlist.targets})
    for line in ignored:
        log.warning("%s", line)
    run_url = github_actions.run_url()
    summary = summary_markdown(results, run_url=run_url)
    if args.github:
        github_actions.append_summary(summary)
        github_actions.set_output("summary", summary)
    actions = sync_issues(results, run_url=run_url, **issue_settings) if issue_settings else []
    human = summary + "".join(
        f"\n{_ACTION_WORDS[a.action]} issue #{a.number} for {a.target}: {a.url}" for a in actions
    )
    emit(
        args.format,
        {"results": [r.to_dict() for r in results], "issues": [a.to_dict() for a in actions]},
        human,
    )
    return 0


def _issue_settings(args: argparse.Namespace) -> dict[str, Any]:
    """`sync_issues` settings; the token only ever from the environment, never an argument."""
    from paramdelta.reporting import github_actions

    repo = args.repo or github_actions.repository()
    if not repo:
        raise UsageError("--issues: pass --repo OWNER/NAME or set GITHUB_REPOSITORY")
    if not _REPO_RE.fullmatch(repo):
        raise UsageError(f"--repo: expected OWNER/NAME, not {repo!r}")
    token = github_token()
    if not token:
        raise UsageError("--issues: set GITHUB_TOKEN or GH_TOKEN to a token that may write issues")
    return {
        "repo": repo,
        "token": token,
        "base_url": github_actions.api_url(),
        "label": args.label,
        "notify_success": args.notify_success,
    }
