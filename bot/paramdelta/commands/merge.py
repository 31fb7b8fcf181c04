"""`paramdelta merge`: new_base + alpha * (post - base), from local dirs or Hub repos;
or new_base + Σ wᵢ·(postᵢ - baseᵢ), one ``--delta POST BASE WEIGHT`` per term.

The engine (and torch) is imported only when a merge runs, so `paramdelta
--help` and the commands that never compute start fast.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from paramdelta.commands import arguments
from paramdelta.commands.output import emit
from paramdelta.engine.files import RESULT_FILES
from paramdelta.engine.merge_plan import FORMULA, SEVERAL_FORMULA
from paramdelta.engine.roles import delta_roles
from paramdelta.errors import UsageError
from paramdelta.repo_ids import check_repo_id
from paramdelta.units import human_bytes, human_seconds

if TYPE_CHECKING:
    from paramdelta.engine.stages import MergeResult


SOURCES = """\
SRC is a local folder (a path: ./base, /models/base, ~/base) or a Hub repo,
org/name[@revision]: a branch, tag or commit of it (default main). A folder of
that name wins over a repo. --base is the model --post was trained from;
--new-base the newer base the post-training is transferred onto. Several deltas:
one --delta POST BASE WEIGHT each, in order, instead of --base/--post/--alpha.
A POST may be a PEFT LoRA adapter (on its BASE)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = SOURCES
    parser.add_argument("--base", metavar="SRC", help="the model post was trained from")
    parser.add_argument("--post", metavar="SRC", help="the post-trained (instruct) model")
    parser.add_argument(
        "--delta",
        nargs=3,
        action="append",
        metavar=("POST", "BASE", "WEIGHT"),
        help="one term WEIGHT * (POST - BASE) of a several-delta merge, in order (repeat it;"
        " instead of --base/--post/--alpha); the first POST gives the tokenizer and chat template",
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
        **_recipe_summary(result),
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


def _recipe_summary(result: MergeResult) -> dict[str, object]:
    recipe = result.plan.recipe
    if recipe.weights:
        return {"formula": SEVERAL_FORMULA, "weights": list(recipe.weights)}
    return {"formula": FORMULA, "alpha": recipe.alpha}


def human_summary(result: MergeResult) -> str:
    from paramdelta.pipeline.publish import plan_notes

    stats = result.stats
    rate = f"{human_bytes(stats.bytes / stats.seconds)}/s" if stats.seconds > 0 else "-"
    roles = result.plan.roles
    donors = ", ".join(f"{f} ({role})" for f, role in result.files.items() if role in roles)
    made = [f for f, origin in result.files.items() if origin == RESULT_FILES]
    return "\n".join(
        [
            f"merged {stats.tensors} tensors ({human_bytes(stats.bytes)}, "
            f"{result.plan.written_dtype}) into {result.out_dir} in {human_seconds(stats.seconds)}"
            f" ({rate}, {stats.device}, peak RSS {human_bytes(stats.peak_rss_bytes)})",
            *delta_lines(stats.delta.summary()["overall"]),
            f"files from the inputs: {donors or 'none'}",
            f"written for this merge: {', '.join(made) or 'none'}",
            *plan_notes(result.plan),
        ]
    )


def _cosine(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def delta_lines(overall: dict[str, Any]) -> list[str]:
    """The delta report, a line per delta: the two norms and their cosine; with several
    deltas, a last line with the cosine of each pair."""
    deltas = overall.get("deltas", [overall])
    lines = []
    for i, delta in enumerate(deltas):
        post, base = delta_roles(i)
        lines.append(
            f"delta: |{post} - {base}| {delta['post_delta_norm']:.4g},"
            f" |new base - {base}| {delta['base_update_norm']:.4g},"
            f" cosine {_cosine(delta['cosine'])}"
        )
    cosines = overall.get("delta_cosines", [])
    pairs = [
        f"{delta_roles(i)[0]}/{delta_roles(j)[0]} {_cosine(cosines[i][j])}"
        for i in range(len(cosines))
        for j in range(i + 1, len(cosines))
    ]
    if pairs:
        lines.append(f"cosine between deltas: {', '.join(pairs)}")
    requant = overall.get("requant_error")  # an FP8 output's re-quantization error
    if requant is not None:
        lines[0] += f", FP8 re-quantization error {requant:.3g}"
    return lines


class Inputs(NamedTuple):
    specs: dict[str, str]  # role -> the checkpoint to read
    weights: tuple[float, ...]  # the deltas' weights; () for the one-delta form
    options: dict[str, str]  # role -> how an error names it, for a --delta's checkpoints


def inputs(args: argparse.Namespace) -> Inputs:
    """The checkpoints the command line names, by role, and the deltas' weights."""
    one_delta = {"--base": args.base, "--post": args.post}
    if args.delta is None:
        missing = [option for option, value in one_delta.items() if value is None]
        if missing:
            raise UsageError(
                f"{' and '.join(missing)} required (or one --delta POST BASE WEIGHT per delta)"
            )
        return Inputs({"base": args.base, "post": args.post, "new_base": args.new_base}, (), {})
    given = [option for option, value in one_delta.items() if value is not None]
    if args.alpha is not None:
        given.append("--alpha")
    if given:
        raise UsageError(
            f"--delta cannot be combined with {'/'.join(given)}: give every delta as"
            " --delta POST BASE WEIGHT, or one delta as --base/--post/--alpha"
        )
    specs: dict[str, str] = {}
    weights: list[float] = []
    options: dict[str, str] = {}
    for i, (post, base, text) in enumerate(args.delta):
        try:
            weight = float(text)
        except ValueError:
            weight = math.nan
        if not math.isfinite(weight):
            raise UsageError(
                f"--delta {post} {base} {text}: WEIGHT must be a finite number, not {text!r}"
            )
        post_role, base_role = delta_roles(i)
        specs |= {base_role: base, post_role: post}
        options |= {base_role: f"--delta {i + 1} BASE", post_role: f"--delta {i + 1} POST"}
        weights.append(weight)
    return Inputs(specs | {"new_base": args.new_base}, tuple(weights), options)


def run(args: argparse.Namespace) -> int:
    from paramdelta.engine.stages import preflight
    from paramdelta.engine.writer import check_output_dir
    from paramdelta.hub.sources import HubFactory, download_inputs, open_sources
    from paramdelta.pipeline.publish import merge_to_directory, push_merge

    given = inputs(args)
    recipe, runtime = arguments.recipe(args, given.weights), arguments.runtime(args)
    if args.output is None and args.push_to is None:
        raise UsageError("--output is required (unless --push-to is given)")
    if args.push_to is not None:
        check_repo_id(args.push_to, "--push-to")
    output = Path(args.output) if args.output is not None else None
    if output is not None:
        check_output_dir(output, args.overwrite)
    with open_sources(HubFactory(args.token_file), given.options, **given.specs) as opened:
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
