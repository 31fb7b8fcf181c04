"""Benchmark a fan-out: one merge of 8 output shards in 4 legs, run as 4 concurrent processes.

Serves three ~``--size`` bf16 checkpoints from a loopback fake Hub in this process,
then runs `paramdelta run --target big --leg K/4 --stream` for K = 1..4 at the same
time (each under /usr/bin/time -v), then `paramdelta run --target big --finish`.
From the fake Hub's request log it reports, per leg, the weight bytes it read
(told apart by each process's User-Agent, HF_HUB_USER_AGENT_ORIGIN) and the bytes
it uploaded (the LFS objects of its own shards); for the finish job, the bytes
uploaded (copies only: none); and whether main's shards are bit-exact with a
local one-process merge of the same inputs.

The uploads use the legacy LFS path (HF_HUB_DISABLE_XET=1) and the inputs are
stored as legacy LFS objects: hf_xet's local CAS, which the fake Hub hands out
for Xet, is read and written by the client directly (no request to count), and
one process at a time can hold it. The bytes are the same either way.

    python benchmarks/fanout_bench.py --size 200MB
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import ROLES, Measurement, settle, timed
from paramdelta.engine.checkpoint import LocalSource
from paramdelta.engine.recipe import Recipe, Runtime, parse_size
from paramdelta.engine.stages import merge_to_dir, preflight
from paramdelta.engine.writer import plan_shards
from paramdelta.testing.checkpoints import config_for_size, make_trio
from paramdelta.testing.hub import FakeHub

TOKEN = "hf_bench_token"  # noqa: S105 - the fake Hub's own
REPOS = {"base": "bench/base", "post": "bench/post", "new_base": "bench/new-base"}
OUTPUT = "bench/big-ParamDelta"
LEGS = 4
SHARDS = 8
WATCHLIST = """\
targets:
  - name: big
    base: {base}
    post: {post}
    new_base: {new_base}
    output: {output}
    shard_size: "{shard_size}"
    legs: {legs}
    check: off
"""


def generate(workdir: Path, size: int) -> dict[str, Path]:
    """Three related checkpoints of ~``size`` bytes each with many small tensors (a small
    vocabulary), so that 8 shards of about equal size exist, as in a 405B model's layout."""
    root = workdir / "in-fanout"
    marker = workdir / "inputs-fanout.json"
    if marker.exists() and json.loads(marker.read_text()) == {"size": size}:
        return {role: root / role for role in ROLES}
    shutil.rmtree(root, ignore_errors=True)
    # Small dimensions, many layers: many tensors to spread over 8 shards.
    config = config_for_size(size, dims=(1024, 2816, 8192), min_layers=8)
    print(f"generating three checkpoints of ~{size / 1e6:.0f} MB in {root} ...")
    trio = make_trio(root, config=config, max_shard_size=size // 4 + 1)
    marker.write_text(json.dumps({"size": size}))
    return trio


def shard_size_for(trio: dict[str, Path], shards: int) -> int:
    """The smallest shard size (in KB steps) that cuts the output into ``shards`` shards."""
    plan = preflight({role: LocalSource(trio[role]) for role in ROLES}, Recipe())
    size = plan.nbytes // shards
    while len(plan_shards(plan.items, size)) > shards:
        size += 1000
    return size


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="300MB", help="size of each checkpoint (default 300MB)")
    parser.add_argument("--workdir", type=Path, default=Path("bench-out"))
    args = parser.parse_args(argv)

    trio = generate(args.workdir, parse_size(args.size, "--size"))
    shard_size = shard_size_for(trio, SHARDS)
    inputs = {
        f"{role}/{p.name}": p.stat().st_size
        for role in ROLES
        for p in trio[role].glob("*.safetensors")
    }
    in_bytes = sum(inputs.values())
    largest_input_shard = max(inputs.values())
    scratch = Path(tempfile.mkdtemp(prefix="fanout-bench-", dir=args.workdir))
    hub = FakeHub(data_dir=scratch / "fake-hub", token=TOKEN).start()
    try:
        print("seeding the fake Hub (legacy LFS objects) ...")
        for role in ROLES:
            hub.create_repo(REPOS[role])
            files = {p.relative_to(trio[role]).as_posix(): p for p in trio[role].iterdir()}
            hub.commit(REPOS[role], files, xet=False)
        watchlist = scratch / "watchlist.yaml"
        watchlist.write_text(
            WATCHLIST.format(**REPOS, output=OUTPUT, shard_size=shard_size, legs=LEGS)
        )
        env = {
            **os.environ,
            "HF_ENDPOINT": hub.url,
            "HF_TOKEN": TOKEN,
            "HF_HOME": str(scratch / "hf-home"),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "HF_HUB_DISABLE_XET": "1",
        }
        run = [sys.executable, "-m", "paramdelta", "run", "--watchlist", str(watchlist)]
        run += ["--target", "big", "--format", "json"]

        def leg(k: int) -> Measurement:
            tmp = scratch / f"tmp-{k}"
            tmp.mkdir()
            leg_env = {**env, "HF_HUB_USER_AGENT_ORIGIN": f"paramdelta-leg-{k}", "TMPDIR": str(tmp)}
            command = shlex.join([*run, "--leg", f"{k}/{LEGS}", "--stream"])
            return timed(f"leg {k}", command, leg_env)

        settle()
        print(f"running {LEGS} legs at once ...")
        with ThreadPoolExecutor(LEGS) as pool:
            legs = list(pool.map(leg, range(1, LEGS + 1)))
        requests = hub.requests
        (branch,) = [b for b in hub.branches(OUTPUT) if b.startswith("paramdelta-staging/")]
        parts = {
            k: json.loads(hub.read_file(OUTPUT, f"paramdelta-legs/leg-{k}-of-{LEGS}.json", branch))
            for k in range(1, LEGS + 1)
        }
        rows = []
        for k, m in enumerate(legs, start=1):
            oids = {cid.removeprefix("sha256:") for cid in parts[k]["shards"].values()}
            uploaded = sum(
                r.received
                for r in requests
                if r.server == "blobs" and r.method == "PUT" and r.path.rsplit("/", 1)[-1] in oids
            )
            read = hub.weight_bytes_served(f"paramdelta-leg-{k}")
            rows.append((m, len(oids), read, uploaded))

        hub.clear_requests()
        settle()
        finish_env = {**env, "TMPDIR": str(scratch)}
        finish = timed("finish", shlex.join([*run, "--finish"]), finish_env)
        result = json.loads(finish.stdout)["results"][0]
        assert result["status"] == "published", result
        finish_uploaded = hub.lfs_bytes_uploaded
        finish_read = hub.weight_bytes_served()
        commits = hub.commits(OUTPUT)

        local = merge_to_dir(
            {role: LocalSource(trio[role]) for role in ROLES},
            scratch / "local",
            Recipe(shard_size=shard_size),
            Runtime(progress=False),
        )
        names = sorted(p.name for p in local.out_dir.glob("*.safetensors"))
        published = sorted(f for f in hub.list_files(OUTPUT) if f.endswith(".safetensors"))
        exact = names == published and all(
            sha256(hub.read_file(OUTPUT, n)) == sha256((local.out_dir / n).read_bytes())
            for n in names
        )
    finally:
        hub.stop()
        shutil.rmtree(scratch, ignore_errors=True)

    bound = in_bytes / LEGS + largest_input_shard
    print(
        f"\ninputs: 3 x {in_bytes / 3 / 1e6:.0f} MB ({in_bytes} bytes), {len(names)} output shards"
        f" of <= {shard_size / 1e6:.1f} MB, {LEGS} legs as {LEGS} concurrent processes,"
        " loopback fake Hub"
    )
    print(
        f"{'job':<8} {'shards':>6} {'read bytes':>12} {'of input':>9} {'uploaded':>12}"
        f" {'wall s':>7} {'peak RSS':>9}"
    )
    for m, shards, read, uploaded in rows:
        print(
            f"{m.name:<8} {shards:>6} {read:>12} {read / in_bytes:>8.1%} {uploaded:>12}"
            f" {m.seconds:>7.1f} {m.peak_rss_bytes / 2**20:>6.0f} MiB"
        )
    print(
        f"{'finish':<8} {'-':>6} {finish_read:>12} {finish_read / in_bytes:>8.1%}"
        f" {finish_uploaded:>12} {finish.seconds:>7.1f} {finish.peak_rss_bytes / 2**20:>6.0f} MiB"
    )
    worst = max(read for _, _, read, _ in rows)
    print(
        f"each leg <= 1/{LEGS} of the input + one input shard ({bound:.0f} bytes):"
        f" {worst <= bound} (most: {worst})"
    )
    print(f"finish: {finish_uploaded} bytes uploaded (copies only); {len(commits)} commits on main")
    print(f"bit-exact with a one-process merge: {exact}")
    return 0 if exact and worst <= bound and finish_uploaded == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
