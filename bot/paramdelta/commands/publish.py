"""`paramdelta publish DIR --repo org/name`: one atomic commit of a merged directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from paramdelta.commands.output import add_format_argument, emit
from paramdelta.errors import UsageError
from paramdelta.hub.publisher import Publisher, PublishResult, dry_run
from paramdelta.hub.sources import HubFactory
from paramdelta.repo_ids import check_repo_id

DEFAULT_MESSAGE = "Upload ParamΔ merge"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", type=Path, help="merged checkpoint directory")
    parser.add_argument("--repo", required=True, help="output repo id, org/name")
    add_publish_options(parser)
    parser.add_argument(
        "--dry-run", action="store_true", help="print what would be committed; send nothing"
    )
    add_format_argument(parser)


def add_publish_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("publish options")
    group.add_argument("--private", action="store_true", help="create the repo as private")
    group.add_argument(
        "--pr", action="store_true", help="open a Hub pull request instead of committing"
    )
    group.add_argument("--revision", default="main", help="branch to commit to (default main)")
    group.add_argument("--commit-message", default=DEFAULT_MESSAGE, help="commit title")
    group.add_argument(
        "--token-file", help="read the Hub token from this file (default: HF_TOKEN or login)"
    )


def publisher_from_args(
    args: argparse.Namespace, repo_id: str, *, delete_uploaded: bool = False
) -> Publisher:
    return Publisher(
        HubFactory(args.token_file)(),
        repo_id,
        message=args.commit_message,
        private=args.private,
        create_pr=args.pr,
        revision=args.revision,
        delete_uploaded=delete_uploaded,
    )


def human_result(result: PublishResult) -> str:
    if result.dry_run:
        files = "\n".join(f"  {f}" for f in result.files)
        target = f"{result.repo_id}@{result.revision}"
        return f"would commit {len(result.files)} files to {target}:\n{files}"
    if result.pr_url:
        return f"opened pull request {result.pr_url} ({len(result.files)} files)"
    return f"published {len(result.files)} files to {result.repo_id}: {result.commit_url}"


def run(args: argparse.Namespace) -> int:
    repo_id = check_repo_id(args.repo, "--repo")
    directory: Path = args.directory
    if not directory.is_dir() or not any(directory.iterdir()):
        raise UsageError(f"{directory}: not a directory with files to publish")
    if args.dry_run:
        result = dry_run(repo_id, args.revision, directory)
    else:
        publisher = publisher_from_args(args, repo_id)
        try:
            publisher.start()
            result = publisher.finish(directory)
        finally:
            publisher.close()
    emit(args.format, result.to_dict(), human_result(result))
    return 0
