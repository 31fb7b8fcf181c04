"""Benchmark `paramdelta merge` against the I/O floor and the usual alternatives.

Generates three Llama-shaped bf16 checkpoints of about ``--size`` each (several
shards), warms the page cache, then measures side by side, each in its own
process under ``/usr/bin/time -v``:

- floor:      ``cat`` of the three inputs + ``dd`` of one output-sized file
- naive:      safetensors ``load_file`` of all three, the formula, ``save_file``
- mergekit:   ``mergekit-yaml`` task_arithmetic in fp32 with bf16 output (only
              with ``--mergekit-bin``, from a separate venv: it pins its own deps)
- paramdelta: ``paramdelta merge``
- baseline:   ``paramdelta merge`` of another source tree (``--baseline DIR``, e.g. an
              earlier commit's ``git archive``): a change's cost, measured side by side
- adapter:    ``paramdelta merge`` with a PEFT LoRA adapter of rank ``--adapter-rank``
              on every linear layer of the base as the post model (``--adapter-rank``
              only): the cost of an adapter delta against the full-checkpoint one

Methods take turns, each repeat running every method once, so that a noisy
machine slows all of them alike; the best of the repeats counts.

    python benchmarks/merge_bench.py --size 1GB [--mergekit-bin /venv/bin/mergekit-yaml]
    python benchmarks/merge_bench.py --methods paramdelta,baseline --baseline /tmp/old --repeat 5
    python benchmarks/merge_bench.py --methods paramdelta,adapter --adapter-rank 16 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from common import ROLES, Measurement, generate, settle, timed
from paramdelta.engine.checkpoint import LocalSource, open_checkpoint
from paramdelta.engine.recipe import parse_size
from paramdelta.testing.adapters import ALL_LINEAR, adapter_config, lora_tensors, write_adapter

NAIVE = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from safetensors.torch import load_file, save_file

    def load(d):
        out = {}
        for f in sorted(Path(d).glob("*.safetensors")):
            out.update(load_file(f))
        return out

    base, post, new, out = sys.argv[1:]
    b, p, n = load(base), load(post), load(new)
    merged = {k: (p[k].float() - b[k].float() + n[k].float()).to(n[k].dtype) for k in n}
    Path(out).mkdir()
    save_file(merged, Path(out) / "model.safetensors", {"format": "pt"})
    """
)

MERGEKIT_CONFIG = """\
merge_method: task_arithmetic
base_model: {base}
models:
  - model: {post}
    parameters: {{weight: 1.0}}
  - model: {new_base}
    parameters: {{weight: 1.0}}
dtype: float32
out_dtype: bfloat16
"""


def _role_args(dirs: list[str]) -> list[str]:
    return ["--base", dirs[0], "--post", dirs[1], "--new-base", dirs[2]]


def weight_files(trio: dict[str, Path]) -> list[Path]:
    return sorted(p for role in ROLES for p in trio[role].glob("*.safetensors"))


def make_adapter(workdir: Path, base: Path, rank: int) -> Path:
    """A rank-``rank`` LoRA adapter on every linear layer of ``base`` (kept for reuse)."""
    folder = workdir / f"adapter-r{rank}"
    if not folder.exists():
        opened = open_checkpoint(LocalSource(base), "base")
        shapes = {name: ref.shape for name, ref in opened.tensors.items()}
        tensors = lora_tensors(shapes, r=rank, targets=ALL_LINEAR)
        write_adapter(folder, tensors, adapter_config(rank, 2 * rank, target_modules="all-linear"))
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="1GB", help="size of each checkpoint (default 1GB)")
    parser.add_argument("--workdir", type=Path, default=Path("bench-out"))
    parser.add_argument(
        "--methods", default="startup,floor,naive,mergekit,paramdelta,baseline,adapter"
    )
    parser.add_argument("--mergekit-bin", help="mergekit-yaml from a separate venv")
    parser.add_argument(
        "--baseline",
        type=Path,
        action="append",
        default=[],
        help="a source tree (with bot/) to compare paramdelta against (repeatable)",
    )
    parser.add_argument(
        "--adapter-rank", type=int, help="also merge a LoRA adapter of this rank (method adapter)"
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per method; the best counts")
    parser.add_argument(
        "paramdelta_args", nargs="*", help="extra args for paramdelta merge (after --)"
    )
    args = parser.parse_args(argv)

    size = parse_size(args.size, "--size")
    args.workdir.mkdir(parents=True, exist_ok=True)
    trio = generate(args.workdir, size)
    inputs = weight_files(trio)
    in_bytes = sum(p.stat().st_size for p in inputs)
    out_bytes = sum(p.stat().st_size for p in trio["new_base"].glob("*.safetensors"))
    files = shlex.join(map(str, inputs))
    subprocess.run(["bash", "-c", f"cat {files} > /dev/null"], check=True)  # warm the page cache

    scratch = Path(tempfile.mkdtemp(prefix="out-", dir=args.workdir))
    out = scratch / "merged"
    dirs = [str(trio[r]) for r in ROLES]
    blocks = -(-out_bytes // 2**20)
    paramdelta = [sys.executable, "-m", "paramdelta", "merge", "--format", "json", "--output"]
    commands = {
        "startup (python+torch)": shlex.join(
            [sys.executable, "-c", "import paramdelta.engine.workers"]
        ),
        "floor (cat + dd)": f"cat {files} > /dev/null"
        f" && dd if=/dev/zero of={shlex.quote(str(out))} bs=1M count={blocks} status=none",
        "naive load_file": shlex.join([sys.executable, "-c", NAIVE, *dirs, str(out)]),
        "paramdelta merge": shlex.join(
            [*paramdelta, str(out), *_role_args(dirs), *args.paramdelta_args]
        ),
    }
    if args.adapter_rank:
        adapter = make_adapter(args.workdir, trio["base"], args.adapter_rank)
        adapter_dirs = [dirs[0], str(adapter), dirs[2]]
        commands[f"adapter merge (r={args.adapter_rank})"] = shlex.join(
            [*paramdelta, str(out), *_role_args(adapter_dirs), *args.paramdelta_args]
        )
    envs: dict[str, dict[str, str]] = {}
    for tree in args.baseline:
        name = f"baseline merge ({tree.name})"
        commands[name] = commands["paramdelta merge"]
        envs[name] = {**os.environ, "PYTHONPATH": str(tree.resolve() / "bot")}
    if args.mergekit_bin:
        config = scratch / "mergekit.yml"
        config.write_text(MERGEKIT_CONFIG.format(**{r: trio[r] for r in ROLES}))
        commands["mergekit task_arithmetic"] = shlex.join(
            [args.mergekit_bin, str(config), str(out)]
        )
    wanted = set(args.methods.split(","))
    selected = {name: cmd for name, cmd in commands.items() if name.split()[0] in wanted}

    best: dict[str, Measurement] = {}
    for _ in range(args.repeat):
        for name, script in selected.items():  # in turns: noise slows every method alike
            shutil.rmtree(out, ignore_errors=True)
            out.unlink(missing_ok=True)
            settle()
            m = timed(name, script, envs.get(name))
            if name not in best or m.seconds < best[name].seconds:
                best[name] = m
    results = []
    for name, m in best.items():
        results.append(m)
        if name.startswith(("paramdelta", "baseline", "adapter")):
            # The merge phase alone, without interpreter start and `import torch`.
            phase = json.loads(m.stdout)
            results.append(
                Measurement(
                    "  merge phase only",
                    phase["seconds"],
                    m.peak_rss_bytes,
                    "",
                    phase.get("cpu_seconds", 0.0),  # a baseline may predate the field
                )
            )
    shutil.rmtree(scratch)

    floor = next((m.seconds for m in results if m.name.startswith("floor")), None)
    print(
        f"\ninputs: 3 x {in_bytes / 3 / 1e9:.2f} GB ({len(inputs)} files),"
        f" output {out_bytes / 1e9:.2f} GB, warm page cache, best of {args.repeat}"
    )
    print(
        f"{'method':<26} {'wall s':>8} {'cpu s':>8} {'in GB/s':>8} {'peak RSS':>10} {'x floor':>8}"
    )
    for m in results:
        ratio = f"{m.seconds / floor:.2f}" if floor else "-"
        cpu = f"{m.cpu_seconds:.2f}" if m.cpu_seconds else "-"
        print(
            f"{m.name:<26} {m.seconds:>8.2f} {cpu:>8} {in_bytes / m.seconds / 1e9:>8.2f}"
            f" {m.peak_rss_bytes / 2**30:>8.2f} GiB {ratio:>8}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
