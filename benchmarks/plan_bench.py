"""Benchmark `paramdelta plan` over many targets: API calls per target and wall time.

A loopback fake Hub in this process holds ``--targets`` targets, half following
a branch and half following a family of releases; half of them are already
published with a current paramdelta.json (up to date), half are not (pending).
`paramdelta plan` then runs in its own process under /usr/bin/time -v, and
the fake Hub's request log gives the calls per target.

    python benchmarks/plan_bench.py --targets 100
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

from common import gib, timed
from paramdelta.pipeline import lineage
from paramdelta.testing.hub import FakeHub

TOKEN = "hf_bench_token"  # noqa: S105 - the fake Hub's own
CONFIG = json.dumps({"model_type": "llama"}).encode()


def seed(hub: FakeHub, targets: int) -> str:
    """Repos and a watchlist for ``targets`` targets; returns the watchlist text."""
    epoch = datetime(2026, 1, 1, tzinfo=timezone.utc)
    heads = {}
    for repo in ("bench/base", "bench/post"):
        hub.create_repo(repo)
        heads[repo] = hub.commit(repo, {"config.json": CONFIG})
    lines = ["targets:"]
    for i in range(targets):
        if i % 2:  # a family: two releases, the newer one wins
            for version in (1, 2):
                repo = f"fam{i}/Model-{version}-7B"
                hub.create_repo(repo, created_at=epoch + timedelta(days=version))
                heads[repo] = hub.commit(repo, {"config.json": CONFIG})
            new_base, spec = f"fam{i}/Model-2-7B", f"{{author: fam{i}, pattern: 'Model-*-7B'}}"
        else:
            new_base = spec = f"bench/new-{i}"
            hub.create_repo(new_base)
            heads[new_base] = hub.commit(new_base, {"config.json": CONFIG})
        output = f"out/target-{i}"
        lines.append(
            f"  - {{name: t{i}, base: bench/base, post: bench/post, new_base: {spec},"
            f" output: {output}}}"
        )
        if i % 4 < 2:  # published and current
            record = lineage.build_record(
                target=f"t{i}",
                checkpoints={
                    role: {"repo": repo, "revision": "main", "sha": heads[repo]}
                    for role, repo in (
                        ("base", "bench/base"),
                        ("post", "bench/post"),
                        ("new_base", new_base),
                    )
                },
                recipe={"alpha": 1.0, "dtype": "auto", "vocab_policy": "error"},
                files={},
                output={"repo": output, "files": {}},  # a record of no weights: none there
            )
            hub.create_repo(output)
            hub.commit(output, {lineage.FILENAME: lineage.encode(record)})
    return "\n".join(lines) + "\n"


def _kind(path: str) -> str:
    if path == "/api/models":
        return "list models"
    if path.startswith("/api/models/"):
        return "refs" if "/refs" in path else "model info"
    return "paramdelta.json" if path.endswith(lineage.FILENAME) else "other"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--targets", type=int, default=100)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="plan-bench-") as scratch, FakeHub(token=TOKEN) as hub:
        watchlist = Path(scratch) / "watchlist.yaml"
        watchlist.write_text(seed(hub, args.targets))
        env = {
            **os.environ,
            "HF_ENDPOINT": hub.url,
            "HF_TOKEN": TOKEN,
            "HF_HOME": str(Path(scratch) / "hf-home"),
            "HF_HUB_DISABLE_TELEMETRY": "1",
        }
        argv_ = [sys.executable, "-m", "paramdelta", "plan", "--watchlist", str(watchlist)]
        hub.clear_requests()
        m = timed("plan", shlex.join([*argv_, "--format", "json"]), env)
        requests = [r for r in hub.requests if r.server == "hub"]
        pending = json.loads(m.stdout)
        startup = timed("startup", shlex.join([sys.executable, "-m", "paramdelta", "--help"]), env)

    by_kind = Counter(_kind(r.path) for r in requests)
    print(f"\n{args.targets} targets ({len(pending)} pending), loopback fake Hub")
    print(f"plan wall time     {m.seconds:.2f} s  (CLI start-up alone: {startup.seconds:.2f} s)")
    print(f"per target         {(m.seconds - startup.seconds) / args.targets * 1000:.1f} ms")
    print(f"API calls          {len(requests)} = {len(requests) / args.targets:.2f} per target")
    for kind, count in sorted(by_kind.items()):
        print(f"  {kind:<16} {count}")
    print(f"peak RSS           {gib(m.peak_rss_bytes)}")
    print("weight bytes       0" if not hub.weight_bytes_served() else "weight bytes: SOME")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
