from pathlib import Path

import pytest
import yaml

from paramdelta.cli import main
from paramdelta.pipeline.watchlist import Family, RepoRef, load

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / ".github" / "workflows" / "paramdelta.yml"
FAN_OUT = ROOT / ".github" / "workflows" / "paramdelta-fan-out.yml"
LLAMA = ["meta-llama/Meta-Llama-3-8B", "meta-llama/Meta-Llama-3-8B-Instruct"]


def test_the_shipped_workflow_is_the_example_this_repository_runs():
    shipped = ROOT / "bot" / "paramdelta" / "templates" / "workflow.yml"
    assert shipped.read_text() == EXAMPLE.read_text()
    shipped = ROOT / "bot" / "paramdelta" / "templates" / "workflow-fan-out.yml"
    assert shipped.read_text() == FAN_OUT.read_text()


def test_init_legs_writes_a_fan_out_target_and_the_fan_out_workflow(tmp_path, capsys):
    argv = ["init", *LLAMA, "meta-llama/Llama-3.1-8B", "--output", "me/Llama-3.1-8B-PD"]
    argv += ["--offline", "--dir", str(tmp_path), "--runner", "self-hosted,h100", "--legs", "8"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    (target,) = load(tmp_path / "watchlist.yaml").targets
    assert target.legs == 8
    workflow = yaml.safe_load((tmp_path / ".github/workflows/paramdelta.yml").read_text())
    jobs = workflow["jobs"]
    assert list(jobs) == list(yaml.safe_load(FAN_OUT.read_text())["jobs"])
    assert list(jobs) == ["plan", "merge", "legs", "finish", "report"]
    assert jobs["legs"]["runs-on"] == "ubuntu-latest"
    assert jobs["merge"]["runs-on"] == jobs["finish"]["runs-on"] == ["self-hosted", "h100"]
    leg = next(s for s in jobs["legs"]["steps"] if s.get("with", {}).get("command") == "run")
    assert (leg["with"]["leg"], leg["with"]["stream"]) == (
        "${{ matrix.leg }}/${{ matrix.legs }}",
        True,
    )
    finish = next(s for s in jobs["finish"]["steps"] if s.get("with", {}).get("command") == "run")
    assert finish["with"]["finish"] is True and finish["with"]["device"] == "cuda"
    assert "for the merge and finish jobs" in out
    assert main([*argv, "--force", "--legs", "0"]) == 2
    assert capsys.readouterr().err == "paramdelta: error: --legs 0: must be at least 1\n"


def test_init_writes_a_watchlist_and_the_workflow_and_says_what_is_left(tmp_path, capsys):
    argv = ["init", *LLAMA, "meta-llama/Llama-3.1-8B", "--output", "me/Llama-3.1-8B-PD"]
    assert main([*argv, "--offline", "--dir", str(tmp_path), "--runner", "self-hosted,a100"]) == 0
    out = capsys.readouterr().out
    watchlist = load(tmp_path / "watchlist.yaml")
    (target,) = watchlist.targets
    assert (target.name, target.base, target.new_base) == (
        "llama-3.1-8b",
        RepoRef(LLAMA[0]),
        RepoRef("meta-llama/Llama-3.1-8B"),
    )
    assert (target.output, target.publish, watchlist.warnings) == ("me/Llama-3.1-8B-PD", "pr", [])

    workflow = yaml.safe_load((tmp_path / ".github/workflows/paramdelta.yml").read_text())
    example = yaml.safe_load(EXAMPLE.read_text())
    assert list(workflow["jobs"]) == list(example["jobs"]) == ["plan", "merge", "report"]
    assert workflow["jobs"]["merge"]["runs-on"] == ["self-hosted", "a100"]
    uses = [s.get("uses") for job in workflow["jobs"].values() for s in job["steps"]]
    assert uses.count("paramdelta-bot/paramdelta-bot@v0.1.0") == 3 and "./" not in uses

    assert out.startswith(
        f"wrote {tmp_path / 'watchlist.yaml'} and {tmp_path / '.github/workflows/paramdelta.yml'}"
        " (target 'llama-3.1-8b')\nNext steps:\n"
    )
    assert "a repository secret HF_TOKEN" in out and "Trusted Publishers" in out
    assert "with the labels self-hosted, a100 for the merge job" in out
    assert "Pin the action: replace paramdelta-bot/paramdelta-bot@v0.1.0" in out


def test_a_family_target_and_the_warnings_of_its_rules(tmp_path, capsys):
    argv = ["init", *LLAMA, "meta-llama/Llama-3*-8B", "--output", "me/{new_base_name}-Chat"]
    assert main([*argv, "--offline", "--dir", str(tmp_path), "--publish", "commit"]) == 0
    captured = capsys.readouterr()
    (target,) = load(tmp_path / "watchlist.yaml").targets
    assert target.new_base == Family("meta-llama", "Llama-3*-8B")
    assert target.name == "llama-3-8b" and target.publish == "commit"
    assert "trusted publishing needs an existing repo" in captured.out
    argv = ["init", *LLAMA, "meta-llama/Llama-3.1-8B", "--output", "me/Chat", "--offline"]
    assert main([*argv, "--dir", str(tmp_path / "other")]) == 0
    assert capsys.readouterr().err == (
        "watchlist.yaml:10: warning: targets[0].output: Llama licence: the name of a model"
        " built with Llama must begin with 'Llama'; 'Chat' does not\n"
    )


def test_the_repos_are_checked_on_the_hub_before_anything_is_written(
    hub_trio, fake_hub, tmp_path, capsys
):
    repos = hub_trio.repos
    argv = ["init", repos["base"], repos["post"], repos["new_base"], "--output", "me/out"]
    assert main([*argv, "--dir", str(tmp_path / "ok")]) == 0
    captured = capsys.readouterr()
    assert f"  new base  {repos['new_base']}@{hub_trio.shas['new_base'][:12]}" in captured.err
    assert "on the Hub page of me/out (create it first)" in captured.out

    argv[2] = "org/typo"
    assert main([*argv, "--dir", str(tmp_path / "bad")]) == 4
    assert capsys.readouterr().err == (
        "paramdelta: error: org/typo@main: repository not found (or private, and the token"
        " cannot see it)\n"
    )
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--output", "me/{model}"],
            "--output: unknown placeholder {model} (use {new_base_owner},",
        ),
        (["--output", "justname"], "--output: 'justname' must give a repo id like org/name"),
        (["--output", "me/x", "--name", "a b"], "--name: 'a b' may only hold letters, digits"),
        (["--output", "me/x", "--runner", "gpu], x: [y"], "--runner 'gpu],x: [y': expected labels"),
        (["--output", "me/x", "--action", "./"], "--action './': expected owner/repo@ref"),
    ],
)
def test_what_makes_no_valid_target_is_a_usage_error(tmp_path, capsys, extra, message):
    argv = ["init", "org/base", "org/post", "org/new", *extra, "--offline", "--dir", str(tmp_path)]
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith(f"paramdelta: error: {message}")
    assert list(tmp_path.iterdir()) == []


def test_existing_files_are_kept_unless_forced(tmp_path, capsys):
    (tmp_path / "watchlist.yaml").write_text("mine\n")
    argv = ["init", "org/base", "org/post", "org/new", "--output", "me/x", "--offline"]
    assert main([*argv, "--dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        f"paramdelta: error: {tmp_path / 'watchlist.yaml'}: already exists"
        " (pass --force to replace it)\n"
    )
    assert (tmp_path / "watchlist.yaml").read_text() == "mine\n"
    assert main([*argv, "--dir", str(tmp_path), "--force"]) == 0
    assert load(tmp_path / "watchlist.yaml").targets[0].name == "new"


def test_bad_specs_are_usage_errors(tmp_path, capsys):
    assert main(["init", "not a repo", "org/post", "org/new", "--output", "me/x", "--offline"]) == 2
    assert capsys.readouterr().err == (
        "paramdelta: error: BASE 'not a repo': expected a Hub repo id like org/name[@revision]\n"
    )
    assert main(["init", "org/b", "org/p", "Qwen/*/x", "--output", "me/x", "--offline"]) == 2
    assert capsys.readouterr().err == (
        "paramdelta: error: NEW_BASE 'Qwen/*/x': a family is author/pattern, like Qwen/Qwen2*-7B\n"
    )
