"""`paramdelta check DIR|org/name[@rev]`: the pre-publish check on any checkpoint.

The same check `run` makes before it commits a merge (paramdelta.pipeline.check):
the model and tokenizer load with transformers, the chat template renders,
greedy generation gives text, the logits are finite, and the perplexity on the
shipped texts is within a factor of the better of the post model's and the new
base's. Those two come from --post/--new-base, or else from the checkpoint's own
paramdelta.json: the Hub commits it pins, or the local folders a local merge read,
if they are still there. Exit code 9 when it fails. ``--record`` writes the
report into DIR's paramdelta.json and card, as `run` does before it commits, so
that `publish DIR` ships a checked model. With ``--format json`` an error is a
JSON object on stdout too.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from paramdelta.commands import arguments
from paramdelta.commands.output import emit
from paramdelta.errors import CheckError, UsageError, as_error
from paramdelta.pipeline.check_rules import DEFAULT_PERPLEXITY_FACTOR, INSTALL_HINT
from paramdelta.rendering.check_report import STEP_TITLES
from paramdelta.units import human_seconds

if TYPE_CHECKING:
    from paramdelta.pipeline.check_rules import CheckReport

MODEL_WORDS = {"post": "post model", "new_base": "new base", "base": "adapter's base"}
# What to pass instead of a recorded folder that is gone: the adapter's base is not an argument,
# so a full post model stands in for adapter + base.
FLAGS = {"post": "--post DIR", "new_base": "--new-base DIR", "base": "--post DIR"}


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
    parser.add_argument(
        "--record",
        action="store_true",
        help="write the report into DIR's paramdelta.json and README.md, as `run` does"
        " before it publishes (DIR: a directory written by `paramdelta merge --output`)",
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
    shown = f"{args.checkpoint.rstrip('/')}/{lineage.FILENAME}"  # not a Hub repo's cache path
    if None in specs.values() and record_path.is_file():
        try:
            record = lineage.read_local(record_path) or {}
            recorded = {c["role"]: _recorded_spec(c) for c in record["checkpoints"]}
            post = next(c for c in record["checkpoints"] if c["role"] == "post")
        except (KeyError, TypeError, StopIteration) as e:
            raise UsageError(f"{shown}: not a paramdelta lineage record ({e})") from None
        specs = {role: spec or recorded.get(role) for role, spec in specs.items()}
        if args.post is None and ADAPTER_CONFIG in post.get("files", {}):
            specs["base"] = recorded.get("base")  # the recorded post is an adapter on it
        if gone := [role for role, spec in specs.items() if spec == "" and role in recorded]:
            raise UsageError(f"{shown}: {_gone(record, gone)}")
    return {role: spec for role, spec in specs.items() if spec}


def _recorded_spec(checkpoint: dict[str, Any]) -> str:
    """How the record names a checkpoint to open: ``repo@sha``, the local folder the merge
    read, or '' for a local folder that is not here (moved, or a published record, which
    keeps only its name)."""
    if checkpoint["repo"] is not None:
        return f"{checkpoint['repo']}@{checkpoint['sha']}"
    folder = Path(str(checkpoint.get("path")))
    return str(folder) if folder.is_absolute() and folder.is_dir() else ""


def _gone(record: dict[str, Any], roles: list[str]) -> str:
    """The one line that says which local inputs are not here, and what to pass instead."""
    paths = {c["role"]: c.get("path") for c in record["checkpoints"]}
    models = " and ".join(MODEL_WORDS[r] for r in roles)
    folders = " and ".join(str(paths[r]) for r in roles)
    flags = " and ".join(dict.fromkeys(FLAGS[r] for r in roles))
    verb, which = ("was", "which is") if len(roles) == 1 else ("were", "which are")
    return f"the {models} {verb} read from {folders}, {which} not here; pass {flags}"


def human_report(report: CheckReport) -> str:
    lines = [
        f"{'pass' if s.passed else 'FAIL'}  {STEP_TITLES[s.step]}: {s.detail}" for s in report.steps
    ]
    for g in report.generation:
        problem = f" ({g['problem']})" if g["problem"] else ""
        lines.append(f"      {g['prompt']!r} -> {g['text']!r}{problem}")
    took = human_seconds(report.seconds)
    lines.append(f"pre-publish check {report.status} in {took} on {report.device}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    try:
        report = check(args)
    except Exception as e:  # JSON readers get the error as JSON (the CLI prints the line)
        if args.format == "json":
            error = as_error(e)
            emit("json", {"status": "error", "error": str(error), "exit_code": error.exit_code}, "")
        raise
    emit(args.format, report.to_dict(), human_report(report))
    if report.failed:
        raise report.error()
    return 0


def check(args: argparse.Namespace) -> CheckReport:
    """Run the check (and record it, with --record); errors before a report are raised."""
    from paramdelta.hub.sources import HubFactory, loadable, open_sources
    from paramdelta.pipeline.check import run_check, transformers_installed

    if args.record:  # before the check runs: it has a record to write into
        from paramdelta.pipeline.publish import read_record

        if not Path(args.checkpoint).is_dir():
            raise UsageError(
                f"--record: {args.checkpoint} is not a local directory; --record writes into"
                " a directory written by `paramdelta merge --output`"
            )
        read_record(Path(args.checkpoint))
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
    if args.record:
        from paramdelta.pipeline.publish import record_check

        record_check(directory, report)
    return report
