import subprocess
import sys

from paramdelta.engine.workdirs import OwnedDir, sweep


def test_a_sweep_spares_a_live_owner_and_removes_a_dead_ones(tmp_path):
    live = OwnedDir(tmp_path, ".out.partial-")
    (live.path / "shard.incomplete").write_bytes(b"x")
    # A process that made one and died without a word (SIGKILL): nothing released its lock
    # but the kernel.
    code = (
        "import os, sys; from pathlib import Path; from paramdelta.engine.workdirs import OwnedDir;"
        " d = OwnedDir(Path(sys.argv[1]), '.out.partial-'); (d.path / 'x').write_bytes(b'x');"
        " os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True)
    other = tmp_path / ".other.partial-1"
    other.mkdir()
    dead = [p for p in tmp_path.iterdir() if p.name.startswith(".out.") and p != live.path]
    assert len(dead) == 1

    assert sweep(tmp_path, ".out.partial-") == dead
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.path.name, other.name])
    live.release()
    assert sweep(tmp_path, ".out.partial-") == [live.path]
    assert list(tmp_path.iterdir()) == [other]


def test_a_sweep_of_a_missing_folder_removes_nothing(tmp_path):
    assert sweep(tmp_path / "nope", ".x") == []
