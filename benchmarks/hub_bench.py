"""Benchmark merging from the Hub: `--stream` against the local merge, memory and disk.

Serves the checkpoints of merge_bench (three ~``--size`` bf16 checkpoints) from
a loopback fake Hub in this process, then measures `paramdelta merge` in its
own process under /usr/bin/time -v:

- local:            the three directories on disk (the baseline)
- stream:           `--stream`: byte ranges from the Hub, output to a directory
- stream + push:    `--stream --push-to`: each output shard is uploaded as soon as
                    it is written, then deleted; one commit at the end
- download:         the default: inputs fetched into a fresh HF cache first

For each: wall time, peak RSS, and the peak extra disk used in the merge's
temporary directory and HF cache (sampled every 10 ms), against the output
shard size.

    python benchmarks/hub_bench.py --size 1GB --shard-size 250MB
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import ROLES, Measurement, generate, gib, settle, timed
from paramdelta.engine.options import parse_size
from paramdelta.testing.hub import FakeHub
from paramdelta.testing.seed import publish_folder

TOKEN = "hf_bench_token"  # noqa: S105 - the fake Hub's own
REPOS = {"base": "bench/base", "post": "bench/post", "new_base": "bench/new-base"}


def disk_usage(paths: list[Path]) -> int:
    """Bytes allocated under ``paths``, counting deleted files that a process still holds open
    (the publisher unlinks a shard before its upload ends: it still takes disk)."""
    total = 0
    roots = [str(p) for p in paths]
    for root in paths:
        for file in root.rglob("*"):
            with contextlib.suppress(FileNotFoundError):  # renamed or deleted while we looked
                total += file.lstat().st_blocks * 512
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        with contextlib.suppress(OSError):
            target = str(fd.readlink())
            if target.endswith(" (deleted)") and target.startswith(tuple(roots)):
                total += fd.stat().st_blocks * 512
    return total


class DiskSampler:
    """Peak bytes under some directories while a command runs."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths, self.peak = paths, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, disk_usage(self.paths))
            time.sleep(0.01)

    def __enter__(self) -> DiskSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="1GB", help="size of each checkpoint (default 1GB)")
    parser.add_argument("--shard-size", default="250MB", help="output shard size (default 250MB)")
    parser.add_argument("--workdir", type=Path, default=Path("bench-out"))
    parser.add_argument("--repeat", type=int, default=1, help="runs per method; the best counts")
    args = parser.parse_args(argv)

    trio = generate(args.workdir, parse_size(args.size, "--size"))
    in_bytes = sum(p.stat().st_size for role in ROLES for p in trio[role].glob("*.safetensors"))
    scratch = Path(tempfile.mkdtemp(prefix="hub-bench-", dir=args.workdir))
    hub = FakeHub(data_dir=scratch / "fake-hub", token=TOKEN).start()
    try:
        print("seeding the fake Hub ...")
        for role in ROLES:
            publish_folder(hub, REPOS[role], trio[role])
        tmp, cache = scratch / "tmp", scratch / "hf-home"
        env = {
            **os.environ,
            "HF_ENDPOINT": hub.url,
            "HF_TOKEN": TOKEN,
            "HF_HOME": str(cache),
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "TMPDIR": str(tmp),
        }
        merge = [sys.executable, "-m", "paramdelta", "merge", "--shard-size", args.shard_size]
        remote = ["--base", REPOS["base"], "--post", REPOS["post"], "--new-base", REPOS["new_base"]]
        local = ["--base", str(trio["base"]), "--post", str(trio["post"])]
        local += ["--new-base", str(trio["new_base"])]
        out = scratch / "out"
        runs = {
            "local": [*merge, *local, "--output", str(out)],
            "stream": [*merge, *remote, "--stream", "--output", str(out)],
            "stream + push": [*merge, *remote, "--stream", "--push-to", "me/bench-out"],
            "download (cold cache)": [*merge, *remote, "--output", str(out)],
        }
        rows: list[tuple[Measurement, int]] = []
        for name, argv_ in runs.items():
            best: tuple[Measurement, int] | None = None
            for _ in range(args.repeat):
                for path in (out, tmp, cache):
                    shutil.rmtree(path, ignore_errors=True)
                tmp.mkdir()
                settle()
                with DiskSampler([tmp, cache]) as disk:
                    m = timed(name, shlex.join(argv_), env)
                if best is None or m.seconds < best[0].seconds:
                    best = (m, disk.peak)
            assert best is not None
            rows.append(best)
    finally:
        hub.stop()
        shutil.rmtree(scratch, ignore_errors=True)

    shard = parse_size(args.shard_size, "--shard-size")
    print(
        f"\ninputs: 3 x {in_bytes / 3 / 1e9:.2f} GB, output shards of {shard / 1e6:.0f} MB,"
        f" loopback fake Hub, best of {args.repeat}"
    )
    print(f"{'method':<24} {'wall s':>8} {'in GB/s':>8} {'peak RSS':>11} {'extra disk':>11}")
    for m, disk in rows:
        print(
            f"{m.name:<24} {m.seconds:>8.2f} {in_bytes / m.seconds / 1e9:>8.2f}"
            f" {gib(m.peak_rss_bytes):>11} {gib(disk):>11}"
        )
    print("(extra disk: the merge's TMPDIR and HF cache, open deleted files included;")
    print(" 'local' and 'stream' write their --output, which is not counted)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
