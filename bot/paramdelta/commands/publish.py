"""`paramdelta publish DIR --repo org/name`: one atomic commit of a merged directory.

DIR is what `paramdelta merge --output DIR` wrote: its paramdelta.json names the
inputs, so the card is rendered again for the repo and committed with the weights.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from paramdelta.commands import arguments
from paramdelta.commands.output import emit
from paramdelta.errors import UsageError
from paramdelta.repo_ids import check_repo_id


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "directory", type=Path, help="a directory written by `paramdelta merge --output`"
    )
    parser.add_argument("--repo", required=True, help="output repo id, org/name")
    arguments.add_publish_options(parser)
    parser.add_argument(
        "--dry-run", action="store_true", help="print what would be committed; send nothing"
    )
    arguments.add_format_argument(parser)


def run(args: argparse.Namespace) -> int:
    from paramdelta.hub.client import default_endpoint
    from paramdelta.hub.publisher import dry_run
    from paramdelta.pipeline.publish import directory_files, publish_directory

    repo_id = check_repo_id(args.repo, "--repo")
    directory: Path = args.directory
    if not directory.is_dir() or not any(directory.iterdir()):
        raise UsageError(f"{directory}: not a directory with files to publish")
    if args.dry_run:  # the card and record are checked and rendered, nothing is sent
        files = directory_files(directory, repo_id, default_endpoint())
        result = dry_run(repo_id, args.revision, directory, files)
    else:
        result = publish_directory(arguments.publisher(args, repo_id), directory)
    emit(args.format, result.to_dict(), result.describe())
    return 0
