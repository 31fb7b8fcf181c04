"""A fan-out on the fake Hub: 4 legs stage their shards on a branch, one finish publishes them."""

import json
import re

import pytest
from huggingface_hub import ModelCard

from paramdelta.cli import main
from paramdelta.reporting.results import load_results
from paramdelta.testing.checkpoints import load_tensors, mismatched_tensors, reference_merge

WATCHLIST = """\
targets:
  - name: big
    base: org/base
    post: org/post
    new_base: org/new-base
    output: me/big
    shard_size: 35kB
    legs: 4
    check: off
"""
REPO = "me/big"
STAGING = "paramdelta-staging/big-"


@pytest.fixture
def watchlist(hub_trio, tmp_path):
    path = tmp_path / "watchlist.yaml"
    path.write_text(WATCHLIST)
    return path


def run(watchlist, *options, result_file=None):
    args = ["run", "--watchlist", str(watchlist), "--target", "big", "--format", "json"]
    if result_file is not None:
        args += ["--result-file", str(result_file)]
    return main([*args, *options])


def staging(fake_hub):
    return [b for b in fake_hub.branches(REPO) if b.startswith(STAGING)]


def _download(fake_hub, directory, revision="main"):
    directory.mkdir()
    for name in fake_hub.list_files(REPO, revision):
        (directory / name).write_bytes(fake_hub.read_file(REPO, name, revision))
    return directory


def test_four_legs_then_finish_publish_one_bit_exact_commit(
    watchlist, hub_trio, fake_hub, tmp_path, capsys
):
    for k in range(1, 5):
        assert run(watchlist, "--leg", f"{k}/4") == 0
        (result,) = json.loads(capsys.readouterr().out)["results"]
        assert result["status"] == "staged"
    main_before = fake_hub.commits(REPO)
    assert len(main_before) == 1  # main: the repo's initial commit only
    (branch,) = staging(fake_hub)
    shards = [f for f in fake_hub.list_files(REPO, branch) if f.endswith(".safetensors")]
    legs = [f for f in fake_hub.list_files(REPO, branch) if f.startswith("paramdelta-legs/")]
    assert len(shards) == 8
    assert legs == [f"paramdelta-legs/leg-{k}-of-4.json" for k in range(1, 5)]
    # Four commits on the branch, one per leg, each with its own shards.
    assert len(fake_hub.commits(REPO, branch)) == 5

    fake_hub.clear_requests()
    uploaded = fake_hub.xet_uploads
    assert uploaded == 8  # each shard once, by its leg
    results = tmp_path / "results.json"
    assert run(watchlist, "--finish", result_file=results) == 0
    (result,) = load_results([results])
    assert result.status == "published"
    commits = fake_hub.commits(REPO)
    assert len(commits) == 2 and commits[1].oid == main_before[0].oid  # planned parent
    assert result.url == f"{fake_hub.url}/{REPO}/commit/{commits[0].oid}"
    assert staging(fake_hub) == []  # deleted once published
    # Copies only: nothing uploaded again, no weight byte read back.
    assert fake_hub.lfs_bytes_uploaded == 0
    assert fake_hub.xet_token_requests("write", REPO) == 0
    assert fake_hub.xet_uploads == uploaded  # the commit named stored objects only
    files = fake_hub.list_files(REPO)
    assert {
        "README.md",
        "paramdelta.json",
        "paramdelta-delta.png",
        "config.json",
        "model.safetensors.index.json",
    } <= set(files)
    assert not any(f.startswith("paramdelta-legs/") for f in files)
    assert sorted(f for f in files if f.endswith(".safetensors")) == sorted(shards)

    merged = load_tensors(_download(fake_hub, tmp_path / "out"))
    expected = reference_merge(
        *(load_tensors(hub_trio.local[r]) for r in ("base", "post", "new_base"))
    )
    assert mismatched_tensors(merged, expected) == []

    record = json.loads(fake_hub.read_file(REPO, "paramdelta.json"))
    assert {c["role"]: c["sha"] for c in record["checkpoints"]} == hub_trio.shas
    assert sorted(record["output"]["shards"]) == sorted(shards)
    assert record["output"]["tensors"] == len(expected)
    assert record["delta"]["overall"]["tensors"] == len(expected)
    card = ModelCard(fake_hub.read_file(REPO, "README.md").decode())
    assert card.data.base_model == ["org/new-base", "org/post", "org/base"]

    # Up to date now: a second finish, and a leg, do nothing.
    capsys.readouterr()
    fake_hub.clear_requests()
    assert run(watchlist, "--finish") == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["status"] == "up-to-date"
    assert run(watchlist, "--leg", "2/4") == 0
    assert len(fake_hub.commits(REPO)) == 2
    assert fake_hub.weight_bytes_served() == 0


def test_a_missing_leg_leaves_main_untouched_until_it_is_run_again(
    watchlist, hub_trio, fake_hub, tmp_path, capsys
):
    for k in (1, 2, 4):
        assert run(watchlist, "--leg", f"{k}/4") == 0
    # Leg 3 fails at its commit (after its uploads): it leaves nothing on the branch.
    fake_hub.faults.add(server="hub", method="POST", path=r"/commit/paramdelta-staging", status=500)
    assert run(watchlist, "--leg", "3/4") == 4
    capsys.readouterr()
    results = tmp_path / "results.json"
    assert run(watchlist, "--finish", result_file=results) == 10
    (result,) = load_results([results])
    (branch,) = staging(fake_hub)
    assert (result.status, result.exit_code) == ("failed", 10)
    assert result.error == (
        f"target big: leg(s) 3 of 4 missing from staging branch {branch} of {REPO} (never ran,"
        " failed or were killed); nothing was published; re-run those legs, then --finish"
    )
    assert fake_hub.list_files(REPO) == [".gitattributes"]
    assert len(fake_hub.commits(REPO)) == 1

    # A leg re-run redoes nothing that is there: leg 1 is a no-op.
    staged = fake_hub.head(REPO, branch)
    fake_hub.clear_requests()
    assert run(watchlist, "--leg", "1/4") == 0
    assert fake_hub.head(REPO, branch) == staged
    assert fake_hub.xet_token_requests("write", REPO) == 0  # nothing merged, nothing sent
    assert not [r for r in fake_hub.requests if r.method == "POST" and "/commit/" in r.path]
    assert run(watchlist, "--leg", "3/4") == 0
    capsys.readouterr()
    assert run(watchlist, "--finish") == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["status"] == "published"
    assert len(fake_hub.commits(REPO)) == 2
    assert staging(fake_hub) == []


def test_a_stale_staging_branch_is_deleted_by_the_next_run(watchlist, hub_trio, fake_hub):
    fake_hub.create_repo(REPO)
    stale = f"{STAGING}0123456789ab"
    other = "paramdelta-staging/big-sibling-0123456789ab"  # another target's: kept
    fake_hub.commit(REPO, {"x.txt": b"x"}, branch=stale)
    fake_hub.commit(REPO, {"x.txt": b"x"}, branch=other)
    assert run(watchlist, "--leg", "1/4") == 0
    branches = fake_hub.branches(REPO)
    assert stale not in branches and other in branches
    assert [b for b in staging(fake_hub) if b != other] == [
        b for b in branches if b not in (other, "main")
    ]
    assert len(branches) == 3  # main, the other target's and this run's


def test_the_plan_never_takes_a_staging_branch_for_a_publish(watchlist, hub_trio, fake_hub, capsys):
    for k in range(1, 5):
        assert run(watchlist, "--leg", f"{k}/4") == 0
    capsys.readouterr()
    assert main(["plan", "--watchlist", str(watchlist), "--format", "json"]) == 0
    matrix = json.loads(capsys.readouterr().out)
    assert [(m["status"], m["leg"]) for m in matrix] == [("pending", k) for k in range(1, 5)]


def test_concurrent_legs_retry_a_commit_that_another_leg_beat(watchlist, hub_trio, fake_hub):
    assert run(watchlist, "--leg", "1/4") == 0
    (branch,) = staging(fake_hub)
    # Another leg's commit lands between this leg's read of the head and its own commit.
    fake_hub.faults.add(
        server="hub", method="POST", path=re.escape(f"/commit/{branch}") + "$", status=412
    )
    assert run(watchlist, "--leg", "2/4") == 0
    assert "paramdelta-legs/leg-2-of-4.json" in fake_hub.list_files(REPO, branch)


def test_leg_arguments_are_checked(watchlist, capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "--watchlist", str(watchlist), "--leg", "5/4"])
    assert e.value.code == 2
    assert "argument --leg: '5/4' is not K/N with 1 <= K <= N (leg K of N, e.g. 2/4)" in (
        capsys.readouterr().err
    )
    assert main(["run", "--watchlist", str(watchlist), "--leg", "1/4"]) == 2
    assert capsys.readouterr().err == (
        "paramdelta: error: --leg: a fan-out runs one target: pass --target NAME\n"
    )
    assert run(watchlist, "--leg", "1/3") == 2
    (result,) = json.loads(capsys.readouterr().out)["results"]
    assert result["error"] == "--leg 1/3: target 'big' has legs: 4 in the watchlist, not 3"


@pytest.mark.slow  # transformers loads the merged model
def test_finish_runs_the_pre_publish_check_and_a_failing_one_publishes_nothing(
    hub_trio, fake_hub, tmp_path, capsys
):
    path = tmp_path / "watchlist.yaml"
    path.write_text(WATCHLIST.replace("legs: 4\n    check: off", "legs: 2\n    check: on"))
    for k in (1, 2):
        assert run(path, "--leg", f"{k}/2") == 0
    strict = tmp_path / "strict.yaml"
    strict.write_text(path.read_text() + "    perplexity_factor: 0.001\n")
    capsys.readouterr()
    assert run(strict, "--finish") == 9
    (result,) = json.loads(capsys.readouterr().out)["results"]
    assert result["status"] == "check-failed" and result["check"]["status"] == "failed"
    assert fake_hub.list_files(REPO) == [".gitattributes"]
    assert len(staging(fake_hub)) == 1  # kept: the legs need not run again

    assert run(path, "--finish") == 0
    (result,) = json.loads(capsys.readouterr().out)["results"]
    assert result["status"] == "published" and result["check"]["status"] == "passed"
    record = json.loads(fake_hub.read_file(REPO, "paramdelta.json"))
    assert record["check"]["status"] == "passed"
    assert not [f for f in fake_hub.list_files(REPO) if f.startswith("paramdelta-legs")]
