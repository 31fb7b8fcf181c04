"""A merge of one, two and three deltas, side by side, and the bit-exact count of each.

Generates two related Llama-shaped bf16 trios of about ``--size`` per checkpoint
(the second from another seed: its post and base are the second delta; the
third delta is the first again), then runs `paramdelta merge` with 1, 2 and 3
deltas in turn, each in its own process under ``/usr/bin/time -v``, and checks
every output tensor against the formula written out, literally, tensor by tensor:
``acc = new.float(); acc = acc + w * (post.float() - base.float())`` per delta,
``acc.to(dtype)``.

    python benchmarks/several_deltas_bench.py --size 200MB [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open

from common import gib, settle, timed
from paramdelta.engine.recipe import parse_size
from paramdelta.testing.checkpoints import config_for_size, make_trio

WEIGHTS = (0.7, -0.3, 0.25)


def generate(workdir: Path, size: int) -> dict[str, Path]:
    """Five checkpoints by role (kept for reuse): a trio and a second delta."""
    marker = workdir / "inputs.json"
    config = config_for_size(size)
    roots = {"first": workdir / "in" / "first", "second": workdir / "in" / "second"}
    if not (marker.exists() and json.loads(marker.read_text()) == {"size": size}):
        print(f"generating five checkpoints of ~{size / 1e9:.2f} GB in {workdir / 'in'} ...")
        make_trio(roots["first"], config=config, max_shard_size=size // 4 + 1)
        make_trio(roots["second"], config=config, max_shard_size=size // 4 + 1, seed=7)
        marker.write_text(json.dumps({"size": size}))
    first, second = roots["first"], roots["second"]
    return {
        "base": first / "base",
        "post": first / "post",
        "new_base": first / "new_base",
        "post[1]": second / "post",
        "base[1]": second / "base",
        "post[2]": first / "post",
        "base[2]": first / "base",
    }


def terms(deltas: int) -> list[tuple[str, str, float]]:
    roles = [("post", "base"), ("post[1]", "base[1]"), ("post[2]", "base[2]")]
    return [(post, base, w) for (post, base), w in zip(roles[:deltas], WEIGHTS, strict=False)]


def command(five: dict[str, Path], deltas: int, out: Path) -> list[str]:
    argv = [sys.executable, "-m", "paramdelta", "merge", "--format", "json"]
    if deltas == 1:
        argv += ["--base", str(five["base"]), "--post", str(five["post"])]
        argv += ["--alpha", str(WEIGHTS[0])]
    else:
        for post, base, w in terms(deltas):
            argv += ["--delta", str(five[post]), str(five[base]), str(w)]
    return [*argv, "--new-base", str(five["new_base"]), "--output", str(out)]


def _tensors(folder: Path) -> dict[str, Path]:
    """Tensor name -> the shard that holds it."""
    where = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(path, "pt") as f:
            where |= dict.fromkeys(f.keys(), path)
    return where


def _read(where: dict[str, Path], name: str) -> torch.Tensor:
    with safe_open(where[name], "pt") as f:
        return f.get_tensor(name)


def bit_exact(five: dict[str, Path], deltas: int, out: Path) -> tuple[int, int]:
    """(tensors bit-identical to the formula, tensors), one tensor in memory at a time."""
    shards = {role: _tensors(path) for role, path in five.items()}
    merged = _tensors(out)
    exact = 0
    for name in merged:
        acc = _read(shards["new_base"], name).float()
        for post, base, w in terms(deltas):
            post_t, base_t = _read(shards[post], name), _read(shards[base], name)
            acc = acc + w * (post_t.float() - base_t.float())
        got = _read(merged, name)
        exact += torch.equal(got, acc.to(got.dtype))
    return exact, len(merged)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="200MB", help="size of each checkpoint")
    parser.add_argument("--workdir", type=Path, default=Path("bench-out-deltas"))
    parser.add_argument("--repeat", type=int, default=1, help="runs per merge; the best counts")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    five = generate(args.workdir, parse_size(args.size, "--size"))
    scratch = Path(tempfile.mkdtemp(prefix="out-", dir=args.workdir))
    best: dict[int, tuple[float, float, int]] = {}
    for repeat in range(args.repeat):
        for deltas in (1, 2, 3):  # in turns: a noisy machine slows all of them alike
            out = scratch / f"{deltas}-{repeat}"
            settle()
            m = timed(f"{deltas} deltas", shlex.join(command(five, deltas, out)))
            if deltas not in best or m.seconds < best[deltas][0]:
                best[deltas] = (m.seconds, m.cpu_seconds, m.peak_rss_bytes)
            if repeat == args.repeat - 1:
                exact, total = bit_exact(five, deltas, out)
                print(f"{deltas} delta(s): {exact}/{total} tensors bit-identical to the formula")
    print(f"\n{'deltas':>6} {'wall s':>8} {'cpu s':>8} {'peak RSS':>10} {'wall vs 1':>9}")
    for deltas, (seconds, cpu, rss) in sorted(best.items()):
        ratio = seconds / best[1][0]
        print(f"{deltas:>6} {seconds:>8.2f} {cpu:>8.2f} {gib(rss):>10} {ratio:>8.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
