"""`paramdelta watchlist validate [FILE]`: every problem on its own line, with file and line."""

from __future__ import annotations

import argparse
import sys

from paramdelta.commands import arguments
from paramdelta.commands.output import emit
from paramdelta.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    validate = actions.add_parser(
        "validate", help="check a watchlist against the schema and the rules"
    )
    validate.add_argument(
        "file", nargs="?", default=arguments.DEFAULT_WATCHLIST, help="default: watchlist.yaml"
    )
    arguments.add_format_argument(validate)


def run(args: argparse.Namespace) -> int:
    from paramdelta.bot.watchlist import check

    watchlist, problems = check(args.file)
    warnings = watchlist.warnings if watchlist else []
    for warning in warnings:
        print(warning, file=sys.stderr)
    data = {
        "file": args.file,
        "valid": not problems,
        "targets": [t.name for t in watchlist.targets] if watchlist else [],
        "problems": [p._asdict() for p in [*problems, *warnings]],
    }
    if problems:
        if args.format == "json":
            emit("json", data, "")
        else:
            for problem in problems:
                print(problem, file=sys.stderr)
        return UsageError.exit_code
    assert watchlist is not None
    enabled = sum(t.enabled for t in watchlist.targets)
    emit(
        args.format,
        data,
        f"{args.file}: valid, {len(watchlist.targets)} targets ({enabled} enabled)",
    )
    return 0
