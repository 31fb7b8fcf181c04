"""Benchmark the check of cached inputs against the Hub's listing (paramdelta.hub.cache).

Builds a Hugging Face cache layout (blobs named by sha256, snapshot symlinks) of
``--files`` random weight files totalling ``--size``, then measures, side by side
and with the page cache warm (a persistent runner's cache is usually on disk,
so also see the cold number your disk gives: its read speed bounds both):

- read:         every byte read with positional reads, nothing computed (the floor)
- check:        `checked_snapshot`: resolve, open, size and sha256, one thread per core
- sha256 x1:    the same hashing on one thread

and prints seconds per GB (10**9 bytes) for each, best of ``--repeat``.

    python benchmarks/cache_check_bench.py --size 4GB --files 4
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from huggingface_hub import constants

from paramdelta.engine.recipe import parse_size
from paramdelta.hub.cache import checked_snapshot
from paramdelta.hub.client import RepoFiles
from paramdelta.hub.content_ids import HASH_PIECE

REPO = "bench/base"
SHA = "0" * 40


def build_cache(root: Path, size: int, files: int) -> tuple[RepoFiles, Path]:
    """A cache holding ``files`` random files of ``size`` bytes in all; (listing, snapshot)."""
    repo_dir = root / ("models--" + REPO.replace("/", "--"))
    (repo_dir / "blobs").mkdir(parents=True)
    snapshot = repo_dir / "snapshots" / SHA
    snapshot.mkdir(parents=True)
    sizes, hashes = {}, {}
    each = size // files
    piece = os.urandom(HASH_PIECE)
    for i in range(files):
        name = f"model-{i + 1:05d}-of-{files:05d}.safetensors"
        digest = hashlib.sha256()
        tmp = repo_dir / "blobs" / "incoming"
        with tmp.open("wb") as f:
            for offset in range(0, each, len(piece)):
                chunk = piece[: min(len(piece), each - offset)]
                chunk = bytes([i]) + chunk[1:]  # files differ
                digest.update(chunk)
                f.write(chunk)
        blob = repo_dir / "blobs" / digest.hexdigest()
        tmp.rename(blob)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
        sizes[name], hashes[name] = each, f"sha256:{digest.hexdigest()}"
    return RepoFiles(REPO, "main", SHA, sizes, {}, hashes), snapshot


def read_all(snapshot: Path, names: list[str]) -> None:
    buffer = memoryview(bytearray(HASH_PIECE))
    for name in names:
        fd = os.open(snapshot / name, os.O_RDONLY)
        try:
            offset = 0
            while n := os.preadv(fd, [buffer], offset):
                offset += n
        finally:
            os.close(fd)


def sha256_one_thread(snapshot: Path, names: list[str]) -> None:
    buffer = memoryview(bytearray(HASH_PIECE))
    for name in names:
        digest = hashlib.sha256()
        fd = os.open(snapshot / name, os.O_RDONLY)
        try:
            offset = 0
            while n := os.preadv(fd, [buffer], offset):
                digest.update(buffer[:n])
                offset += n
        finally:
            os.close(fd)


def best(repeat: int, run: Callable[[], None]) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="2GB", help="total size of the cached files")
    parser.add_argument("--files", type=int, default=4, help="how many files (shards)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (best kept)")
    parser.add_argument(
        "--workdir", type=Path, help="where to build the cache (default: a temp dir)"
    )
    args = parser.parse_args()
    size = parse_size(args.size, "--size")
    workdir = Path(tempfile.mkdtemp(prefix="cache-bench-", dir=args.workdir))
    try:
        constants.HF_HUB_CACHE = str(workdir)
        print(f"building a cache of {args.files} files, {size / 1e9:.2f} GB in {workdir} ...")
        repo, snapshot = build_cache(workdir, size, args.files)
        names = sorted(repo.sizes)
        gigabytes = sum(repo.sizes.values()) / 1e9
        read_all(snapshot, names)  # warm the page cache

        def check() -> None:
            source = checked_snapshot(repo, snapshot, names, lambda paths: snapshot)
            source.close()

        rows = [
            ("read (the floor)", best(args.repeat, lambda: read_all(snapshot, names))),
            (f"check ({os.cpu_count()} threads)", best(args.repeat, check)),
            ("sha256, 1 thread", best(args.repeat, lambda: sha256_one_thread(snapshot, names))),
        ]
        print(f"{'':24} {'seconds':>8} {'s/GB':>6}")
        for name, seconds in rows:
            print(f"{name:24} {seconds:8.2f} {seconds / gigabytes:6.2f}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
