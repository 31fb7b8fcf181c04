"""`paramdelta demo`: the whole cycle offline on a loopback fake Hub (onboarding.demo)."""

from __future__ import annotations

import argparse
import shutil
import tempfile
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
        if not keep and card is not None:  # the rest goes; the card it points to stays
            card = Path(shutil.move(card, tempfile.mkdtemp(prefix="paramdelta-demo-card-")))
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    where = f"Everything is in {workdir}" if keep else "Pass --keep to keep all the files"
    print(f"\nThe model card it published: {card}")
    print(f"Demo finished in {human_seconds(time.perf_counter() - started)}. {where}.")
    return 0
