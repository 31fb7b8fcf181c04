"""Attack: failures that used to end `run` as "unexpected ... (a bug)", with no result file.

A disk-full error aborted `run`: later targets never ran, no result file was written,
and the report job opened no issue. Now every failure is its target's result, with a
typed exit code, and the result file is written however the process ends.
"""

import json
import os
import resource
import signal
import subprocess
import sys

import pytest

from paramdelta.cli import main
from paramdelta.pipeline import publish as publish_module
from paramdelta.reporting.results import load_results

from .helpers import target, write_watchlist


def _run_on_a_full_disk(tmp_path, limit: int, *args: str) -> subprocess.CompletedProcess[str]:
    """`paramdelta run ARGS` in a process whose writes fail past ``limit`` bytes.

    RLIMIT_FSIZE makes a write past the limit fail with EFBIG, as a write to a
    full disk fails with ENOSPC: the same OSError, in whatever code writes.
    """

    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    env = {**os.environ, "HF_HOME": str(tmp_path / "hf-home"), "TMPDIR": str(tmp_path)}
    return subprocess.run(
        [sys.executable, "-m", "paramdelta", "run", *args],
        env=env,
        capture_output=True,
        text=True,
        preexec_fn=preexec,
        timeout=120,
        check=False,
    )


def _assert_each_target_failed_alone(process, results, tail=": File too large"):
    assert process.returncode == 7, process.stderr
    one, two = load_results([results])
    assert (one.target, two.target) == ("one", "two")  # the second ran after the first failed
    for result in (one, two):
        assert (result.status, result.exit_code) == ("failed", 7)
        assert result.error.endswith(tail), result.error
    assert "unexpected" not in process.stdout + process.stderr


@pytest.mark.slow  # paramdelta in a subprocess
def test_a_full_disk_while_merging_fails_each_target_alone(hub_trio, tmp_path):
    watchlist = write_watchlist(tmp_path, target("one", "me/one"), target("two", "me/two"))
    results = tmp_path / "result.json"
    args = ["--watchlist", str(watchlist), "--result-file", str(results)]
    process = _run_on_a_full_disk(tmp_path, 20_000, *args)  # the trio's shards are ~60 KB
    # Downloading into the cache fails first. hf_xet's chunk database says either how its
    # write failed, or, once it has failed one, that it refuses writes: both are the disk.
    _assert_each_target_failed_alone(process, results, tail="")
    for result in load_results([results]):
        assert result.error in (
            f"{tmp_path / 'hf-home' / 'hub'}: File too large",
            f"{tmp_path / 'hf-home' / 'hub'}: a write to the local disk failed (is it full?)",
        )


@pytest.mark.slow  # paramdelta in a subprocess
def test_a_full_disk_while_writing_a_card_fails_each_target_alone(hub_trio, tmp_path):
    watchlist = write_watchlist(tmp_path, target("one", "me/one"), target("two", "me/two"))
    results = tmp_path / "result.json"
    args = ["--watchlist", str(watchlist), "--result-file", str(results), "--dry-run"]
    process = _run_on_a_full_disk(tmp_path, 2_000, *args)  # a card is ~3.5 KB, a result 0.4 KB
    _assert_each_target_failed_alone(process, results)


@pytest.mark.slow  # two runs, each with the pre-publish check
def test_an_unforeseen_error_is_that_targets_failure(hub_trio, fake_hub, tmp_path, monkeypatch):
    real = publish_module.merge_record
    calls = []

    def fails_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("something nobody foresaw")
        return real(*args, **kwargs)

    monkeypatch.setattr(publish_module, "merge_record", fails_once)
    watchlist = write_watchlist(tmp_path, target("one", "me/one"), target("two", "me/two"))
    results = tmp_path / "result.json"
    assert main(["run", "--watchlist", str(watchlist), "--result-file", str(results)]) == 1
    one, two = load_results([results])
    assert (one.status, one.exit_code) == ("failed", 1)
    assert one.error == (
        "unexpected RuntimeError: something nobody foresaw (a bug; set PARAMDELTA_DEBUG=1 for a"
        " traceback)"
    )
    assert two.status == "published" and fake_hub.repo_exists("me/two")
    assert not fake_hub.repo_exists("me/one")  # created for the failed target, then deleted


def test_a_run_that_fails_before_planning_still_writes_its_result(hub_trio, tmp_path, capsys):
    watchlist = write_watchlist(tmp_path, target("one", "me/one"))
    results = tmp_path / "out" / "result.json"
    code = main(
        [
            "run",
            "--watchlist",
            str(watchlist),
            "--target",
            "one",
            "--result-file",
            str(results),
            "--token-file",
            str(tmp_path / "missing-token"),
        ]
    )
    assert code == 2
    error = f"--token-file {tmp_path / 'missing-token'}: No such file or directory"
    assert capsys.readouterr().err == f"paramdelta: error: {error}\n"
    assert json.loads(results.read_text())["results"] == [
        {
            "target": "one",
            "status": "failed",
            "output_repo": None,
            "new_base_repo": None,
            "new_base_sha": None,
            "url": None,
            "error": error,
            "exit_code": 2,
            "duration_s": 0.0,
            "check": None,
        }
    ]
