"""A loopback fake of the GitHub REST API: the calls `paramdelta report --issues` makes.

It serves what PyGithub asks for when reading a repository, finding and
creating a label, listing issues by state and label (paginated with Link
headers, like GitHub), opening an issue, commenting on it and closing it.
Every URL in a response points back at this server, so PyGithub follows them
here. Requests need `Authorization: token|Bearer <token>` (401 otherwise);
tokens are never logged. `faults` makes chosen requests fail first, e.g. a
secondary rate limit:

    with FakeGitHub(token="t0ken") as gh:
        gh.add_repo("acme/models")
        gh.faults.add(method="POST", path=r"/issues$", status=403)  # Retry-After: 0
        ...
        assert [i.title for i in gh.issues("acme/models")] == [...]
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from paramdelta.testing.faults import Faults

DEFAULT_TOKEN = "fake-github-token"
SECONDARY_RATE_LIMIT = (
    "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."
)
_DOCS = "https://docs.github.com/rest"
_MAX_PER_PAGE = 100
_REPO_PATH = re.compile(r"/repos/(?P<owner>[^/]+)/(?P<name>[^/]+)(?P<rest>.*)")


@dataclass
class FakeIssue:
    number: int
    title: str
    body: str
    labels: list[str]
    state: str = "open"
    state_reason: str | None = None
    comments: list[str] = field(default_factory=list)
    created_at: str = ""
    closed_at: str | None = None
    id: int = 0


@dataclass(frozen=True)
class Request:
    """One request as the server saw it (headers left out: they hold the token)."""

    method: str
    path: str
    query: dict[str, str]
    body: Any
    status: int


class GitHubFaults(Faults):
    """Faults whose defaults are GitHub's secondary rate limit: 403, ``Retry-After: 0``
    and its message, the response PyGithub's GithubRetry retries at once."""

    def add(  # type: ignore[override]
        self,
        method: str | None = None,
        path: str | None = None,
        status: int = 403,
        headers: dict[str, str] | None = None,
        body: Any = None,
        times: int = 1,
    ) -> None:
        super().add(
            method=method,
            path=path,
            status=status,
            times=times,
            headers={"Retry-After": "0"} if headers is None else headers,
            body={"message": SECONDARY_RATE_LIMIT, "documentation_url": _DOCS}
            if body is None
            else body,
        )


@dataclass
class _Repo:
    full_name: str
    id: int
    labels: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> color, description
    issues: list[FakeIssue] = field(default_factory=list)


_Response = tuple[int, Any, dict[str, str]]


class _ApiError(Exception):
    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.payload = {"message": message, "documentation_url": _DOCS, **extra}


class FakeGitHub:
    """A GitHub API on 127.0.0.1 at a free port; `url` is its API base URL."""

    def __init__(self, token: str = DEFAULT_TOKEN) -> None:
        self._token = token
        self._lock = threading.Lock()
        self._repos: dict[str, _Repo] = {}
        self._ids = itertools.count(1)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.requests: list[Request] = []
        self.faults = GitHubFaults()
        # (method, path below /repos/OWNER/NAME, handler)
        routes: list[tuple[str, str, Callable[..., _Response]]] = [
            ("GET", "", self._get_repo),
            ("GET", r"/labels/(?P<name>[^/]+)", self._get_label),
            ("POST", "/labels", self._create_label),
            ("GET", "/issues", self._list_issues),
            ("POST", "/issues", self._create_issue),
            ("GET", r"/issues/(?P<number>\d+)", self._get_issue),
            ("PATCH", r"/issues/(?P<number>\d+)", self._edit_issue),
            ("POST", r"/issues/(?P<number>\d+)/comments", self._create_comment),
        ]
        self._routes = [(method, re.compile(path), handler) for method, path, handler in routes]

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FakeGitHub:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self._server = self._thread = None

    def __enter__(self) -> FakeGitHub:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeGitHub is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # --- seeding and inspection --------------------------------------------------------------

    def add_repo(self, full_name: str) -> None:
        with self._lock:
            self._repos[full_name] = _Repo(full_name, next(self._ids))

    def add_issue(
        self,
        repo: str,
        title: str,
        body: str = "",
        labels: list[str] | None = None,
        state: str = "open",
    ) -> int:
        """Seed an issue (as if opened earlier, e.g. by hand); returns its number."""
        with self._lock:
            issue = self._new_issue(self._repos[repo], title, body, labels or [])
            if state == "closed":
                issue.state, issue.state_reason, issue.closed_at = "closed", "completed", _now()
            return issue.number

    def issues(self, repo: str) -> list[FakeIssue]:
        """A snapshot of the repository's issues, oldest first."""
        with self._lock:
            return copy.deepcopy(self._repos[repo].issues)

    def labels(self, repo: str) -> list[str]:
        with self._lock:
            return list(self._repos[repo].labels)

    # --- request handling --------------------------------------------------------------------

    def handle(
        self, method: str, target: str, authorization: str | None, raw_body: bytes
    ) -> _Response:
        """Answer one request: (status, JSON payload, extra headers)."""
        url = urlsplit(target)
        path, query = url.path, dict(parse_qsl(url.query))
        body: Any = None
        try:
            if authorization not in (f"token {self._token}", f"Bearer {self._token}"):
                raise _ApiError(401, "Bad credentials")
            try:
                body = json.loads(raw_body) if raw_body else None
            except ValueError:
                raise _ApiError(400, "Problems parsing JSON") from None
            if fault := self.faults.take("github", method, path):
                response: _Response = (fault.status or 403, fault.body, fault.headers)
            else:
                response = self._route(method, path, query, body)
        except _ApiError as e:
            response = (e.status, e.payload, {})
        with self._lock:
            self.requests.append(Request(method, path, query, body, response[0]))
        return response

    def _route(self, method: str, path: str, query: dict[str, str], body: Any) -> _Response:
        if match := _REPO_PATH.fullmatch(path):
            for route_method, pattern, handler in self._routes:
                if route_method == method and (route := pattern.fullmatch(match["rest"])):
                    params = {k: unquote(v) for k, v in route.groupdict().items()}
                    with self._lock:
                        repo = self._repos.get(f"{match['owner']}/{match['name']}")
                        if repo is None:
                            raise _ApiError(404, "Not Found")
                        body = body if isinstance(body, dict) else {}
                        return handler(repo, query=query, body=body, **params)
        raise _ApiError(404, "Not Found")

    def _get_repo(self, repo: _Repo, **_: Any) -> _Response:
        return 200, self._repo_json(repo), {}

    def _get_label(self, repo: _Repo, name: str, **_: Any) -> _Response:
        if name not in repo.labels:
            raise _ApiError(404, "Not Found")
        return 200, self._label_json(repo, name), {}

    def _create_label(self, repo: _Repo, body: dict[str, Any], **_: Any) -> _Response:
        name = _require_str(body, "name", "Label")
        if name in repo.labels:
            raise _ApiError(
                422, "Validation Failed", errors=[_invalid("Label", "name", "already_exists")]
            )
        repo.labels[name] = {
            "color": body.get("color", "ededed"),
            "description": body.get("description"),
        }
        return 201, self._label_json(repo, name), {}

    def _list_issues(self, repo: _Repo, query: dict[str, str], **_: Any) -> _Response:
        state = query.get("state", "open")
        wanted = {label for label in query.get("labels", "").split(",") if label}
        matching = [
            issue
            for issue in reversed(repo.issues)  # GitHub's default: newest first
            if state in ("all", issue.state) and wanted <= set(issue.labels)
        ]
        per_page = min(int(query.get("per_page", 30)), _MAX_PER_PAGE)
        page = int(query.get("page", 1))
        last = max(1, -(-len(matching) // per_page))
        items = matching[(page - 1) * per_page : page * per_page]
        return (
            200,
            [self._issue_json(repo, i) for i in items],
            self._link_header(repo, query, page, last),
        )

    def _create_issue(self, repo: _Repo, body: dict[str, Any], **_: Any) -> _Response:
        title = _require_str(body, "title", "Issue")
        labels = body.get("labels", [])
        issue = self._new_issue(repo, title, body.get("body") or "", list(labels))
        return 201, self._issue_json(repo, issue), {}

    def _get_issue(self, repo: _Repo, number: str, **_: Any) -> _Response:
        return 200, self._issue_json(repo, _find_issue(repo, number)), {}

    def _edit_issue(self, repo: _Repo, number: str, body: dict[str, Any], **_: Any) -> _Response:
        issue = _find_issue(repo, number)
        state = body.get("state", issue.state)
        if state not in ("open", "closed"):
            raise _ApiError(
                422, "Validation Failed", errors=[_invalid("Issue", "state", "invalid")]
            )
        if state != issue.state:
            issue.closed_at = _now() if state == "closed" else None
        issue.state = state
        issue.state_reason = body.get("state_reason", "completed" if state == "closed" else None)
        issue.title = body.get("title", issue.title)
        issue.body = body.get("body", issue.body)
        return 200, self._issue_json(repo, issue), {}

    def _create_comment(
        self, repo: _Repo, number: str, body: dict[str, Any], **_: Any
    ) -> _Response:
        issue = _find_issue(repo, number)
        text = _require_str(body, "body", "IssueComment")
        issue.comments.append(text)
        comment_id = next(self._ids)
        issue_api = f"{self.url}/repos/{repo.full_name}/issues/{issue.number}"
        return (
            201,
            {
                "id": comment_id,
                "body": text,
                "url": f"{self.url}/repos/{repo.full_name}/issues/comments/{comment_id}",
                "html_url": f"{self._html(repo)}/issues/{issue.number}#issuecomment-{comment_id}",
                "issue_url": issue_api,
                "user": self._user_json("paramdelta-bot"),
                "created_at": _now(),
                "updated_at": _now(),
            },
            {},
        )

    # --- JSON and links ----------------------------------------------------------------------

    def _new_issue(self, repo: _Repo, title: str, body: str, labels: list[str]) -> FakeIssue:
        for name in labels:  # GitHub creates labels an issue names
            repo.labels.setdefault(name, {"color": "ededed", "description": None})
        issue = FakeIssue(
            len(repo.issues) + 1, title, body, labels, created_at=_now(), id=next(self._ids)
        )
        repo.issues.append(issue)
        return issue

    def _html(self, repo: _Repo) -> str:
        return f"{self.url}/{repo.full_name}"

    def _user_json(self, login: str) -> dict[str, Any]:
        return {"login": login, "id": 1, "type": "User", "url": f"{self.url}/users/{login}"}

    def _repo_json(self, repo: _Repo) -> dict[str, Any]:
        owner, name = repo.full_name.split("/")
        api = f"{self.url}/repos/{repo.full_name}"
        return {
            "id": repo.id,
            "name": name,
            "full_name": repo.full_name,
            "owner": {**self._user_json(owner), "type": "Organization"},
            "private": False,
            "url": api,
            "html_url": self._html(repo),
            "issues_url": f"{api}/issues{{/number}}",
            "labels_url": f"{api}/labels{{/name}}",
            "default_branch": "main",
            "has_issues": True,
        }

    def _label_json(self, repo: _Repo, name: str) -> dict[str, Any]:
        return {
            "name": name,
            **repo.labels[name],
            "url": f"{self.url}/repos/{repo.full_name}/labels/{quote(name, safe='')}",
            "default": False,
        }

    def _issue_json(self, repo: _Repo, issue: FakeIssue) -> dict[str, Any]:
        api = f"{self.url}/repos/{repo.full_name}/issues/{issue.number}"
        return {
            "id": issue.id,
            "number": issue.number,
            "title": issue.title,
            "body": issue.body,
            "state": issue.state,
            "state_reason": issue.state_reason,
            "locked": False,
            "labels": [self._label_json(repo, name) for name in issue.labels],
            "assignee": None,
            "assignees": [],
            "milestone": None,
            "comments": len(issue.comments),
            "user": self._user_json("paramdelta-bot"),
            "author_association": "NONE",
            "url": api,
            "html_url": f"{self._html(repo)}/issues/{issue.number}",
            "comments_url": f"{api}/comments",
            "events_url": f"{api}/events",
            "labels_url": f"{api}/labels{{/name}}",
            "repository_url": f"{self.url}/repos/{repo.full_name}",
            "created_at": issue.created_at,
            "updated_at": issue.closed_at or issue.created_at,
            "closed_at": issue.closed_at,
        }

    def _link_header(
        self, repo: _Repo, query: dict[str, str], page: int, last: int
    ) -> dict[str, str]:
        def link(to: int, rel: str) -> str:
            params = urlencode({**query, "page": to})
            return f'<{self.url}/repos/{repo.full_name}/issues?{params}>; rel="{rel}"'

        links = []
        if page < last:
            links += [link(page + 1, "next"), link(last, "last")]
        if page > 1:
            links += [link(1, "first"), link(page - 1, "prev")]
        return {"Link": ", ".join(links)} if links else {}


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _invalid(resource: str, field_name: str, code: str) -> dict[str, str]:
    return {"resource": resource, "field": field_name, "code": code}


def _require_str(body: dict[str, Any], name: str, resource: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise _ApiError(
            422, "Validation Failed", errors=[_invalid(resource, name, "missing_field")]
        )
    return value


def _find_issue(repo: _Repo, number: str) -> FakeIssue:
    index = int(number) - 1
    if not 0 <= index < len(repo.issues):
        raise _ApiError(404, "Not Found")
    return repo.issues[index]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeGitHub


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as PyGithub's requests session expects
    timeout = 30  # a client that vanished does not hold a thread forever
    disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms stalls
    server: _Server

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw_body = self.rfile.read(length) if length else b""
        status, payload, headers = self.server.fake.handle(
            self.command, self.path, self.headers.get("Authorization"), raw_body
        )
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean; `requests` records what came in
