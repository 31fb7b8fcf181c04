"""What the benchmarks share: timing a command under /usr/bin/time, and the input checkpoints."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

from paramdelta.engine.merge_plan import ROLES as ROLES  # re-exported for the benchmarks
from paramdelta.testing.checkpoints import config_for_size, make_trio


class Measurement(NamedTuple):
    name: str
    seconds: float
    peak_rss_bytes: int
    stdout: str
    cpu_seconds: float = 0.0  # user + system: less sensitive than wall time to a busy host


def timed(name: str, script: str, env: dict[str, str] | None = None) -> Measurement:
    """Run a bash script under /usr/bin/time -v: wall clock, peak RSS and stdout."""
    proc = subprocess.run(
        ["/usr/bin/time", "-v", "bash", "-c", script], capture_output=True, text=True, env=env
    )
    if proc.returncode != 0:
        sys.exit(f"{name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    wall = re.search(
        r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):([\d.]+)", proc.stderr
    )
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    cpu = re.findall(r"(?:User|System) time \(seconds\): ([\d.]+)", proc.stderr)
    assert wall and rss and len(cpu) == 2, proc.stderr
    seconds = int(wall[1] or 0) * 3600 + int(wall[2]) * 60 + float(wall[3])
    return Measurement(name, seconds, int(rss[1]) * 1024, proc.stdout, sum(map(float, cpu)))


def settle() -> None:
    """Flush dirty pages (earlier outputs) so a run does not pay for its predecessor's writeback."""
    subprocess.run(["sync"], check=True)
    time.sleep(1)


def generate(workdir: Path, size: int) -> dict[str, Path]:
    """Three related Llama-shaped bf16 checkpoints of ~``size`` bytes each (kept for reuse)."""
    marker = workdir / "inputs.json"
    if marker.exists() and json.loads(marker.read_text()) == {"size": size}:
        return {role: workdir / "in" / role for role in ROLES}
    shutil.rmtree(workdir / "in", ignore_errors=True)
    print(f"generating three checkpoints of ~{size / 1e9:.1f} GB in {workdir / 'in'} ...")
    trio = make_trio(workdir / "in", config=config_for_size(size), max_shard_size=size // 4 + 1)
    marker.write_text(json.dumps({"size": size}))
    return trio


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"
