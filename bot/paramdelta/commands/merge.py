"""`paramdelta merge`: new_base + alpha * (post - base), from local dirs or Hub repos."""

from __future__ import annotations

import argparse
import math

from paramdelta.engine import DEFAULT_MAX_MEMORY, resolve_device
from paramdelta.errors import UsageError
from paramdelta.job import MergeOptions, MergeResult, merge_to_dir
from paramdelta.merge import DTYPE_CHOICES, FORMULA, VOCAB_POLICIES
from paramdelta.output import add_format_argument, emit, human_bytes
from paramdelta.sources import open_sources
from paramdelta.writer import DEFAULT_SHARD_SIZE, parse_size


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
        "--output", required=True, metavar="DIR", help="directory to write (created atomically)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output")
    add_merge_options(parser)
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
        help="budget for I/O and compute buffers (default 256MiB; the process adds ~300 MB)",
    )


def options_from_args(args: argparse.Namespace, *, progress: bool) -> MergeOptions:
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
    options = options_from_args(args, progress=args.format == "human")
    with open_sources(base=args.base, post=args.post, new_base=args.new_base) as sources:
        result = merge_to_dir(sources, args.output, options, overwrite=args.overwrite)
    emit(args.format, result_summary(result), human_summary(result))
    return 0
