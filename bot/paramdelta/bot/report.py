"""Run results: one record per target, result files, the Markdown summary, and GitHub issues.

`paramdelta run` writes a result file per job; `paramdelta report` reads them
back (a matrix's downloaded artifacts), renders the job summary, and keeps one
issue per failing target. Issues are found again by a hidden marker in their
body, so a rerun comments on the open issue instead of opening a duplicate.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_args
from uuid import uuid4

import requests
from github import Auth, Github, GithubException, GithubRetry, UnknownObjectException
from github.Issue import Issue
from github.Repository import Repository

from paramdelta.errors import GitHubError, UsageError
from paramdelta.tokens import redact

Status = Literal["published", "pr-opened", "up-to-date", "dry-run", "failed"]
STATUSES: tuple[Status, ...] = get_args(Status)
SUCCEEDED = frozenset({"published", "pr-opened"})
_STATUS_WORDS = {
    "published": "published",
    "pr-opened": "PR opened",
    "up-to-date": "up to date",
    "dry-run": "dry run",
    "failed": "failed",
}
_LINK_WORDS = {"published": "commit", "pr-opened": "pull request"}

_OPTIONAL_STR = ((str, type(None)), "a string or null")
# field -> (the JSON types it accepts, how to say so in an error)
_FIELD_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "target": ((str,), "a string"),
    "status": ((str,), "a string"),
    "output_repo": _OPTIONAL_STR,
    "new_base_repo": _OPTIONAL_STR,
    "new_base_sha": _OPTIONAL_STR,
    "url": _OPTIONAL_STR,
    "error": _OPTIONAL_STR,
    "exit_code": ((int,), "an integer"),
    "duration_s": ((int, float), "a number"),
}
_SUCCESS_FIELDS = ("output_repo", "new_base_repo", "new_base_sha", "url")
_REQUIRED_FOR_STATUS = {
    "published": _SUCCESS_FIELDS,
    "pr-opened": _SUCCESS_FIELDS,
    "failed": ("error",),
}


@dataclass(frozen=True, kw_only=True)
class TargetResult:
    """What one watchlist target's run did."""

    target: str
    status: Status
    output_repo: str | None = None
    new_base_repo: str | None = None
    new_base_sha: str | None = None
    url: str | None = None  # the published commit, or the pull request
    error: str | None = None
    exit_code: int
    duration_s: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str) -> TargetResult:
        """Validate one record from a result file; ``where`` names it in errors."""
        if not isinstance(data, dict):
            raise UsageError(f"{where}: expected an object, not {type(data).__name__}")
        if unknown := sorted(set(data) - set(_FIELD_TYPES)):
            raise UsageError(f"{where}: unknown field {unknown[0]!r}")
        for field in fields(cls):
            if field.name not in data:
                raise UsageError(f"{where}: missing field {field.name!r}")
            value = data[field.name]
            types, description = _FIELD_TYPES[field.name]
            if isinstance(value, bool) or not isinstance(value, types):
                raise UsageError(
                    f"{where}: field {field.name!r} must be {description}, not {value!r}"
                )
        status = data["status"]
        if status not in STATUSES:
            raise UsageError(
                f"{where}: field 'status' must be one of {', '.join(STATUSES)}, not {status!r}"
            )
        for name in _REQUIRED_FOR_STATUS.get(status, ()):
            if data[name] is None:
                raise UsageError(f"{where}: field {name!r} must be set when status is {status!r}")
        return cls(**{**data, "duration_s": float(data["duration_s"])})


@dataclass(frozen=True)
class IssueAction:
    """What `sync_issues` did to one issue."""

    target: str
    action: Literal["opened", "commented", "closed", "announced"]
    number: int
    url: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- result files -------------------------------------------------------------------------


def write_results(path: str | os.PathLike[str], results: Iterable[TargetResult]) -> None:
    """Write a result file atomically; tokens are scrubbed, as it may become a public artifact."""
    path = Path(path)
    text = json.dumps({"results": [r.to_dict() for r in results]}, indent=2) + "\n"
    tmp = path.with_name(f".{path.name}.{uuid4().hex}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(redact(text), encoding="utf-8")
        tmp.replace(path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UsageError(f"{path}: {e.strerror}") from None


def load_results(paths: Iterable[str | os.PathLike[str]]) -> list[TargetResult]:
    """Read result files; a directory stands for every *.json below it (downloaded artifacts)."""
    results: list[TargetResult] = []
    for path in map(Path, paths):
        if path.is_dir():
            # download-artifact puts each artifact in its own subdirectory
            files = sorted(path.rglob("*.json"))
        elif path.exists():
            files = [path]
        else:
            raise UsageError(f"{path}: no such file or directory")
        for file in files:
            results.extend(_load_file(file))
    return results


def _load_file(path: Path) -> list[TargetResult]:
    try:
        data = json.loads(path.read_bytes())
    except OSError as e:
        raise UsageError(f"{path}: {e.strerror}") from None
    except ValueError as e:  # bad JSON, or not UTF-8
        raise UsageError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise UsageError(f'{path}: expected an object {{"results": [...]}}')
    if unknown := sorted(set(data) - {"results"}):
        raise UsageError(f"{path}: unknown field {unknown[0]!r}")
    return [
        TargetResult.from_dict(item, f"{path}: results[{i}]")
        for i, item in enumerate(data["results"])
    ]


# --- the Markdown summary -----------------------------------------------------------------


def summary_markdown(results: Sequence[TargetResult], run_url: str | None = None) -> str:
    """The job summary: a table of targets, the failures' errors, and a line of counts."""
    lines = ["### ParamΔ merges", ""]
    if results:
        lines += [
            "| target | new base | status | link | duration |",
            "| --- | --- | --- | --- | --- |",
        ]
        lines += ["| " + " | ".join(map(_cell, _row(r))) + " |" for r in results]
        lines.append("")
    failures = [
        f"- **{_cell(r.target)}**: {_cell(r.error)}" for r in results if r.status == "failed"
    ]
    if failures:
        lines += ["Errors:", "", *failures, ""]
    lines.append(_counts(results) + (f" [Workflow run]({run_url})" if run_url else ""))
    return "\n".join(lines) + "\n"


def _row(r: TargetResult) -> tuple[str, ...]:
    status = _STATUS_WORDS[r.status]
    if r.status == "failed":
        status += f" (exit {r.exit_code})"
    link = f"[{_LINK_WORDS.get(r.status, 'link')}]({r.url})" if r.url else ""
    return (r.target, _base_ref(r, short=True), status, link, _duration(r.duration_s))


def _counts(results: Sequence[TargetResult]) -> str:
    by_status = Counter(r.status for r in results)
    parts = [f"{by_status[s]} {_STATUS_WORDS[s]}" for s in STATUSES if by_status[s]]
    noun = "target" if len(results) == 1 else "targets"
    return f"{len(results)} {noun}" + (": " + ", ".join(parts) if parts else "") + "."


def _cell(text: str | None) -> str:
    # A table cell is one line, and a bare | would end it.
    return " ".join((text or "-").split()).replace("|", "\\|")


def _base_ref(r: TargetResult, *, short: bool) -> str:
    if not r.new_base_repo:
        return ""
    if not r.new_base_sha:
        return r.new_base_repo
    return f"{r.new_base_repo}@{r.new_base_sha[:7] if short else r.new_base_sha}"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"


# --- GitHub issues ------------------------------------------------------------------------

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
_FAILING_RE = re.compile(r"<!-- paramdelta:target=(.+?) -->")
_PUBLISHED_RE = re.compile(r"<!-- paramdelta:published=(.+?) -->")


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
    relevant = [r for r in results if r.status != "dry-run"]
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
            body = issue.body or ""
            self._announced.update(_PUBLISHED_RE.findall(body))
            if issue.state == "open":
                for target in _FAILING_RE.findall(body):
                    self._open.setdefault(target, issue)

    def update(self, r: TargetResult) -> IssueAction | None:
        if r.status == "failed":
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
        title = f"ParamΔ published: {r.output_repo} ({r.target} onto {_base_ref(r, short=True)})"
        issue = self._create(title, _announcement_body(r, key, self._run_url))
        return IssueAction(r.target, "announced", issue.number, issue.html_url)

    def _create(self, title: str, body: str) -> Issue:
        if not self._label_exists:
            try:
                self._repo.get_label(self._label)
            except UnknownObjectException:
                self._repo.create_label(self._label, LABEL_COLOR, LABEL_DESCRIPTION)
            self._label_exists = True
        return self._repo.create_issue(title=title, body=redact(body), labels=[self._label])

    @staticmethod
    def _comment(issue: Issue, body: str) -> None:
        issue.create_comment(redact(body))


def _where(run_url: str | None) -> str:
    return f"[this run]({run_url})" if run_url else "a run outside GitHub Actions"


def _failure_text(r: TargetResult, run_url: str | None) -> str:
    error = r.error or ""
    if len(error) > _MAX_ERROR_CHARS:
        error = "…" + error[-_MAX_ERROR_CHARS:]  # the end of a long error says the most
    fence = "```"
    while fence in error:
        fence += "`"
    onto = f" onto `{base}`" if (base := _base_ref(r, short=False)) else ""
    return (
        f"The ParamΔ merge of **{r.target}**{onto} failed with exit code {r.exit_code}"
        f" in {_where(run_url)}:\n\n"
        f"{fence}text\n{error}\n{fence}\n"
    )


def _failure_body(r: TargetResult, run_url: str | None) -> str:
    return (
        f"{_FAILING_MARKER.format(r.target)}\n{_failure_text(r, run_url)}\n"
        "paramdelta-bot keeps this issue up to date: each new failure adds a comment,"
        " and the issue is closed when the target succeeds again.\n"
    )


def _fixed_text(r: TargetResult, run_url: str | None) -> str:
    if r.status == "up-to-date":
        return (
            f"Resolved as of {_where(run_url)}: `{r.output_repo}` is up to date with"
            f" `{_base_ref(r, short=False)}`.\n\nClosing.\n"
        )
    done = "published to" if r.status == "published" else "opened a pull request on"
    return (
        f"Fixed by {_where(run_url)}: **{r.target}** merged onto `{_base_ref(r, short=False)}`"
        f" and {done} `{r.output_repo}`: {r.url}\n\nClosing.\n"
    )


def _announcement_body(r: TargetResult, key: str, run_url: str | None) -> str:
    return (
        f"{_PUBLISHED_MARKER.format(key)}\n"
        f"**{r.target}** was merged onto `{_base_ref(r, short=False)}` by {_where(run_url)}"
        f" and published to `{r.output_repo}`: {r.url}\n"
    )
