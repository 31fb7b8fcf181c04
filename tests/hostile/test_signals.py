"""Attack: a cancelled job (SIGTERM) or a killed one (SIGKILL) leaves GBs behind.

SIGTERM, what a cancelled job or a stopped container sends, left a hidden
`.NAME.partial-*` directory with a multi-GB `.incomplete` shard that nothing
ever removed; SIGINT cleaned up. (`merge --output`: tests/engine/test_writer.py.)
"""

import os
import signal
import subprocess
import sys
import time

import pytest

from paramdelta.reporting.results import load_results

from .helpers import target, write_watchlist

pytestmark = pytest.mark.slow  # `paramdelta run` in a subprocess, signalled

PARTIAL_SHARD = "paramdelta-scratch-*/.merged.partial-*/*.incomplete"


def _start_run(tmp_path, fake_hub, watchlist, results):
    """`paramdelta run --stream` whose reads of the new base stall, once it writes a shard."""
    fake_hub.faults.add(
        method="GET",
        path=r"^/org/new-base/resolve/[0-9a-f]{40}/model-",
        status=None,
        delay=0.2,
        times=1000,
    )
    scratch = tmp_path / "tmp"
    scratch.mkdir(exist_ok=True)
    argv = [
        sys.executable,
        "-m",
        "paramdelta",
        "run",
        "--watchlist",
        str(watchlist),
        "--stream",
        "--result-file",
        str(results),
    ]
    env = {**os.environ, "TMPDIR": str(scratch)}
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(
        scratch.glob("paramdelta-scratch-*/.merged.partial-*")
    ):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    return proc, scratch


def test_sigterm_ends_a_run_like_sigint(hub_trio, fake_hub, tmp_path):
    watchlist = write_watchlist(tmp_path, target("one", "me/one"), target("two", "me/two"))
    results = tmp_path / "result.json"
    proc, scratch = _start_run(tmp_path, fake_hub, watchlist, results)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, (out, err)
    assert err.endswith("paramdelta: error: interrupted (SIGTERM)\n")
    assert list(scratch.iterdir()) == []  # no scratch, no partial shard
    one, two = load_results([results])
    assert (one.status, one.exit_code, one.error) == ("failed", 143, "interrupted (SIGTERM)")
    assert (two.status, two.exit_code, two.error) == ("failed", 143, "interrupted (SIGTERM)")
    assert not fake_hub.repo_exists("me/one")  # the run created it, committed nothing: gone


def test_the_next_run_removes_what_a_killed_one_left(hub_trio, fake_hub, tmp_path):
    watchlist = write_watchlist(tmp_path, target("one", "me/one"))
    proc, scratch = _start_run(tmp_path, fake_hub, watchlist, tmp_path / "killed.json")
    proc.kill()
    proc.communicate(timeout=60)
    assert len(list(scratch.glob("paramdelta-scratch-*/.merged.partial-*"))) == 1  # left behind
    fake_hub.faults.clear()

    env = {**os.environ, "TMPDIR": str(scratch)}
    argv = [sys.executable, "-m", "paramdelta", "run", "--watchlist", str(watchlist)]
    subprocess.run(argv, env=env, check=True, capture_output=True, timeout=120)
    assert list(scratch.iterdir()) == []
    assert "paramdelta.json" in fake_hub.list_files("me/one")
