"""GitHub issues for a run's results: one per failing target, closed once it succeeds.

Issues are found again by a hidden marker on the first line of their body, so
a rerun comments on the open issue instead of opening a duplicate. Only that
line counts, and the target in it is percent-encoded: an error message quoted
further down cannot plant a second marker. What comes from a result file is
shown as Markdown text (see `markdown`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal
from urllib.parse import quote, unquote

import requests
from github import Auth, Github, GithubException, GithubRetry, UnknownObjectException
from github.Issue import Issue
from github.Repository import Repository

from paramdelta.errors import GitHubError
from paramdelta.rendering import markdown
from paramdelta.rendering.check_report import check_table
from paramdelta.reporting.results import FAILED, TargetResult
from paramdelta.tokens import redact, shorten


@dataclass(frozen=True)
class IssueAction:
    """What `sync_issues` did to one issue."""

    target: str
    action: Literal["opened", "commented", "closed", "announced"]
    number: int
    url: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# PyGithub's own pacing, which GitHub asks integrations to keep to avoid secondary rate limits
# (module settings so the tests can turn them off).
SECONDS_BETWEEN_REQUESTS = 0.25
SECONDS_BETWEEN_WRITES = 1.0
# A primary rate limit can take an hour to reset: fail the job rather than sleep that long.
MAX_RATE_LIMIT_WAIT = 300
# GithubRetry's default leaves out PATCH (closing an issue), which is as safe to repeat.
_RETRIED_METHODS = GithubRetry.DEFAULT_ALLOWED_METHODS | {"GET", "POST", "PATCH"}

LABEL_COLOR = "5319e7"
LABEL_DESCRIPTION = "Opened and closed by paramdelta-bot"
_MAX_ERROR_CHARS = 5000  # GitHub refuses issue bodies over 65536 characters
_FAILING_MARKER = "<!-- paramdelta:target={} -->"
_PUBLISHED_MARKER = "<!-- paramdelta:published={} -->"
_MARKER_RE = re.compile(r"<!-- paramdelta:(target|published)=([\w.~%@-]+) -->")


def sync_issues(
    results: Sequence[TargetResult],
    *,
    repo: str,
    token: str,
    base_url: str,
    label: str = "paramdelta",
    notify_success: bool = False,
    run_url: str | None = None,
) -> list[IssueAction]:
    """Keep one open issue per failing target in ``repo``, and close it once the target succeeds.

    A failing target's issue is opened once and commented on by later failing
    runs; a success comments and closes it, and so does "up-to-date" (the
    output is current, e.g. a transient failure was followed by an unchanged
    plan). With ``notify_success`` each publish also gets one announcement
    issue. Dry runs change nothing.
    """
    relevant = [r for r in results if r.status not in ("dry-run", "planned", "staged")]
    if not relevant:
        return []
    client = Github(
        auth=Auth.Token(token),
        base_url=base_url,
        per_page=100,
        retry=GithubRetry(
            max_rate_limit_wait=MAX_RATE_LIMIT_WAIT, allowed_methods=_RETRIED_METHODS
        ),
        seconds_between_requests=SECONDS_BETWEEN_REQUESTS,
        seconds_between_writes=SECONDS_BETWEEN_WRITES,
    )
    try:
        tracker = _IssueTracker(client.get_repo(repo), label, run_url, with_closed=notify_success)
        actions = [tracker.update(r) for r in relevant]
        if notify_success:
            actions += [tracker.announce(r) for r in relevant if r.status == "published"]
        return [a for a in actions if a is not None]
    except GithubException as e:
        data = e.data if isinstance(e.data, dict) else {}
        message = e.message or data.get("message") or "no message"
        raise GitHubError(f"GitHub {repo}: HTTP {e.status}: {message}") from None
    except requests.RequestException as e:  # connection errors, retries used up
        reason = getattr(e.args[0], "reason", e) if e.args else e  # urllib3's, without the URL
        raise GitHubError(f"GitHub {repo}: request failed: {reason}") from None
    finally:
        client.close()


class _IssueTracker:
    """The labelled issues of one repository, by the marker in their body."""

    def __init__(self, repo: Repository, label: str, run_url: str | None, *, with_closed: bool):
        self._repo = repo
        self._label = label
        self._run_url = run_url
        self._label_exists = False
        self._open: dict[str, Issue] = {}  # failing target -> its open issue
        self._announced: set[str] = set()  # "target@sha" already announced, open or closed
        # Announcements must not repeat even once closed; failures only matter while open.
        for issue in repo.get_issues(state="all" if with_closed else "open", labels=[label]):
            marker = _marker(issue.body or "")
            if marker is None:
                continue
            kind, key = marker
            if kind == "published":
                self._announced.add(key)
            elif issue.state == "open":
                self._open.setdefault(key, issue)

    def update(self, r: TargetResult) -> IssueAction | None:
        if r.status in FAILED:
            if issue := self._open.get(r.target):
                self._comment(issue, _failure_text(r, self._run_url))
                return IssueAction(r.target, "commented", issue.number, issue.html_url)
            issue = self._create(
                f"ParamΔ merge failing: {r.target}", _failure_body(r, self._run_url)
            )
            self._open[r.target] = issue
            return IssueAction(r.target, "opened", issue.number, issue.html_url)
        if issue := self._open.pop(r.target, None):
            self._comment(issue, _fixed_text(r, self._run_url))
            issue.edit(state="closed", state_reason="completed")
            return IssueAction(r.target, "closed", issue.number, issue.html_url)
        return None

    def announce(self, r: TargetResult) -> IssueAction | None:
        key = f"{r.target}@{r.new_base_sha}"
        if key in self._announced:
            return None
        self._announced.add(key)
        title = f"ParamΔ published: {r.output_repo} ({r.target} onto {r.new_base_ref(short=True)})"
        issue = self._create(title, _announcement_body(r, key, self._run_url))
        return IssueAction(r.target, "announced", issue.number, issue.html_url)

    def _create(self, title: str, body: str) -> Issue:
        if not self._label_exists:
            try:
                self._repo.get_label(self._label)
            except UnknownObjectException:
                self._repo.create_label(self._label, LABEL_COLOR, LABEL_DESCRIPTION)
            self._label_exists = True
        return self._repo.create_issue(title=redact(title), body=redact(body), labels=[self._label])

    @staticmethod
    def _comment(issue: Issue, body: str) -> None:
        issue.create_comment(redact(body))


def _marker(body: str) -> tuple[str, str] | None:
    """(kind, target or target@sha) of the marker that opens ``body``; None without one."""
    match = _MARKER_RE.fullmatch(body.partition("\n")[0].strip())
    return (match[1], unquote(match[2])) if match else None


def _key(text: str) -> str:
    return quote(text, safe="@")


def _where(run_url: str | None) -> str:
    return markdown.link("this run", run_url) if run_url else "a run outside GitHub Actions"


def _failure_text(r: TargetResult, run_url: str | None) -> str:
    error = shorten(r.error or "", _MAX_ERROR_CHARS, keep="end")  # its end says the most
    fence = "```"
    while fence in error:
        fence += "`"
    onto = f" onto {markdown.code(base)}" if (base := r.new_base_ref(short=False)) else ""
    what = "was blocked by the pre-publish check" if r.status == "check-failed" else "failed"
    text = (
        f"The ParamΔ merge of **{markdown.text(r.target)}**{onto} {what} with exit code"
        f" {r.exit_code} in {_where(run_url)}:\n\n"
        f"{fence}text\n{error}\n{fence}\n"
    )
    if r.check and r.check.get("steps"):
        text += f"\nThe check's numbers (nothing was published):\n\n{check_table(r.check)}"
    return text


def _failure_body(r: TargetResult, run_url: str | None) -> str:
    return (
        f"{_FAILING_MARKER.format(_key(r.target))}\n{_failure_text(r, run_url)}\n"
        "paramdelta-bot keeps this issue up to date: each new failure adds a comment,"
        " and the issue is closed when the target succeeds again.\n"
    )


def _fixed_text(r: TargetResult, run_url: str | None) -> str:
    target, output, onto = _names(r)
    if r.status == "up-to-date":
        return (
            f"Resolved as of {_where(run_url)}: {output} is up to date with {onto}.\n\nClosing.\n"
        )
    done = {"published": "published to", "in-review": "is in review in a pull request on"}.get(
        r.status, "opened a pull request on"
    )
    return (
        f"Fixed by {_where(run_url)}: **{target}** merged onto {onto}"
        f" and {done} {output}: {markdown.url(r.url)}\n\nClosing.\n"
    )


def _announcement_body(r: TargetResult, key: str, run_url: str | None) -> str:
    target, output, onto = _names(r)
    return (
        f"{_PUBLISHED_MARKER.format(_key(key))}\n"
        f"**{target}** was merged onto {onto} by {_where(run_url)}"
        f" and published to {output}: {markdown.url(r.url)}\n"
    )


def _names(r: TargetResult) -> tuple[str, str, str]:
    """The target, output repo and new base of a result, as Markdown text."""
    return (
        markdown.text(r.target),
        markdown.code(r.output_repo),
        markdown.code(r.new_base_ref(short=False)),
    )
