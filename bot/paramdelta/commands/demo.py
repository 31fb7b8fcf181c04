"""`paramdelta demo`: the whole cycle offline on a loopback fake Hub (see paramdelta.bot.demo)."""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from paramdelta.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workdir", type=Path, help="work here (kept) instead of in a temporary directory"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")


def run(args: argparse.Namespace) -> int:
    from paramdelta.bot.demo import default_workdir, run_demo  # torch: only when running

    started = time.perf_counter()
    workdir: Path = args.workdir or default_workdir()
    if args.workdir and workdir.exists() and any(workdir.iterdir()):
        raise UsageError(f"--workdir {workdir}: directory is not empty")
    workdir.mkdir(parents=True, exist_ok=True)
    keep = args.keep or args.workdir is not None
    try:
        run_demo(workdir)
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    where = f"Everything is in {workdir}" if keep else "Pass --keep to look at the files"
    print(f"\nDemo finished in {time.perf_counter() - started:.0f}s. {where}.")
    return 0
