"""Benchmark the per-tensor cost: a DeepSeek-V3-shaped trio against the same bytes in few tensors.

The many-tensor trio has DeepSeek-V3's tensor count (61 layers x 256 experts x 3
projections, each with its block scales: ~95k tensors in ~160 shards per
checkpoint) at tiny dimensions; the few-tensor trio holds the same bytes with
each layer's experts fused into one tensor per projection (~1.2k tensors).
Each `paramdelta merge` (plan + merge, in its own process under /usr/bin/time -v)
runs side by side; the difference in wall time over the difference in tensor
count is the per-tensor overhead, quoted in seconds per 10k tensors.

    python benchmarks/moe_bench.py                     # FP8 and bf16 trios, this tree
    python benchmarks/moe_bench.py --baseline /tmp/old # also an older tree (bf16 only:
                                                       # an engine before FP8 refuses it)
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
from pathlib import Path

from common import ROLES, Measurement, gib, settle, timed
from paramdelta.testing.fp8_checkpoints import deepseek_config, deepseek_tensors, write_generated

SHARDS = 160


def generate(workdir: Path, layout: str, fp8: bool) -> tuple[dict[str, Path], int]:
    """A trio (reused when already there) and its tensor count per checkpoint."""
    config = deepseek_config()
    if not fp8:
        del config["quantization_config"]
    tensors = deepseek_tensors(config, fp8=fp8, fused_experts=layout == "few")
    root = workdir / f"{layout}-{'fp8' if fp8 else 'bf16'}"
    marker = root / "done.json"
    if not marker.exists():
        shutil.rmtree(root, ignore_errors=True)
        for seed, role in enumerate(ROLES):
            write_generated(root / role, tensors, config, shards=SHARDS, seed=seed)
        marker.write_text(json.dumps({"tensors": len(tensors)}))
    return {role: root / role for role in ROLES}, len(tensors)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, default=Path("bench-out/moe"))
    parser.add_argument("--formats", default="fp8,bf16")
    parser.add_argument("--baseline", type=Path, help="an older source tree (with bot/)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per trio; the best counts")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    out = args.workdir / "merged"

    trees = {"this tree": os.environ.copy()}
    if args.baseline:
        trees["baseline"] = {**os.environ, "PYTHONPATH": str(args.baseline.resolve() / "bot")}
    runs = []
    for fmt in args.formats.split(","):
        trios = {layout: generate(args.workdir, layout, fmt == "fp8") for layout in ("many", "few")}
        for tree, env in trees.items():
            if fmt == "fp8" and tree == "baseline":
                continue
            for layout, (trio, count) in trios.items():
                cmd = [sys.executable, "-m", "paramdelta", "merge", "--format", "json"]
                cmd += ["--output", str(out), "--base", str(trio["base"])]
                cmd += ["--post", str(trio["post"]), "--new-base", str(trio["new_base"])]
                best: Measurement | None = None
                for _ in range(args.repeat):
                    shutil.rmtree(out, ignore_errors=True)
                    settle()
                    m = timed(f"{fmt} {layout}", shlex.join(cmd), env)
                    best = m if best is None or m.seconds < best.seconds else best
                assert best is not None
                data = sum(p.stat().st_size for p in trio["new_base"].glob("*.safetensors"))
                runs.append((fmt, tree, layout, count, data, best, json.loads(best.stdout)))
    shutil.rmtree(out, ignore_errors=True)

    print(
        f"\n{'trio':<26} {'tensors':>8} {'MB each':>8} {'wall s':>7} {'merge s':>8}"
        f" {'peak RSS':>10} {'requant err':>11}"
    )
    for fmt, tree, layout, count, data, m, result in runs:
        err = result["delta"]["overall"].get("requant_error", "-")
        print(
            f"{fmt + ' ' + layout + ' (' + tree + ')':<26} {count:>8} {data / 1e6:>8.1f}"
            f" {m.seconds:>7.2f} {result['seconds']:>8.2f} {gib(m.peak_rss_bytes):>10}"
            f" {err:>11}"
        )
    print()
    for fmt in args.formats.split(","):
        for tree in trees:
            pair = {r[2]: r for r in runs if r[0] == fmt and r[1] == tree}
            if len(pair) < 2:
                continue
            many, few = pair["many"], pair["few"]
            extra = many[3] - few[3]
            per_10k = (many[5].seconds - few[5].seconds) / extra * 1e4
            merge_10k = (many[6]["seconds"] - few[6]["seconds"]) / extra * 1e4
            print(
                f"{fmt} ({tree}): many/few wall {many[5].seconds / few[5].seconds:.2f}x;"
                f" per-tensor overhead {per_10k:.2f} s per 10k tensors (plan + merge),"
                f" {merge_10k:.2f} s in the merge phase"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
