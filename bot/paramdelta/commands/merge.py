"""`paramdelta merge`: new_base + alpha * (post - base), from local dirs or Hub repos.

The engine (and torch) is imported only when a merge runs, so `paramdelta
--help` and the commands that never compute start fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from paramdelta.commands import arguments
from paramdelta.commands.output import emit
from paramdelta.engine.files import RESULT_FILES
from paramdelta.engine.merge_plan import FORMULA
from paramdelta.errors import UsageError
from paramdelta.repo_ids import check_repo_id
from paramdelta.units import human_bytes, human_seconds

if TYPE_CHECKING:
    from paramdelta.engine.stages import MergeResult


SOURCES = """\
SRC is a local folder (a path: ./base, /models/base, ~/base) or a Hub repo,
org/name[@revision]: a branch, tag or commit of it (default main). A folder of
that name wins over a repo. --base is the model --post was trained from;
--new-base the newer base the post-training is transferred onto."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = SOURCES
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
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --output if it holds an earlier paramdelta output (never anything else)",
    )
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
    arguments.add_recipe_options(parser)
    arguments.add_device_options(parser)
    arguments.add_publish_options(parser)
    arguments.add_format_argument(parser)


def result_summary(result: MergeResult) -> dict[str, object]:
    stats = result.stats
    return {
        "output": str(result.out_dir),
        "formula": FORMULA,
        "alpha": result.plan.recipe.alpha,
        "dtype": result.plan.written_dtype,
        "requested_dtype": result.plan.recipe.dtype,
        "tensors": stats.tensors,
        "bytes": stats.bytes,
        "seconds": round(stats.seconds, 3),
        "cpu_seconds": round(stats.cpu_seconds, 3),
        "device": stats.device,
        "peak_rss_bytes": stats.peak_rss_bytes,
        "shards": [s.filename for s in result.shards],
        "files": result.files,
        "delta": stats.delta.summary(),
    }


def human_summary(result: MergeResult) -> str:
    from paramdelta.engine.merge_plan import ROLES
    from paramdelta.pipeline.publish import plan_notes

    stats = result.stats
    rate = f"{human_bytes(stats.bytes / stats.seconds)}/s" if stats.seconds > 0 else "-"
    donors = ", ".join(f"{f} ({role})" for f, role in result.files.items() if role in ROLES)
    made = [f for f, origin in result.files.items() if origin == RESULT_FILES]
    return "\n".join(
        [
            f"merged {stats.tensors} tensors ({human_bytes(stats.bytes)}, "
            f"{result.plan.written_dtype}) into {result.out_dir} in {human_seconds(stats.seconds)}"
            f" ({rate}, {stats.device}, peak RSS {human_bytes(stats.peak_rss_bytes)})",
            delta_line(stats.delta.summary()["overall"]),
            f"files from the inputs: {donors or 'none'}",
            f"written for this merge: {', '.join(made) or 'none'}",
            *plan_notes(result.plan),
        ]
    )


def delta_line(overall: dict[str, Any]) -> str:
    """The delta report in one line: the two norms and their cosine."""
    cosine = "-" if overall["cosine"] is None else f"{overall['cosine']:.4f}"
    requant = overall.get("requant_error")  # an FP8 output's re-quantization error
    return (
        f"delta: |post - base| {overall['post_delta_norm']:.4g},"
        f" |new base - base| {overall['base_update_norm']:.4g}, cosine {cosine}"
        + (f", FP8 re-quantization error {requant:.3g}" if requant is not None else "")
    )


def run(args: argparse.Namespace) -> int:
    from paramdelta.engine.stages import preflight
    from paramdelta.engine.writer import check_output_dir
    from paramdelta.hub.sources import HubFactory, download_inputs, open_sources
    from paramdelta.pipeline.publish import merge_to_directory, push_merge

    recipe, runtime = arguments.recipe(args), arguments.runtime(args)
    if args.output is None and args.push_to is None:
        raise UsageError("--output is required (unless --push-to is given)")
    if args.push_to is not None:
        check_repo_id(args.push_to, "--push-to")
    output = Path(args.output) if args.output is not None else None
    if output is not None:
        check_output_dir(output, args.overwrite)
    specs = {"base": args.base, "post": args.post, "new_base": args.new_base}
    with open_sources(HubFactory(args.token_file), **specs) as opened:
        plan = preflight(opened, recipe)  # fails here, before a weight byte moves
        sources = opened if args.stream else download_inputs(plan, opened)
        if args.push_to is None:
            assert output is not None
            result = merge_to_directory(plan, sources, output, runtime, overwrite=args.overwrite)
            emit(args.format, result_summary(result), human_summary(result))
            return 0
        publisher = arguments.publisher(args, args.push_to)
        result, published = push_merge(
            plan, sources, publisher, runtime, out_dir=output, overwrite=args.overwrite
        )
    summary = result_summary(result) | {"published": published.to_dict()}
    emit(args.format, summary, f"{human_summary(result)}\n{published.describe()}")
    return 0
