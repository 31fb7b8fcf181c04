"""`paramdelta watchlist validate [FILE]`: every problem and warning, one a line, in one pass."""

from __future__ import annotations

import argparse
import sys

from paramdelta.commands import arguments
from paramdelta.commands.output import emit
from paramdelta.errors import UsageError
from paramdelta.units import plural


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    validate = actions.add_parser(
        "validate",
        help="check a watchlist against the schema and the rules",
        description="Check a watchlist without touching the Hub: its YAML, its schema and the"
        " rules the schema cannot express. Every error and warning is printed as"
        " FILE:LINE: MESSAGE, all in one pass; exit 0 when it is valid (warnings allowed),"
        " 2 when not.",
    )
    validate.add_argument(
        "file",
        nargs="?",
        default=arguments.DEFAULT_WATCHLIST,
        help="the watchlist to check (default: watchlist.yaml)",
    )
    arguments.add_format_argument(validate)


def run(args: argparse.Namespace) -> int:
    from paramdelta.pipeline.watchlist import check

    watchlist, problems = check(args.file)  # errors and warnings, by line
    data = {
        "file": args.file,
        "valid": watchlist is not None,
        "targets": [t.name for t in watchlist.targets] if watchlist else [],
        "problems": [p._asdict() for p in problems],
    }
    if args.format == "human":  # the problems are the result: printed, not logged
        for problem in problems:
            print(problem, file=sys.stderr)
    if watchlist is None:
        if args.format == "json":
            emit("json", data, "")
        return UsageError.exit_code
    enabled = sum(t.enabled for t in watchlist.targets)
    warned = f", {plural(len(problems), 'warning')}" if problems else ""
    targets = plural(len(watchlist.targets), "target")
    emit(
        args.format,
        data,
        f"{args.file}: valid, {targets} ({enabled} enabled){warned}",
    )
    return 0
