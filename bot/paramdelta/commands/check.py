"""`paramdelta check DIR|org/name[@rev]`: the pre-publish check on any checkpoint.

The same check `run` makes before it commits a merge (paramdelta.pipeline.check):
the model and tokenizer load with transformers, the chat template renders,
greedy generation gives text, the logits are finite, and the perplexity on the
shipped texts is within a factor of the better of the post model's and the new
base's. Those two come from --post/--new-base, or else from the checkpoint's own
paramdelta.json (a merge this bot published). Exit code 9 when it fails.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING

from paramdelta.commands import arguments
from paramdelta.commands.output import emit
from paramdelta.errors import CheckError, UsageError
from paramdelta.pipeline.check_rules import DEFAULT_PERPLEXITY_FACTOR, INSTALL_HINT
from paramdelta.rendering.check_report import STEP_TITLES

if TYPE_CHECKING:
    from paramdelta.pipeline.check_rules import CheckReport


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint", metavar="DIR|REPO", help="a checkpoint directory or org/name[@revision]"
    )
    parser.add_argument(
        "--post",
        metavar="SRC",
        help="the post-trained model to compare perplexity with"
        " (default: the one the checkpoint's paramdelta.json names)",
    )
    parser.add_argument(
        "--new-base",
        metavar="SRC",
        help="the new base to compare perplexity with (default: from paramdelta.json)",
    )
    parser.add_argument(
        "--perplexity-factor",
        type=float,
        default=DEFAULT_PERPLEXITY_FACTOR,
        help="pass when the perplexity is at most this many times the better reference's"
        f" (default {DEFAULT_PERPLEXITY_FACTOR:g})",
    )
    arguments.add_device_argument(parser, "where the model runs")
    arguments.add_token_file_argument(parser)
    arguments.add_format_argument(parser)


def references(args: argparse.Namespace, directory: Path) -> dict[str, str]:
    """role -> spec of the post model and new base: the arguments', else the lineage's."""
    from paramdelta.engine.adapter import ADAPTER_CONFIG
    from paramdelta.pipeline import lineage

    specs = {"post": args.post, "new_base": args.new_base}
    record_path = directory / lineage.FILENAME
    if None in specs.values() and record_path.is_file():
        try:
            record = lineage.read_local(record_path) or {}
            pinned = {c["role"]: f"{c['repo']}@{c['sha']}" for c in record["checkpoints"]}
            post = next(c for c in record["checkpoints"] if c["role"] == "post")
        except (KeyError, TypeError, StopIteration) as e:
            raise UsageError(f"{record_path}: not a paramdelta lineage record ({e})") from None
        specs = {role: spec or pinned.get(role) for role, spec in specs.items()}
        if args.post is None and ADAPTER_CONFIG in post.get("files", {}):
            specs["base"] = pinned.get("base")  # the recorded post is an adapter on it
    return {role: spec for role, spec in specs.items() if spec}


def human_report(report: CheckReport) -> str:
    lines = [
        f"{'pass' if s.passed else 'FAIL'}  {STEP_TITLES[s.step]}: {s.detail}" for s in report.steps
    ]
    for g in report.generation:
        problem = f" ({g['problem']})" if g["problem"] else ""
        lines.append(f"      {g['prompt']!r} -> {g['text']!r}{problem}")
    lines.append(f"pre-publish check {report.status} in {report.seconds:.1f}s on {report.device}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from paramdelta.hub.sources import HubFactory, loadable, open_sources
    from paramdelta.pipeline.check import run_check, transformers_installed

    factor: float = args.perplexity_factor
    if not (math.isfinite(factor) and factor > 0):
        raise UsageError(f"--perplexity-factor must be a finite number above 0, not {factor}")
    if not transformers_installed():
        raise CheckError(
            f"pre-publish check cannot run: transformers is not installed ({INSTALL_HINT})"
        )
    factory = HubFactory(args.token_file)
    with open_sources(factory, checkpoint=args.checkpoint) as opened:
        # A Hub repo's files are checked against its listing, as `run` checks its inputs.
        directory = loadable(opened["checkpoint"]).directory
        assert directory is not None
        with open_sources(factory, **references(args, directory)) as sources:
            report = run_check(directory, sources, device=args.device, perplexity_factor=factor)
    emit(args.format, report.to_dict(), human_report(report))
    if report.failed:
        raise report.error()
    return 0
