"""Attacks on `report`: result artifacts are written by other jobs, and trusted as they were.

A result's `target` was taken as is: a name holding `-->` planted a second issue marker,
and any leg could close another target's issue; upstream text reached the job summary as
Markdown; a leg that died left no result and no issue. (The action's multi-line
`results`: tests/test_action.py.)
"""

import pytest

from doubles.github import FakeGitHub
from paramdelta.cli import main
from paramdelta.reporting import issues
from paramdelta.reporting.results import TargetResult, write_results

REPO = "acme/models"
TOKEN = "ghs_hostile-report-token"


@pytest.fixture
def github(tmp_path, monkeypatch):
    monkeypatch.setattr(issues, "SECONDS_BETWEEN_REQUESTS", 0)
    monkeypatch.setattr(issues, "SECONDS_BETWEEN_WRITES", 0)
    for name in ("GITHUB_SERVER_URL", "GITHUB_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "watchlist.yaml").write_text(
        "targets:\n"
        + "".join(
            f"  - {{name: {n}, base: org/base, post: org/post, new_base: org/new, output: me/{n}}}\n"
            for n in ("good", "victim")
        )
    )
    monkeypatch.chdir(tmp_path)
    with FakeGitHub(token=TOKEN) as server:
        server.add_repo(REPO)
        monkeypatch.setenv("GITHUB_API_URL", server.url)
        monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
        monkeypatch.setenv("GITHUB_REPOSITORY", REPO)
        yield server


def _result(target, status, **fields):
    defaults = {"exit_code": 4, "error": "boom"} if status == "failed" else {"exit_code": 0}
    if status == "published":
        defaults |= {
            "output_repo": f"me/{target}",
            "new_base_repo": "org/new",
            "new_base_sha": "a" * 40,
            "url": "https://x.test/c",
        }
    return TargetResult(target=target, status=status, duration_s=1.0, **(defaults | fields))


def _artifact(results, job, *records):
    write_results(results / f"paramdelta-result-{job}" / "result.json", records)


def _report(results, capsys):
    assert main(["report", str(results), "--issues"]) == 0
    return capsys.readouterr()


def test_results_for_targets_outside_the_watchlist_are_ignored(github, tmp_path, capsys):
    results = tmp_path / "results"
    forged = "victim --><!-- paramdelta:target=good"
    _artifact(results, "victim", _result(forged, "failed"))
    printed = _report(results, capsys)
    file = results / "paramdelta-result-victim" / "result.json"
    assert printed.err == (
        f"paramdelta: warning: {file}: results[0]: target {forged!r} is not in the watchlist;"
        " ignored\n"
    )
    assert github.issues(REPO) == []


def test_a_leg_speaks_for_its_own_target_only(github, tmp_path, capsys):
    results = tmp_path / "results"
    _artifact(results, "victim", _result("victim", "failed"))
    _report(results, capsys)
    [issue] = github.issues(REPO)
    assert issue.state == "open"

    later = tmp_path / "later"
    _artifact(later, "victim", _result("victim", "failed"))
    _artifact(
        later,
        "good",
        _result("good", "published"),
        _result("victim", "up-to-date"),
    )  # "victim is fine": closes its issue
    _artifact(later, "plan", _result("victim", "published"))
    printed = _report(later, capsys)
    assert (
        f"{later / 'paramdelta-result-good' / 'result.json'}: results[1]: the artifact of"
        " target 'good' cannot speak for 'victim'; ignored\n"
    ) in printed.err
    assert (
        f"{later / 'paramdelta-result-plan' / 'result.json'}: results[0]: the plan job's"
        " artifact cannot say 'published'; ignored\n"
    ) in printed.err
    [issue] = github.issues(REPO)
    assert (issue.state, len(issue.comments)) == ("open", 1)


def test_an_error_quoting_a_marker_does_not_take_over_another_targets_issue(
    github, tmp_path, capsys
):
    results = tmp_path / "results"
    planted = "tensor '<!-- paramdelta:target=good -->' is malformed"
    _artifact(results, "victim", _result("victim", "failed", error=planted))
    _report(results, capsys)
    # good succeeds: the victim's issue, which quotes good's marker, stays open.
    again = tmp_path / "again"
    _artifact(again, "good", _result("good", "published"))
    _report(again, capsys)
    [issue] = github.issues(REPO)
    assert issue.state == "open" and issue.body.startswith("<!-- paramdelta:target=victim -->\n")


def test_upstream_text_is_markdown_text_in_the_summary(github, tmp_path, capsys):
    results = tmp_path / "results"
    error = "header of 'w' is bad: ![x](https://evil.test/i.png) <script>alert(1)</script>"
    _artifact(results, "victim", _result("victim", "failed", error=error))
    out = _report(results, capsys).out
    assert (
        "- **victim**: header of 'w' is bad: !\\[x\\](https://evil.test/i.png)"
        " \\<script\\>alert(1)\\</script\\>\n"
    ) in out


def test_a_planned_target_that_no_leg_reported_on_is_a_failure(github, tmp_path, capsys):
    results = tmp_path / "results"
    _artifact(results, "plan", _result("good", "up-to-date"), _result("victim", "planned"))
    out = _report(results, capsys).out  # the victim's leg was killed: no artifact
    assert "| victim | - | failed (exit 8) | - | 1.0s |" in out
    [issue] = github.issues(REPO)
    assert issue.title == "ParamΔ merge failing: victim"
    assert (
        "planned, but its merge job reported no result (cancelled, timed out, killed," in issue.body
    )

    # Its leg's result, when there is one, is what counts.
    _artifact(results, "victim", _result("victim", "published"))
    out = _report(results, capsys).out
    assert "| victim | org/new@aaaaaaa | published | [commit](https://x.test/c) | 1.0s |" in out
    [issue] = github.issues(REPO)
    assert issue.state == "closed"
