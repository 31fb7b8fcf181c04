"""Argument groups that several commands share, each defined once, and their parsing.

Only light modules are imported here (no torch, huggingface_hub or PyGithub):
every command module imports this one when `paramdelta --help` builds the parser.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from paramdelta.engine.recipe import (
    DEFAULT_MAX_MEMORY,
    DEFAULT_SHARD_SIZE,
    DTYPE_CHOICES,
    VOCAB_POLICIES,
    Recipe,
    Runtime,
    parse_size,
)

if TYPE_CHECKING:
    from paramdelta.engine.legs import Leg
    from paramdelta.hub.publisher import Publisher

DEFAULT_WATCHLIST = "watchlist.yaml"
FORMATS = ("human", "json")
DEVICES = ("auto", "cpu", "cuda")
DEFAULT_COMMIT_MESSAGE = "Upload ParamΔ merge"


def add_format_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="human",
        help="human-readable text (default) or one JSON object on stdout",
    )


def add_github_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--github", action="store_true", help="write step outputs and the job summary"
    )


def add_token_file_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--token-file", help="read the Hub token from this file (default: HF_TOKEN or login)"
    )


def add_watchlist_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--watchlist",
        default=DEFAULT_WATCHLIST,
        help="the watchlist of targets to keep current (default: watchlist.yaml)",
    )
    parser.add_argument("--target", metavar="NAME", help="only this target")
    add_token_file_argument(parser)


def add_recipe_options(parser: argparse.ArgumentParser) -> None:
    """What is computed (for `run`, the watchlist says it per target)."""
    group = parser.add_argument_group("merge options")
    group.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        default=Recipe().dtype,
        help="output dtype of float tensors (default auto: the new base's)",
    )
    group.add_argument("--alpha", type=float, help=f"scale of the delta (default {Recipe().alpha})")
    group.add_argument(
        "--vocab-policy",
        choices=VOCAB_POLICIES,
        default=Recipe().vocab_policy,
        help="vocabulary size mismatch: error (default), or shared: merge the rows all inputs"
        " share and keep the (first) post model's extra rows",
    )
    group.add_argument(
        "--shard-size",
        default="5GB",
        help=f"largest output shard (default 5GB = {DEFAULT_SHARD_SIZE} bytes)",
    )


def add_device_argument(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, what: str = "compute device"
) -> None:
    parser.add_argument(
        "--device",
        default="auto",
        choices=DEVICES,
        help=f"{what} (default auto: cuda when a GPU is present, else cpu)",
    )


def add_device_options(parser: argparse.ArgumentParser) -> None:
    """Where and in how much memory a merge is computed (`merge` and `run`)."""
    group = parser.add_argument_group("compute options")
    add_device_argument(group)
    group.add_argument(
        "--max-memory",
        default=f"{DEFAULT_MAX_MEMORY // 2**20}MiB",
        help="upper bound for I/O and compute buffers (default 256MiB; torch adds ~250 MB)",
    )


def add_publish_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("publish options")
    group.add_argument("--private", action="store_true", help="create the repo as private")
    group.add_argument(
        "--pr", action="store_true", help="open a Hub pull request instead of committing"
    )
    group.add_argument(
        "--output-branch",
        "--revision",  # its first name, kept for scripts
        dest="revision",
        metavar="BRANCH",
        default="main",
        help="the output repo's branch to commit to (default main; --revision is its old name)",
    )
    group.add_argument("--commit-message", default=DEFAULT_COMMIT_MESSAGE, help="commit title")
    add_token_file_argument(parser)


def leg(text: str) -> Leg:
    """``--leg K/N``: leg K of N, 1 <= K <= N (an argparse type: errors name the option)."""
    from paramdelta.engine.legs import Leg

    number, sep, of = text.partition("/")
    if sep and number.isdigit() and of.isdigit() and 1 <= int(number) <= int(of):
        return Leg(int(number), int(of))
    raise argparse.ArgumentTypeError(f"{text!r} is not K/N with 1 <= K <= N (leg K of N, e.g. 2/4)")


def runtime(args: argparse.Namespace) -> Runtime:
    """``--device`` checked now (not after opening three checkpoints), ``--max-memory``, and
    progress bars for a human reader."""
    from paramdelta.engine.workers import resolve_device  # torch: only for commands that merge

    resolve_device(args.device)
    return Runtime(
        device=args.device,
        max_memory=parse_size(args.max_memory, "--max-memory"),
        progress=args.format == "human",
    )


def recipe(args: argparse.Namespace, weights: tuple[float, ...] = ()) -> Recipe:
    """The recipe the merge options give; ``weights``: a several-delta merge's (one
    weight is the one-delta form, as ``--alpha``)."""
    alpha = weights[0] if len(weights) == 1 else args.alpha
    if alpha is None:
        alpha = Recipe().alpha
    return Recipe(
        alpha=alpha,
        weights=weights if len(weights) > 1 else (),
        dtype=args.dtype,
        vocab_policy=args.vocab_policy,
        shard_size=parse_size(args.shard_size, "--shard-size"),
    ).check()


def publisher(args: argparse.Namespace, repo_id: str) -> Publisher:
    """The Publisher that the publish options describe (the Hub client made here)."""
    from paramdelta.hub.publisher import Publisher
    from paramdelta.hub.sources import HubFactory

    return Publisher(
        HubFactory(args.token_file)(),
        repo_id,
        message=args.commit_message,
        private=args.private,
        create_pr=args.pr,
        revision=args.revision,
    )
