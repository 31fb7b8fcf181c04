"""`paramdelta merge`: new_base + alpha * (post - base), from local dirs or Hub repos.

The engine (and torch) is imported only when a merge runs, so `paramdelta
--help` and the commands that never compute start fast.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from paramdelta.commands.output import add_format_argument, emit, human_bytes
from paramdelta.commands.publish import (
    add_publish_options,
    human_result,
    publisher_from_args,
)
from paramdelta.engine.checkpoint import Source
from paramdelta.engine.layout import DTYPE_CHOICES, FORMULA, VOCAB_POLICIES, MergePlan
from paramdelta.engine.options import (
    DEFAULT_MAX_MEMORY,
    DEFAULT_SHARD_SIZE,
    MergeOptions,
    parse_size,
)
from paramdelta.engine.writer import check_output_dir
from paramdelta.errors import UsageError
from paramdelta.hub.publisher import PublishResult
from paramdelta.hub.sources import HubFactory, download_inputs, open_sources
from paramdelta.repo_ids import check_repo_id

if TYPE_CHECKING:
    from paramdelta.engine.merge import MergeResult, Prepare


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--base", required=True, metavar="SRC", help="the model post was trained from"
    )
    parser.add_argument(
        "--post", required=True, metavar="SRC", help="the post-trained (instruct) model"
    )
    parser.add_argument(
        "--new-base", required=True, metavar="SRC", help="the newer base to transfer onto"
    )
    parser.add_argument(
        "--output",
        metavar="DIR",
        help="directory to write (created atomically); optional with --push-to",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output")
    parser.add_argument(
        "--stream",
        action="store_true",
        help="read Hub inputs by byte ranges instead of downloading them to the HF cache",
    )
    parser.add_argument(
        "--push-to",
        metavar="REPO",
        help="publish the result to this Hub repo in one commit (shards upload as written)",
    )
    add_merge_options(parser)
    add_publish_options(parser)
    add_format_argument(parser)


def add_merge_options(parser: argparse.ArgumentParser) -> None:
    """Options that shape the computation (shared with `paramdelta run`)."""
    group = parser.add_argument_group("merge options")
    group.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        default="auto",
        help="output dtype of float tensors (default auto: the new base's)",
    )
    group.add_argument("--alpha", type=float, default=1.0, help="scale of the delta (default 1.0)")
    group.add_argument(
        "--vocab-policy",
        choices=VOCAB_POLICIES,
        default="error",
        help="vocabulary size mismatch: error (default), or shared: merge the rows all three"
        " share and keep the post model's extra rows",
    )
    group.add_argument(
        "--shard-size",
        default="5GB",
        help=f"largest output shard (default 5GB = {DEFAULT_SHARD_SIZE} bytes)",
    )
    group.add_argument(
        "--device", default="auto", choices=("auto", "cpu", "cuda"), help="compute device"
    )
    group.add_argument(
        "--max-memory",
        default=f"{DEFAULT_MAX_MEMORY // 2**20}MiB",
        help="upper bound for I/O and compute buffers (default 256MiB; torch adds ~250 MB)",
    )


def options_from_args(args: argparse.Namespace, *, progress: bool) -> MergeOptions:
    from paramdelta.engine.workers import resolve_device

    if not math.isfinite(args.alpha):
        raise UsageError(f"--alpha must be a finite number, not {args.alpha}")
    resolve_device(args.device)  # fail now, not after opening three checkpoints
    return MergeOptions(
        alpha=args.alpha,
        dtype=args.dtype,
        vocab_policy=args.vocab_policy,
        shard_size=parse_size(args.shard_size, "--shard-size"),
        device=args.device,
        max_memory=parse_size(args.max_memory, "--max-memory"),
        progress=progress,
    )


def result_summary(result: MergeResult) -> dict[str, object]:
    stats = result.stats
    return {
        "output": str(result.out_dir),
        "formula": FORMULA,
        "alpha": result.plan.alpha,
        "dtype": result.plan.dtype,
        "tensors": stats.tensors,
        "bytes": stats.bytes,
        "seconds": round(stats.seconds, 3),
        "device": stats.device,
        "peak_rss_bytes": stats.peak_rss_bytes,
        "shards": [s.filename for s in result.shards],
        "files": result.files,
    }


def human_summary(result: MergeResult) -> str:
    stats = result.stats
    rate = f"{human_bytes(stats.bytes / stats.seconds)}/s" if stats.seconds > 0 else "-"
    donors = ", ".join(f"{f} ({role})" for f, role in result.files.items() if role != "merge")
    return (
        f"merged {stats.tensors} tensors ({human_bytes(stats.bytes)}) into {result.out_dir}"
        f" in {stats.seconds:.1f}s ({rate}, {stats.device}, peak RSS"
        f" {human_bytes(stats.peak_rss_bytes)})\n"
        f"files from the inputs: {donors or 'none'}"
    )


def run(args: argparse.Namespace) -> int:
    from paramdelta.engine.merge import merge_to_dir, preflight

    options = options_from_args(args, progress=args.format == "human")
    if args.output is None and args.push_to is None:
        raise UsageError("--output is required (unless --push-to is given)")
    if args.push_to is not None:
        check_repo_id(args.push_to, "--push-to")
    if args.output is not None:
        check_output_dir(Path(args.output), args.overwrite)
    hubs = HubFactory(args.token_file)
    prepare = None if args.stream else download_inputs
    with open_sources(hubs, base=args.base, post=args.post, new_base=args.new_base) as sources:
        plan = preflight(sources, options)  # fails here, before a weight byte moves
        if args.push_to is None:
            result = merge_to_dir(
                sources, args.output, options, overwrite=args.overwrite, plan=plan, prepare=prepare
            )
            emit(args.format, result_summary(result), human_summary(result))
            return 0
        result, published = merge_and_publish(args, sources, plan, options, prepare)
    summary = result_summary(result) | {"published": published.to_dict()}
    emit(args.format, summary, f"{human_summary(result)}\n{human_result(published)}")
    return 0


def merge_and_publish(
    args: argparse.Namespace,
    sources: dict[str, Source],
    plan: MergePlan,
    options: MergeOptions,
    prepare: Prepare | None,
) -> tuple[MergeResult, PublishResult]:
    """Merge while uploading each finished shard; then one commit with everything."""
    from paramdelta.engine.merge import merge_to_dir

    keep = args.output is not None  # without --output, shards are deleted once uploaded
    publisher = publisher_from_args(args, args.push_to, delete_uploaded=not keep)
    with tempfile.TemporaryDirectory(prefix="paramdelta-") as scratch:
        out_dir = Path(args.output) if keep else Path(scratch) / "merged"
        try:
            publisher.start()
            result = merge_to_dir(
                sources,
                out_dir,
                options,
                overwrite=args.overwrite,
                plan=plan,
                prepare=prepare,
                on_shard_written=publisher.shard_written,
            )
            published = publisher.finish(result.out_dir)
        finally:
            publisher.close()
    return result, published
