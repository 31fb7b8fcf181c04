"""Benchmark merging from the Hub, with Xet storage as on the real Hub, against its floor.

Serves the checkpoints of merge_bench (three ~``--size`` bf16 checkpoints) from
a loopback fake Hub in this process (large files in hf_xet's local CAS, as the
Hub keeps them on Xet), then measures each command in its own process under
/usr/bin/time -v:

- floor:            huggingface_hub's own Xet download of the three inputs plus
                    its Xet upload of one output-sized file, in one process
- local:            `paramdelta merge` of the three directories on disk
- stream:           `--stream`: Xet download streams, output to a directory
- stream + push:    `--stream --push-to`: each output shard is uploaded through
                    Xet as soon as it is written, then deleted; one commit
- download (cold):  the default: inputs fetched into a fresh HF cache first
- download (warm):  base and post already in the cache: only the new base comes

For each: wall time, peak RSS, the peak extra disk used in the command's
temporary directory and HF cache (sampled every 10 ms), the fake Hub's
`/resolve/` requests, and which repos Xet read tokens were asked for.

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
from typing import NamedTuple

from common import ROLES, Measurement, generate, gib, settle, timed
from paramdelta.engine.recipe import parse_size
from paramdelta.testing.hub import FakeHub
from paramdelta.testing.seed import publish_folder

TOKEN = "hf_bench_token"  # noqa: S105 - the fake Hub's own
REPOS = {"base": "bench/base", "post": "bench/post", "new_base": "bench/new-base"}
# huggingface_hub by itself: downloads (argv: repos), and the floor, in one process (so one
# Python start, as a merge has): download the inputs, upload an output-sized file (argv[1]).
DOWNLOAD = """
import sys
from huggingface_hub import HfApi, snapshot_download
for repo in sys.argv[1:]:
    if repo.count("/") == 1:
        snapshot_download(repo)
"""
FLOOR = (
    DOWNLOAD
    + """
HfApi().create_repo("bench/floor-out", exist_ok=True)
HfApi().upload_file(path_or_fileobj=sys.argv[1], path_in_repo="model.safetensors",
                    repo_id="bench/floor-out")
"""
)


def disk_usage(paths: list[Path]) -> int:
    """Bytes allocated under ``paths``, counting deleted files that a process still holds open
    (the publisher unlinks a shard before its upload ends: it still takes disk)."""
    total = 0
    roots = [str(p) for p in paths]
    for root in paths:
        # os.walk skips a folder removed while it looks (rglob raised: the sampler died, and
        # a run's disk read 0); a file renamed or deleted meanwhile is skipped too.
        for folder, _, names in os.walk(root):
            for name in names:
                with contextlib.suppress(FileNotFoundError):
                    total += (Path(folder) / name).lstat().st_blocks * 512
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


class Row(NamedTuple):
    m: Measurement
    disk: int
    resolves: int
    read_tokens: str


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
    out_bytes = sum(p.stat().st_size for p in trio["new_base"].glob("*.safetensors"))
    scratch = Path(tempfile.mkdtemp(prefix="hub-bench-", dir=args.workdir))
    hub = FakeHub(data_dir=scratch / "fake-hub", token=TOKEN).start()
    try:
        print("seeding the fake Hub (through hf_xet) ...")
        for role in ROLES:
            publish_folder(hub, REPOS[role], trio[role])
        upload = scratch / "output-sized.bin"
        with upload.open("wb") as f:  # random: nothing to deduplicate, like a merge's output
            for _ in range(out_bytes // 2**20):
                f.write(os.urandom(2**20))
        tmp, cache = scratch / "tmp", scratch / "hf-home"
        env = {
            **os.environ,
            "HF_ENDPOINT": hub.url,
            "HF_TOKEN": TOKEN,
            "HF_HOME": str(cache),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "TMPDIR": str(tmp),
        }
        env.pop("HF_HUB_DISABLE_XET", None)
        merge = [sys.executable, "-m", "paramdelta", "merge", "--shard-size", args.shard_size]
        remote = ["--base", REPOS["base"], "--post", REPOS["post"], "--new-base", REPOS["new_base"]]
        local = ["--base", str(trio["base"]), "--post", str(trio["post"])]
        local += ["--new-base", str(trio["new_base"])]
        out = scratch / "out"
        warm = [sys.executable, "-c", DOWNLOAD, REPOS["base"], REPOS["post"]]
        runs: dict[str, tuple[list[str], list[str] | None]] = {
            "floor (hf_hub Xet)": (
                [sys.executable, "-c", FLOOR, str(upload), *REPOS.values()],
                None,
            ),
            "local": ([*merge, *local, "--output", str(out)], None),
            "stream": ([*merge, *remote, "--stream", "--output", str(out)], None),
            "stream + push": ([*merge, *remote, "--stream", "--push-to", "me/bench-out"], None),
            "download (cold)": ([*merge, *remote, "--output", str(out)], None),
            "download (warm)": ([*merge, *remote, "--output", str(out)], warm),
        }
        rows: list[Row] = []
        for name, (argv_, prepare) in runs.items():
            best: Row | None = None
            for _ in range(args.repeat):
                for path in (out, tmp, cache):
                    shutil.rmtree(path, ignore_errors=True)
                tmp.mkdir()
                if prepare is not None:  # base and post into the cache, as a runner keeps them
                    timed("prepare", shlex.join(prepare), env)
                settle()
                hub.clear_requests()
                with DiskSampler([tmp, cache]) as disk:
                    m = timed(name, shlex.join(argv_), env)
                resolves = sum("/resolve/" in r.path for r in hub.requests)
                tokens = ", ".join(
                    role for role in ROLES if hub.xet_token_requests("read", REPOS[role])
                )
                if best is None or m.seconds < best.m.seconds:
                    best = Row(m, disk.peak, resolves, tokens or "-")
            assert best is not None
            rows.append(best)
    finally:
        hub.stop()
        shutil.rmtree(scratch, ignore_errors=True)

    shard = parse_size(args.shard_size, "--shard-size")
    floor = rows[0].m.seconds
    print(
        f"\ninputs: 3 x {in_bytes / 3 / 1e9:.2f} GB, output shards of {shard / 1e6:.0f} MB,"
        f" loopback fake Hub with hf_xet's local CAS, best of {args.repeat}"
    )
    print(
        f"{'method':<20} {'wall s':>7} {'x floor':>8} {'peak RSS':>10} {'extra disk':>11}"
        f" {'/resolve':>9} {'per GB':>7}  Xet reads of"
    )
    for row in rows:
        m = row.m
        print(
            f"{m.name:<20} {m.seconds:>7.2f} {m.seconds / floor:>8.2f} {gib(m.peak_rss_bytes):>10}"
            f" {gib(row.disk):>11} {row.resolves:>9} {row.resolves / (in_bytes / 1e9):>7.1f}"
            f"  {row.read_tokens}"
        )
    print("(extra disk: the command's TMPDIR and HF cache, open deleted files included;")
    print(" 'local', 'stream' and 'download' write their --output, which is not counted;")
    print(" 'download (warm)': base and post were in the cache before it started)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
