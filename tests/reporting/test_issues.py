import dataclasses
import re

import pytest

from doubles.github import FakeGitHub
from paramdelta.errors import GitHubError
from paramdelta.reporting import issues as report
from paramdelta.reporting.issues import IssueAction, sync_issues
from paramdelta.tokens import register

from .records import LLAMA, failed, published, quiet

TOKEN = "ghs_report-test-token"
REPO = "acme/models"
RUN = "https://github.com/acme/models/actions/runs/7"


@pytest.fixture
def fake_github(monkeypatch):
    monkeypatch.setattr(report, "SECONDS_BETWEEN_REQUESTS", 0)
    monkeypatch.setattr(report, "SECONDS_BETWEEN_WRITES", 0)
    with FakeGitHub(token=TOKEN) as server:
        server.add_repo(REPO)
        yield server


def sync(fake, results, **kwargs):
    return sync_issues(results, repo=REPO, token=TOKEN, base_url=fake.url, run_url=RUN, **kwargs)


def test_a_first_failure_opens_one_labelled_issue(fake_github):
    actions = sync(fake_github, [failed()])
    [issue] = fake_github.issues(REPO)
    assert actions == [IssueAction(LLAMA, "opened", 1, f"{fake_github.url}/{REPO}/issues/1")]
    assert issue.title == f"ParamΔ merge failing: {LLAMA}"
    assert issue.labels == ["paramdelta"] and issue.state == "open" and issue.comments == []
    assert issue.body.startswith(f"<!-- paramdelta:target={LLAMA} -->\n")
    assert (
        f"The ParamΔ merge of **{LLAMA}** onto `meta-llama/Llama-3.1-8B@{'a' * 40}` failed"
        f" with exit code 4 in [this run]({RUN}):\n\n```text\nHubError: 503 from the Hub\n```\n"
    ) in issue.body
    [label_request] = [r for r in fake_github.requests if r.path.endswith("/labels")]
    assert label_request.body == {
        "name": "paramdelta",
        "color": report.LABEL_COLOR,
        "description": report.LABEL_DESCRIPTION,
    }


def test_a_second_failure_comments_on_the_same_issue(fake_github):
    sync(fake_github, [failed()])
    actions = sync(fake_github, [failed(error="CheckpointError: shape mismatch", sha="c" * 40)])
    [issue] = fake_github.issues(REPO)
    assert actions == [IssueAction(LLAMA, "commented", 1, f"{fake_github.url}/{REPO}/issues/1")]
    [comment] = issue.comments
    assert f"`meta-llama/Llama-3.1-8B@{'c' * 40}`" in comment
    assert f"[this run]({RUN})" in comment and "CheckpointError: shape mismatch" in comment
    assert not any(r.path.endswith("/labels/paramdelta") for r in fake_github.requests[-3:])


def test_a_success_comments_and_closes_the_issue(fake_github):
    sync(fake_github, [failed()])
    assert sync(fake_github, [published()]) == [
        IssueAction(LLAMA, "closed", 1, f"{fake_github.url}/{REPO}/issues/1")
    ]
    [issue] = fake_github.issues(REPO)
    assert (issue.state, issue.state_reason) == ("closed", "completed")
    assert issue.comments == [
        f"Fixed by [this run]({RUN}): **{LLAMA}** merged onto `meta-llama/Llama-3.1-8B@{'b' * 40}`"
        " and published to `acme/Llama-3.1-8B-Instruct-ParamDelta`:"
        " https://huggingface.co/acme/Llama-3.1-8B-Instruct-ParamDelta/commit/c0ffee\n\nClosing.\n"
    ]
    # a closed issue is history: the next failure opens a new one
    assert [a.action for a in sync(fake_github, [failed()])] == ["opened"]
    assert [i.state for i in fake_github.issues(REPO)] == ["closed", "open"]


def test_each_failing_target_has_its_own_issue(fake_github):
    sync(fake_github, [failed("a"), failed("b")])
    assert sync(fake_github, [failed("b"), published("a")]) == [
        IssueAction("b", "commented", 2, f"{fake_github.url}/{REPO}/issues/2"),
        IssueAction("a", "closed", 1, f"{fake_github.url}/{REPO}/issues/1"),
    ]
    assert [(i.title, i.state) for i in fake_github.issues(REPO)] == [
        ("ParamΔ merge failing: a", "closed"),
        ("ParamΔ merge failing: b", "open"),
    ]


def test_success_without_an_open_issue_changes_nothing(fake_github):
    assert sync(fake_github, [published()]) == []
    assert fake_github.issues(REPO) == []


def test_dry_run_does_not_call_github(fake_github):
    assert sync(fake_github, [quiet("dry-run")]) == []
    assert fake_github.requests == []


def test_up_to_date_closes_the_issue_of_a_transient_failure(fake_github):
    [opened] = sync(fake_github, [failed()])
    current = dataclasses.replace(published(), status="up-to-date", url=None, duration_s=0.2)
    [closed] = sync(fake_github, [current])
    assert (closed.action, closed.number) == ("closed", opened.number)
    [issue] = fake_github.issues(REPO)
    assert issue.state == "closed"
    assert issue.comments[-1].startswith("Resolved as of ")
    assert issue.comments[-1].endswith(
        " is up to date with `meta-llama/Llama-3.1-8B@" + "b" * 40 + "`.\n\nClosing.\n"
    )


def test_notify_success_announces_a_publish_once(fake_github):
    [action] = sync(fake_github, [published()], notify_success=True)
    assert action == IssueAction(LLAMA, "announced", 1, f"{fake_github.url}/{REPO}/issues/1")
    [issue] = fake_github.issues(REPO)
    assert issue.title == (
        f"ParamΔ published: acme/Llama-3.1-8B-Instruct-ParamDelta ({LLAMA} onto"
        " meta-llama/Llama-3.1-8B@bbbbbbb)"
    )
    assert issue.body.startswith(f"<!-- paramdelta:published={LLAMA}@{'b' * 40} -->\n")
    assert sync(fake_github, [published()], notify_success=True) == []


def test_a_closed_announcement_is_not_repeated(fake_github):
    marker = f"<!-- paramdelta:published={LLAMA}@{'b' * 40} -->"
    fake_github.add_issue(REPO, "old news", marker, ["paramdelta"], state="closed")
    assert sync(fake_github, [published()], notify_success=True) == []
    [action] = sync(fake_github, [published(sha="d" * 40)], notify_success=True)
    assert (action.action, action.number) == ("announced", 2)


def test_an_issue_opened_earlier_is_found_beyond_the_first_page(fake_github):
    fake_github.add_issue(REPO, "by hand", f"<!-- paramdelta:target={LLAMA} -->", ["paramdelta"])
    for n in range(120):  # newer issues come first, so the marker issue is on page 2
        fake_github.add_issue(REPO, f"other {n}", "", ["paramdelta"])
    assert [a.action for a in sync(fake_github, [failed()])] == ["commented"]
    assert len(fake_github.issues(REPO)[0].comments) == 1
    assert [r.query.get("page") for r in fake_github.requests if r.path.endswith("/issues")] == [
        None,
        "2",
    ]


@pytest.mark.parametrize(
    ("status", "method", "path"),
    [(403, "POST", r"/issues$"), (429, "POST", r"/issues$"), (403, "PATCH", r"/issues/1$")],
)
def test_a_secondary_rate_limit_is_retried(fake_github, status, method, path):
    fake_github.add_issue(REPO, "stale", "<!-- paramdelta:target=fixed -->", ["paramdelta"])
    fake_github.faults.add(method=method, path=path, status=status)  # Retry-After: 0
    actions = sync(fake_github, [failed(), published("fixed")])
    assert [a.action for a in actions] == ["opened", "closed"]
    retried = [
        r.status for r in fake_github.requests if r.method == method and re.search(path, r.path)
    ]
    assert retried == [status, 201 if method == "POST" else 200]
    assert [i.state for i in fake_github.issues(REPO)] == ["closed", "open"]


def test_github_errors_are_one_line_and_hide_the_token(fake_github):
    with pytest.raises(GitHubError) as e:
        sync_issues([failed()], repo=REPO, token="ghs_wrong-token", base_url=fake_github.url)
    assert str(e.value) == "GitHub acme/models: HTTP 401: Bad credentials"
    assert e.value.exit_code == 6
    with pytest.raises(GitHubError, match=r"^GitHub acme/gone: HTTP 404: Not Found$"):
        sync_issues([failed()], repo="acme/gone", token=TOKEN, base_url=fake_github.url)
    fake_github.faults.add(status=502, headers={}, times=100)
    with pytest.raises(GitHubError) as e:
        sync(fake_github, [failed()])
    assert str(e.value) == "GitHub acme/models: request failed: too many 502 error responses"


def test_issue_text_is_scrubbed_and_fenced(fake_github):
    secret = register("hf_issue-body-secret")
    sync(fake_github, [failed(error=f"bad token {secret}\n```\ninjected")])
    [issue] = fake_github.issues(REPO)
    assert secret not in issue.body
    assert "\n````text\nbad token ***\n```\ninjected\n````\n" in issue.body


def test_a_blocked_publish_shows_the_checks_numbers_in_its_issue(fake_github):
    check = {
        "status": "failed",
        "reason": "perplexity: merged 1168 is over 3 x 258.5, the better of post 260.7, new base 258.5",
        "steps": [
            {"step": "load", "passed": True, "detail": "LlamaForCausalLM, bfloat16"},
            {"step": "perplexity", "passed": False, "detail": "merged 1168 is over 3 x 258.5"},
        ],
        "perplexity": {
            "merged": 1168.4,
            "post": 260.69,
            "new_base": 258.51,
            "better": 258.51,
            "ratio": 4.5195,
            "factor": 3.0,
        },
    }
    blocked = dataclasses.replace(
        failed(error=f"pre-publish check failed: {check['reason']}"),
        status="check-failed",
        exit_code=9,
        check=check,
    )
    assert [a.action for a in sync(fake_github, [blocked])] == ["opened"]
    [issue] = fake_github.issues(REPO)
    assert (
        f"The ParamΔ merge of **{LLAMA}** onto `meta-llama/Llama-3.1-8B@{'a' * 40}` was blocked"
        " by the pre-publish check with exit code 9"
    ) in issue.body
    assert (
        "The check's numbers (nothing was published):\n\n"
        "| check | result | detail |\n"
        "| --- | --- | --- |\n"
        "| model loads | pass | LlamaForCausalLM, bfloat16 |\n"
        "| perplexity | **fail** | merged 1168 is over 3 x 258.5 |\n"
        "\n"
        "Perplexity: merged 1168.4, post 260.69, new_base 258.51, better 258.51, ratio 4.5195,"
        " factor 3.0.\n"
    ) in issue.body
    # a later success closes it like any other failure
    assert [a.action for a in sync(fake_github, [published()])] == ["closed"]


def test_a_long_error_is_redacted_before_it_is_cut(fake_github):
    secret = register("hf_straddling-the-cut-secret")
    # The error's last 5000 characters begin inside the token: cut first, its tail leaked.
    error = f"refused {secret}{'y' * (5000 - 8)}"
    sync(fake_github, [failed(error=error)])
    [issue] = fake_github.issues(REPO)
    assert not any(secret[i:] in issue.body for i in range(len(secret) - 4))
    assert f"\n```text\n…sed ***{'y' * 4992}\n```\n" in issue.body  # redacted, then cut
