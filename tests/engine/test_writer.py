import json
import os
import signal
import subprocess
import sys
import time

import pytest
from safetensors import safe_open

from merging import merge
from paramdelta.engine.checkpoint import LocalSource
from paramdelta.engine.recipe import Recipe
from paramdelta.engine.stages import preflight
from paramdelta.engine.writer import index_json, plan_shards
from paramdelta.errors import CheckpointError, UsageError
from paramdelta.testing.checkpoints import llama_config, load_tensors, make_trio


@pytest.fixture
def trio(tmp_path):
    return make_trio(tmp_path / "in", config=llama_config(hidden_size=128, vocab_size=512))


def _sources(trio):
    return {role: LocalSource(path) for role, path in trio.items()}


def test_shards_follow_the_size_limit_and_index_is_complete(tmp_path, trio):
    plan = preflight(_sources(trio), Recipe())
    shards = plan_shards(plan.items, 150_000)
    assert len(shards) > 2
    for shard in shards[:-1]:
        assert shard.data_bytes <= 150_000
    index = json.loads(index_json(shards))
    assert index["metadata"]["total_size"] == plan.nbytes
    assert set(index["weight_map"]) == {item.name for item in plan.items}
    # A tensor bigger than the limit gets a shard of its own.
    alone = plan_shards(plan.items, 1000)
    assert all(len(s.offsets) == 1 for s in alone if s.data_bytes > 1000)


def test_output_files_load_with_safe_open(tmp_path, trio):
    result = merge(_sources(trio), tmp_path / "out", shard_size=150_000)
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    for shard in result.shards:
        with safe_open(tmp_path / "out" / shard.filename, "pt") as f:
            assert f.metadata() == {"format": "pt"}
            assert set(f.keys()) == set(shard.offsets)
            assert all(index["weight_map"][k] == shard.filename for k in f.keys())  # noqa: SIM118
    # Nothing but the output is left next to it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]


def test_a_failed_merge_leaves_no_output(tmp_path, trio, monkeypatch):
    calls = 0
    real = LocalSource.read_into

    def failing(self, path, offset, view):
        nonlocal calls
        calls += 1
        if calls == 20:
            raise CheckpointError("disk on fire")
        real(self, path, offset, view)

    monkeypatch.setattr(LocalSource, "read_into", failing)
    with pytest.raises(CheckpointError, match="disk on fire"):
        merge(_sources(trio), tmp_path / "out", shard_size=150_000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def _earlier_output(tmp_path, trio):
    out = tmp_path / "out"
    merge(_sources(trio), out)
    (out / "old.txt").write_text("stale")
    return out


def test_a_failed_overwrite_keeps_the_old_output(tmp_path, trio, monkeypatch):
    out = _earlier_output(tmp_path, trio)
    before = sorted(p.name for p in out.iterdir())
    monkeypatch.setattr(LocalSource, "read_into", lambda *a: (_ for _ in ()).throw(OSError("EIO")))
    with pytest.raises(OSError, match="EIO"):
        merge(_sources(trio), out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]


def test_overwrite_replaces_the_old_output(tmp_path, trio):
    out = _earlier_output(tmp_path, trio)
    merge(_sources(trio), out, overwrite=True)
    assert not (out / "old.txt").exists()
    assert (out / "model.safetensors").exists() and (out / ".paramdelta-output").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]


def test_refuses_a_non_empty_output(tmp_path, trio):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("")
    with pytest.raises(UsageError) as e:
        merge(_sources(trio), tmp_path / "out")
    assert str(e.value) == (
        f"--output {tmp_path / 'out'}: directory is not empty (pass --overwrite to replace it)"
    )


def _merge_killed_midway(tmp_path, signum):
    """A merge into tmp_path/out, sent ``signum`` once a shard is finished; (argv, process)."""
    trio = make_trio(tmp_path / "in", config=llama_config(hidden_size=512, intermediate_size=1024))
    argv = [
        sys.executable,
        "-m",
        "paramdelta",
        "merge",
        "--base",
        str(trio["base"]),
        "--post",
        str(trio["post"]),
        "--new-base",
        str(trio["new_base"]),
        "--output",
        str(tmp_path / "out"),
        "--max-memory",
        "1KB",
        "--shard-size",
        "1MB",
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    # Kill it once the first shard is finished inside the hidden work directory.
    while time.monotonic() < deadline and proc.poll() is None:
        partial = [p for p in tmp_path.glob(".out.partial-*/*.safetensors")]
        if partial:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "merge finished before it could be killed"
    os.kill(proc.pid, signum)
    proc.wait(timeout=60)
    return argv, proc


@pytest.mark.slow  # merges in subprocesses
def test_killed_merge_leaves_nothing_that_looks_complete(tmp_path):
    argv, _ = _merge_killed_midway(tmp_path, signal.SIGKILL)
    out = tmp_path / "out"
    assert not out.exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "in"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".out.partial-")
    # The same command then succeeds, and removes what the killed one left.
    subprocess.run(argv[:-4], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert load_tensors(out).keys() == load_tensors(tmp_path / "in" / "new_base").keys()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]


@pytest.mark.slow  # a merge in a subprocess, signalled
def test_sigterm_removes_the_partial_output_and_says_interrupted(tmp_path):
    _, proc = _merge_killed_midway(tmp_path, signal.SIGTERM)
    err = proc.stderr.read()
    assert (proc.returncode, err) == (143, "paramdelta: error: interrupted (SIGTERM)\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]
