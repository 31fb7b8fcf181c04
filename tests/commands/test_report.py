import json
import uuid

import pytest

from doubles.github import FakeGitHub
from paramdelta.cli import main
from paramdelta.reporting import github_actions
from paramdelta.reporting import issues as report
from paramdelta.reporting.results import TargetResult, load_results, write_results
from paramdelta.reporting.summary import summary_markdown

TOKEN = "ghs_cli-report-test-token"
REPO = "acme/models"
RUN = "https://github.com/acme/models/actions/runs/7"
DELIMITER = "ghadelimiter_12345678-1234-5678-1234-567812345678"
FAILED = TargetResult(
    target="qwen-2.5-7b-instruct",
    status="failed",
    new_base_repo="Qwen/Qwen2.5-7B",
    new_base_sha="a" * 40,
    error="HubError: Qwen/Qwen2.5-7B: 503 Service Unavailable",
    exit_code=4,
    duration_s=8.25,
)
PUBLISHED = TargetResult(
    target="llama-3.1-8b-instruct",
    status="published",
    output_repo="acme/Llama-3.1-8B-Instruct-ParamDelta",
    new_base_repo="meta-llama/Llama-3.1-8B",
    new_base_sha="b" * 40,
    url="https://huggingface.co/acme/Llama-3.1-8B-Instruct-ParamDelta/commit/c0ffee",
    exit_code=0,
    duration_s=61.0,
)
SUMMARY = (
    "### ParamΔ merges\n"
    "\n"
    "| target | new base | status | link | duration |\n"
    "| --- | --- | --- | --- | --- |\n"
    "| qwen-2.5-7b-instruct | Qwen/Qwen2.5-7B@aaaaaaa | failed (exit 4) | - | 8.2s |\n"
    "| llama-3.1-8b-instruct | meta-llama/Llama-3.1-8B@bbbbbbb | published"
    " | [commit](https://huggingface.co/acme/Llama-3.1-8B-Instruct-ParamDelta/commit/c0ffee)"
    " | 1m 01s |\n"
    "\n"
    "Errors:\n"
    "\n"
    "- **qwen-2.5-7b-instruct**: HubError: Qwen/Qwen2.5-7B: 503 Service Unavailable\n"
    "\n"
    f"2 targets: 1 published, 1 failed. [Workflow run]({RUN})\n"
)


@pytest.fixture(autouse=True)
def _watchlist(tmp_path, monkeypatch):
    """watchlist.yaml, where `report` looks for it: the targets the results are for."""
    targets = "".join(
        f"  - {{name: {name}, base: org/base, post: org/post, new_base: org/new, output: me/{name}}}\n"
        for name in (FAILED.target, PUBLISHED.target, "other")
    )
    (tmp_path / "watchlist.yaml").write_text(f"targets:\n{targets}")
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def _no_runner(monkeypatch):
    # CI for this project runs in Actions: start every test outside it.
    for name in ("GITHUB_REPOSITORY", "GITHUB_API_URL", "GITHUB_SERVER_URL", "GITHUB_RUN_ID"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def results_dir(tmp_path):
    """Downloaded artifacts: one directory per matrix job."""
    write_results(tmp_path / "results" / "result-1" / "result.json", [FAILED])
    write_results(tmp_path / "results" / "result-2" / "result.json", [PUBLISHED])
    return tmp_path / "results"


@pytest.fixture
def runner(tmp_path, monkeypatch):
    files = {"output": tmp_path / "output", "summary": tmp_path / "summary"}
    for path in files.values():
        path.touch()
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_OUTPUT", str(files["output"]))
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(files["summary"]))
    monkeypatch.setenv("GITHUB_SERVER_URL", "https://github.com")
    monkeypatch.setenv("GITHUB_REPOSITORY", REPO)
    monkeypatch.setenv("GITHUB_RUN_ID", "7")
    monkeypatch.setattr(github_actions, "uuid4", lambda: uuid.UUID(DELIMITER[-36:]))
    return files


@pytest.fixture
def fake_github(monkeypatch, runner):
    monkeypatch.setattr(report, "SECONDS_BETWEEN_REQUESTS", 0)
    monkeypatch.setattr(report, "SECONDS_BETWEEN_WRITES", 0)
    with FakeGitHub(token=TOKEN) as server:
        server.add_repo(REPO)
        monkeypatch.setenv("GITHUB_API_URL", server.url)
        monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
        yield server


def test_human_output_is_the_summary(results_dir, capsys):
    assert main(["report", str(results_dir)]) == 0
    captured = capsys.readouterr()
    assert captured.out == summary_markdown(load_results([results_dir]))
    assert "| qwen-2.5-7b-instruct |" in captured.out and captured.err == ""


def test_json_output(results_dir, capsys):
    assert main(["report", str(results_dir), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "results": [FAILED.to_dict(), PUBLISHED.to_dict()],  # sorted by path
        "issues": [],
    }


def test_github_writes_the_job_summary_and_the_summary_output(results_dir, runner, capsys):
    paths = [str(results_dir / "result-1" / "result.json"), str(results_dir / "result-2")]
    assert main(["report", *paths, "--github"]) == 0
    assert runner["summary"].read_text() == SUMMARY
    assert runner["output"].read_text() == f"summary<<{DELIMITER}\n{SUMMARY}\n{DELIMITER}\n"
    assert capsys.readouterr().out == SUMMARY


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--github"], {}, "--github: GITHUB_OUTPUT is not set (not running in GitHub Actions?)"),
        (["--notify-success"], {}, "--notify-success needs --issues"),
        (["--issues"], {"GITHUB_TOKEN": TOKEN}, "--issues: pass --repo OWNER/NAME or set"),
        (["--issues", "--repo", "acme"], {"GITHUB_TOKEN": TOKEN}, "--repo: expected OWNER/NAME"),
        (["--issues", "--repo", REPO], {}, "--issues: set GITHUB_TOKEN or GH_TOKEN"),
    ],
)
def test_usage_errors(results_dir, monkeypatch, capsys, argv, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["report", str(results_dir), *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"paramdelta: error: {message}")
    assert captured.err.count("\n") == 1


def test_a_bad_result_file_names_the_file_and_the_field(tmp_path, capsys):
    path = tmp_path / "result.json"
    record = {**FAILED.to_dict(), "duration_s": "8s"}
    path.write_text(json.dumps({"results": [record]}))
    assert main(["report", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"paramdelta: error: {path}: results[0]: field 'duration_s' must be a number, not '8s'\n"
    )


def test_issues_are_opened_then_commented_and_the_token_never_shows(
    results_dir, runner, fake_github, capfd
):
    argv = ["report", str(results_dir), "--github", "--issues", "--format", "json"]
    assert main(argv) == 0  # a failing target is reported, not failed again
    first = json.loads(capfd.readouterr().out)
    issue_url = f"{fake_github.url}/{REPO}/issues/1"
    assert first["issues"] == [
        {"target": FAILED.target, "action": "opened", "number": 1, "url": issue_url}
    ]
    assert main(argv) == 0
    second = capfd.readouterr()
    assert json.loads(second.out)["issues"] == [
        {"target": FAILED.target, "action": "commented", "number": 1, "url": issue_url}
    ]
    [issue] = fake_github.issues(REPO)
    assert f"[this run]({RUN})" in issue.body and len(issue.comments) == 1
    written = [second.out, second.err, runner["summary"].read_text(), runner["output"].read_text()]
    written += [issue.body, *issue.comments]
    assert not any(TOKEN in text for text in written)


def test_human_output_lists_the_issue_actions(results_dir, fake_github, monkeypatch, capsys):
    monkeypatch.delenv("GITHUB_TOKEN")
    monkeypatch.setenv("GH_TOKEN", TOKEN)
    assert main(["report", str(results_dir), "--issues", "--notify-success"]) == 0
    assert capsys.readouterr().out == (
        f"{SUMMARY}\n"
        f"opened issue #1 for qwen-2.5-7b-instruct: {fake_github.url}/{REPO}/issues/1\n"
        f"announced in issue #2 for llama-3.1-8b-instruct: {fake_github.url}/{REPO}/issues/2\n"
    )


def test_a_github_failure_exits_6_without_the_token(results_dir, fake_github, monkeypatch, capfd):
    monkeypatch.setenv("GITHUB_TOKEN", "ghs_revoked-token")
    assert main(["report", str(results_dir), "--issues"]) == 6
    captured = capfd.readouterr()
    assert captured.err == "paramdelta: error: GitHub acme/models: HTTP 401: Bad credentials\n"
    assert "ghs_revoked-token" not in captured.out + captured.err


def test_a_target_in_a_plan_file_and_a_result_file_counts_once(tmp_path, capsys):
    """plan recorded it up to date, then run published it: one row, what run did."""
    up_to_date = TargetResult(
        target=PUBLISHED.target, status="up-to-date", exit_code=0, duration_s=0.5
    )
    other = TargetResult(target="other", status="up-to-date", exit_code=0, duration_s=0.1)
    write_results(tmp_path / "plan.json", [up_to_date, other])
    write_results(tmp_path / "result.json", [PUBLISHED])
    assert main(["report", str(tmp_path / "plan.json"), str(tmp_path / "result.json")]) == 0
    out = capsys.readouterr().out
    assert out.count(PUBLISHED.target) == 1
    assert out.endswith("2 targets: 1 published, 1 up to date.\n")
    # The same file twice, or the results in the other order: still one each.
    assert load_results([tmp_path / "result.json", tmp_path / "plan.json"] * 2) == [
        PUBLISHED,
        other,
    ]


def test_outside_the_watchlist_s_folder_it_says_to_pass_watchlist(
    results_dir, tmp_path, monkeypatch, capsys
):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["report", str(results_dir)]) == 2
    assert capsys.readouterr().err == (
        f"paramdelta: error: no watchlist.yaml in {elsewhere}: pass --watchlist PATH"
        " (or run in the watchlist's folder)\n"
    )
    assert main(["report", str(results_dir), "--watchlist", str(tmp_path / "watchlist.yaml")]) == 0


def test_a_fan_out_with_missing_legs_gets_an_issue_naming_them(tmp_path, fake_github, capfd):
    error = (
        "target other: leg(s) 2, 3 of 4 missing from staging branch"
        " paramdelta-staging/other-0123456789ab of me/other (never ran, failed or were killed);"
        " nothing was published; re-run those legs, then --finish"
    )
    finish = TargetResult(
        target="other", status="failed", error=error, exit_code=10, duration_s=3.0
    )
    write_results(tmp_path / "r" / "paramdelta-result-other" / "result.json", [finish])
    assert main(["report", str(tmp_path / "r"), "--github", "--issues"]) == 0
    capfd.readouterr()
    [issue] = fake_github.issues(REPO)
    assert "other" in issue.title
    assert error in issue.body
