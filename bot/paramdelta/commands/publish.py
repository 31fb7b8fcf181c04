"""`paramdelta publish DIR --repo org/name`: one atomic commit of a merged directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from paramdelta.commands import arguments
from paramdelta.commands.output import emit
from paramdelta.errors import UsageError
from paramdelta.repo_ids import check_repo_id


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", type=Path, help="merged checkpoint directory")
    parser.add_argument("--repo", required=True, help="output repo id, org/name")
    arguments.add_publish_options(parser)
    parser.add_argument(
        "--dry-run", action="store_true", help="print what would be committed; send nothing"
    )
    arguments.add_format_argument(parser)


def run(args: argparse.Namespace) -> int:
    from paramdelta.bot.publish import publish_directory
    from paramdelta.hub.publisher import dry_run

    repo_id = check_repo_id(args.repo, "--repo")
    directory: Path = args.directory
    if not directory.is_dir() or not any(directory.iterdir()):
        raise UsageError(f"{directory}: not a directory with files to publish")
    if args.dry_run:
        result = dry_run(repo_id, args.revision, directory)
    else:
        result = publish_directory(arguments.publisher(args, repo_id), directory)
    emit(args.format, result.to_dict(), result.describe())
    return 0
