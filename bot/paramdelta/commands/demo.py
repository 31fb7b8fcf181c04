"""`paramdelta demo`: the whole cycle offline on a loopback fake Hub (onboarding.demo)."""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from paramdelta.errors import UsageError
from paramdelta.units import human_seconds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workdir", type=Path, help="work here (kept) instead of in a temporary directory"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")


def run(args: argparse.Namespace) -> int:
    from paramdelta.onboarding.demo import default_workdir, run_demo  # torch: only when running

    started = time.perf_counter()
    workdir: Path = args.workdir or default_workdir()
    if args.workdir and workdir.exists() and any(workdir.iterdir()):
        raise UsageError(f"--workdir {workdir}: directory is not empty")
    workdir.mkdir(parents=True, exist_ok=True)
    keep = args.keep or args.workdir is not None
    try:
        card = run_demo(workdir).card_path
    finally:
        if not keep:  # nothing stays behind, not even a temporary folder for the card
            shutil.rmtree(workdir, ignore_errors=True)
    seconds = human_seconds(time.perf_counter() - started)
    if keep:
        print(f"\nThe model card it published: {card}")
        print(f"Demo finished in {seconds}. Everything is in {workdir}.")
    else:
        print(
            f"\nDemo finished in {seconds}. Its files are removed: pass --keep to keep them,"
            " the model card it published among them."
        )
    return 0
