"""The fake Hub over HTTP: API server, blob ("CDN") server, auth, faults and the request log.

Stdlib and PyYAML only. HTTP/1.1 keep-alive, so every response carries a Content-Length and
every request body is read to its end before answering. File bodies go out with
`socket.sendfile`, never through memory.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import re
import secrets
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

import yaml

from paramdelta.testing._hub_discussions import discussion_json, event_json
from paramdelta.testing._hub_store import (
    AUTHOR,
    CHUNK,
    LFS_MIN_SIZE,
    SHA256,
    Commit,
    Delete,
    FileEntry,
    HubError,
    Put,
    Repo,
    not_found,
    wants_lfs,
)

if TYPE_CHECKING:
    from paramdelta.testing.hub import FakeHub

# hf_raise_for_status reads exactly this message as "bad token", not "no such repo".
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"
# RFC 8693 names, not secrets.
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105
ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"  # noqa: S105
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105
LFS_JSON = "application/vnd.git-lfs+json"
LIST_FIELDS = ("id", "modelId", "private", "createdAt", "likes", "downloads", "tags")
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


@dataclass
class RequestRecord:
    """One request as the fake saw it. Headers are not kept, so no token can end up here."""

    server: str  # "hub" or "blobs"
    method: str
    path: str  # URL-decoded, without the query
    query: dict[str, str]  # the last value of each parameter
    range: str | None
    auth: bool  # whether it came with an Authorization header
    agent: str = ""  # its User-Agent (never secret): tells concurrent clients apart
    status: int = 0  # 0: dropped without an answer
    sent: int = 0  # body bytes sent
    received: int = 0  # body bytes received


class RequestLog:
    """Thread-safe list of RequestRecord."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[RequestRecord] = []

    def add(self, record: RequestRecord) -> None:
        with self._lock:
            self._records.append(record)

    def snapshot(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._records)

    def clear(self) -> None:
        with self._lock:
            self._records.clear()


class Credentials:
    """The write token, and tokens issued by the OIDC exchange (each scoped to one repo).

    Tokens belong to users (`whoami`): the write token and the issued ones to AUTHOR, the
    account the bot runs as; `add_user` adds accounts that may read and comment only.

    An issued token lasts `lifetime` whole seconds (the Hub's: one hour) and cannot be
    refreshed; the exchange issues one only for a repo with a trusted publisher (`trusted`).
    Expiry allows `LEEWAY` for clock skew, as token validators do: a client that caches a token
    for exactly `expires_in` seconds from the answer may send it a little late.
    """

    LEEWAY = 0.5

    def __init__(
        self, token: str | None, oidc_subject_token: str | None, lifetime: int = 3600
    ) -> None:
        self.token = token
        self.oidc_subject_token = oidc_subject_token
        self.lifetime = lifetime
        self.trusted: set[str] = set()
        self._lock = threading.Lock()
        self._issued: dict[str, tuple[str, float]] = {}  # token -> (repo id, expiry)
        self._users: dict[str, str] = {}  # token -> user name, for the other accounts

    def add_user(self, name: str, token: str) -> None:
        with self._lock:
            self._users[token] = name

    def user(self, authorization: str | None) -> str | None:
        """The account a request comes from; None when it carries no token."""
        scope = self.scope(authorization)
        if scope is None or (self.token is None and authorization is None):
            return None
        if scope == "":
            _, _, value = (authorization or "").partition(" ")
            with self._lock:
                return self._users[value]
        return AUTHOR

    def scope(self, authorization: str | None) -> str | None:
        """'*' for full access, a repo id for an OIDC-issued token, None for no token at all."""
        if self.token is None:
            return "*"  # an open hub
        if authorization is None:
            return None
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value:
            if _same(value, self.token):
                return "*"
            with self._lock:
                resource, expiry = self._issued.get(value, (None, 0.0))
                other_user = value in self._users
            if resource is not None and time.monotonic() < expiry + self.LEEWAY:
                return resource
            if other_user:
                return ""  # authenticated, with no repo to write to
        raise HubError(401, None, INVALID_CREDENTIALS)

    def exchange(self, subject_token: str, resource: str) -> tuple[str, int]:
        """RFC 8693: trade the configured OIDC id token for a write token on `resource`.

        Returns the token and its lifetime in seconds; failures are the OAuth 400s.
        """
        if self.oidc_subject_token is None or not _same(subject_token, self.oidc_subject_token):
            raise oauth_error("invalid_grant", "the OIDC id token is not trusted")
        if resource not in self.trusted:
            raise oauth_error("invalid_grant", f"no trusted publisher is configured for {resource}")
        token = f"hf_oidc_{secrets.token_hex(16)}"
        with self._lock:
            self._issued[token] = (resource, time.monotonic() + self.lifetime)
        return token, self.lifetime

    def clear(self) -> None:
        with self._lock:
            self._issued.clear()
            self._users.clear()
            self.trusted.clear()


def oauth_error(error: str, description: str) -> HubError:
    """An RFC 6749 error answer: 400 with `error` and `error_description`."""
    e = HubError(400, None, f"{error}: {description}")
    e.body = {"error": error, "error_description": description}
    return e


def _same(a: str, b: str) -> bool:
    return secrets.compare_digest(a.encode(), b.encode())


class Server(ThreadingHTTPServer):
    """One listening port; remembers its open connections so stop() can end idle keep-alives."""

    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], hub: FakeHub
    ) -> None:
        super().__init__(address, handler)
        self.hub = hub
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"  # an IPv4 server: its address is a str

    def track(self, connection: socket.socket, open_: bool) -> None:
        with self._lock:
            if open_:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def close_connections(self) -> None:
        with self._lock:
            for connection in self._connections:
                with contextlib.suppress(OSError):  # already gone
                    connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeHub"
    role = ""
    server: Server

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without this, Nagle's algorithm and
        # delayed ACKs add 40 ms to every request.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: nothing a client sends may reach a log."""

    def do_GET(self) -> None:
        self._handle()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET

    @property
    def hub(self) -> FakeHub:
        return self.server.hub

    def route(self) -> None:
        raise NotImplementedError

    def limit(self) -> dict[str, str]:
        """Count the request against a quota; the headers saying what is left. None here."""
        return {}

    def _handle(self) -> None:
        url = urlsplit(self.path)
        self.raw_path = url.path
        self.segments = [unquote(s) for s in url.path.split("/")[1:]]
        self.params = parse_qs(url.query, keep_blank_values=True)
        self.record = RequestRecord(
            server=self.role,
            method=self.command,
            path=unquote(url.path),
            query={k: v[-1] for k, v in self.params.items()},
            range=self.headers.get("Range"),
            auth="Authorization" in self.headers,
            agent=self.headers.get("User-Agent", ""),
        )
        self._body = self._iter_body()
        self._started = False
        self.extra_headers: dict[str, str] = {}  # sent with every answer to this request
        try:
            fault = self.hub.faults.take(self.role, self.command, self.record.path)
            if fault is not None:
                if fault.delay:
                    time.sleep(fault.delay)
                if fault.drop:
                    self.hub.log.add(self.record)
                    self.close_connection = True
                    return
                if fault.status is not None:
                    body = fault.body if fault.body is not None else b'{"error": "injected fault"}'
                    body = body.encode() if isinstance(body, str) else body
                    self._send(fault.status, body, fault.headers)
                    return
            self.extra_headers = self.limit()
            self.route()
        except HubError as e:
            self._fail(e)
        except Exception as e:
            self._fail(HubError(500, None, f"fake Hub internal error: {type(e).__name__}"))

    def _fail(self, error: HubError) -> None:
        if self._started:  # half an answer is out: all we can do is hang up
            self.close_connection = True
            return
        # Messages can quote paths from the request: keep the header ASCII and on one line.
        headers = {"X-Error-Message": json.dumps(error.message)[1:-1], **error.headers}
        if error.code:
            headers["X-Error-Code"] = error.code
        try:
            self._send_json(error.status, error.body, headers)
        except (OSError, ValueError):
            self.close_connection = True

    # Request bodies

    def _iter_body(self) -> Iterator[bytes]:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while size := int(self.rfile.readline().split(b";")[0], 16):
                yield from self._read_exactly(size)
                self.rfile.readline()
            while self.rfile.readline().strip():  # trailers
                pass
        else:
            yield from self._read_exactly(int(self.headers.get("Content-Length") or 0))

    def _read_exactly(self, size: int) -> Iterator[bytes]:
        while size > 0:
            chunk = self.rfile.read(min(size, CHUNK))
            if not chunk:
                raise ConnectionError("client went away mid-body")
            size -= len(chunk)
            self.record.received += len(chunk)
            yield chunk

    def _read_json(self) -> Any:
        try:
            return json.loads(b"".join(self._body))
        except ValueError:
            raise HubError(400, None, "Malformed JSON body") from None

    def _param(self, name: str) -> str | None:
        values = self.params.get(name)
        return values[-1] if values else None

    def _flag(self, name: str) -> bool:
        return (self._param(name) or "").lower() in ("1", "true")

    # Responses

    def _start(self, status: int, length: int, headers: Mapping[str, str]) -> None:
        for _ in self._body:  # the next request on this connection starts after this body
            pass
        self.record.status = status
        self.record.sent = 0 if self.command == "HEAD" else length
        # Logged before any byte goes out, so a client never sees an answer its record lacks.
        self.hub.log.add(self.record)
        self._started = True
        self.send_response(status)
        for name, value in {**self.extra_headers, **headers}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()

    def _send(
        self, status: int, body: bytes = b"", headers: Mapping[str, str] | None = None
    ) -> None:
        self._start(status, len(body), headers or {})
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(
        self,
        status: int,
        data: Any,
        headers: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        self._send(
            status, json.dumps(data).encode(), {"Content-Type": content_type, **(headers or {})}
        )

    def _send_blob(self, sha256: str, headers: Mapping[str, str]) -> None:
        """A stored file, honouring a single `Range: bytes=a-b | a- | -n`."""
        path = self.hub.objects.path(sha256)
        size = path.stat().st_size
        out = {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream", **headers}
        status, start, length = 200, 0, size
        span = self._range(size)
        if span is not None:
            start, end = span
            status, length = 206, end - start + 1
            out["Content-Range"] = f"bytes {start}-{end}/{size}"
        self._start(status, length, out)
        if self.command == "HEAD" or length == 0:
            return
        with path.open("rb") as f:
            sent = self.connection.sendfile(f, start, length)
        if sent < length:
            self.record.sent = sent
            self.close_connection = True

    def _range(self, size: int) -> tuple[int, int] | None:
        """The range to serve; the CDN stand-in can ignore it, as CloudFront may (200, whole)."""
        ignore = self.role == "blobs" and (
            self.hub.cdn_ignores_range == "always"
            or (
                self.hub.cdn_ignores_range == "gzip"
                and "gzip" in self.headers.get("Accept-Encoding", "")
            )
        )
        return None if ignore else _byte_range(self.headers.get("Range"), size)


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive (first, last) bytes asked for; None to serve everything, as RFC 9110 allows."""
    match = _RANGE.fullmatch(header.strip()) if header else None
    if match is None or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if not first:  # a suffix: the last N bytes
        start, end = max(size - int(last), 0), size - 1
    elif last and int(last) < int(first):
        return None
    else:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    if start > end:
        raise HubError(416, None, "Range not satisfiable", {"Content-Range": f"bytes */{size}"})
    return start, end


class HubHandler(_Handler):
    """The Hub's API and resolve URLs."""

    role = "hub"

    def route(self) -> None:
        match self.command, self.segments:
            case "GET", ["api", "models"]:
                self._list_models()
            case "GET", ["api", "models", ns, name]:
                self._model_info(f"{ns}/{name}", "main")
            case "GET", ["api", "models", ns, name, "revision", revision]:
                self._model_info(f"{ns}/{name}", revision)
            case "GET", ["api", "models", ns, name, "refs"]:
                self._refs(f"{ns}/{name}")
            case "GET", ["api", "models", ns, name, "commits", revision]:
                self._commits(f"{ns}/{name}", revision)
            case "GET", ["api", "models", ns, name, "tree", revision, *path]:
                self._tree(f"{ns}/{name}", revision, "/".join(path))
            case "POST", ["api", "models", ns, name, "paths-info", revision]:
                self._paths_info(f"{ns}/{name}", revision)
            case "POST", ["api", "models", ns, name, "branch", branch]:
                self._create_branch(f"{ns}/{name}", branch)
            case "DELETE", ["api", "models", ns, name, "branch", branch]:
                self._require_write(f"{ns}/{name}")
                self.hub.store.delete_branch(f"{ns}/{name}", branch)
                self._send_json(200, {})
            case "POST", ["api", "models", ns, name, "preupload", revision]:
                self._preupload(f"{ns}/{name}", revision)
            case "POST", ["api", "models", ns, name, "commit", revision]:
                self._commit(f"{ns}/{name}", revision)
            case "GET", ["api", "models", ns, name, "xet-read-token" | "xet-write-token", revision]:
                self._xet_token(f"{ns}/{name}", self.segments[4] == "xet-write-token", revision)
            case "POST", ["api", "repos", "create"]:
                self._create_repo()
            case "DELETE", ["api", "repos", "delete"]:
                self._delete_repo()
            case "GET", ["api", "whoami-v2"]:
                self._whoami()
            case "GET", ["api", "models", ns, name, "discussions"]:
                self._discussions(f"{ns}/{name}")
            case "POST", ["api", "models", ns, name, "discussions", num, "comment"]:
                self._comment(f"{ns}/{name}", _int(num))
            case "POST", ["api", "models", ns, name, "discussions", num, "status"]:
                self._change_status(f"{ns}/{name}", _int(num))
            case "POST", ["api", "validate-yaml"]:
                self._send_json(200, {"errors": [], "warnings": []})
            case "POST", ["oauth", "token"]:
                self._exchange_token()
            case "POST", [ns, repo, "info", "lfs", "objects", "batch"] if repo.endswith(".git"):
                self._lfs_batch(f"{ns}/{repo.removesuffix('.git')}")
            case "POST", [ns, repo, "info", "lfs", "objects", "verify"] if repo.endswith(".git"):
                self._lfs_verify(f"{ns}/{repo.removesuffix('.git')}")
            case (("GET" | "HEAD"), [ns, name, "resolve", revision, *path]) if path:
                self._resolve(f"{ns}/{name}", revision, "/".join(path))
            case _:
                raise HubError(404, None, f"Not found: {self.command} {self.record.path}")

    def limit(self) -> dict[str, str]:
        bucket = "resolvers" if self.segments[2:3] == ["resolve"] else "api"
        return self.hub.rate_limits.take(bucket, self.headers.get("Authorization"))

    # Auth: private repos look missing to whoever may not read them, like on the Hub.

    def _scope(self) -> str | None:
        return self.hub.credentials.scope(self.headers.get("Authorization"))

    def _readable(self, repo_id: str) -> Repo:
        scope = self._scope()
        repo = self.hub.store.get(repo_id)
        if repo.private and scope not in ("*", repo_id):
            raise not_found(repo_id)
        return repo

    def _require_write(self, repo_id: str) -> None:
        scope = self._scope()
        if scope is None:
            raise HubError(401, None, "You must be authenticated to write")
        if scope not in ("*", repo_id):
            raise HubError(403, None, f"This token cannot write to {repo_id}")

    # Reads

    def _model_json(self, repo: Repo, commit: Commit) -> dict[str, Any]:
        blobs = self._flag("blobs")
        return {
            "id": repo.id,
            "modelId": repo.id,
            "author": repo.id.partition("/")[0],
            "sha": commit.oid,
            "lastModified": _timestamp(commit.date),
            "createdAt": _timestamp(repo.created_at),
            "private": repo.private,
            "gated": "manual" if repo.gated else False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "cardData": self._card_data(commit),
            "siblings": [_sibling(path, e, blobs) for path, e in sorted(commit.files.items())],
        }

    def _card_data(self, commit: Commit) -> dict[str, Any] | None:
        readme = commit.files.get("README.md")
        if readme is None or readme.lfs:
            return None
        return front_matter(self.hub.objects.path(readme.sha256).read_text(errors="replace"))

    def _model_info(self, repo_id: str, revision: str) -> None:
        repo = self._readable(repo_id)
        data = self._model_json(repo, repo.resolve(revision))
        self._send_json(200, _pick(data, self.params.get("expand")))

    def _list_models(self) -> None:
        scope = self._scope()
        author, search = self._param("author"), (self._param("search") or "").lower()
        repos = [
            (repo, repo.resolve("main"))
            for repo in self.hub.store.all()
            if (not repo.private or scope in ("*", repo.id))
            and author in (None, repo.id.partition("/")[0])
            and search in repo.id.lower()
        ]
        sort = self._param("sort")
        if sort == "createdAt":
            repos.sort(key=lambda rc: rc[0].created_at, reverse=True)
        elif sort == "lastModified":
            repos.sort(key=lambda rc: rc[1].date, reverse=True)
        else:
            repos.sort(key=lambda rc: rc[0].id)
        fields = self.params.get("expand") or (None if self._flag("full") else list(LIST_FIELDS))
        items = [_pick(self._model_json(repo, head), fields) for repo, head in repos]
        limit = self._param("limit")
        self._send_page(items, min(_int(limit), self.hub.page_size) if limit else None)

    def _refs(self, repo_id: str) -> None:
        repo = self._readable(repo_id)
        with self.hub.store.lock:
            refs = {
                key: [
                    {"name": name, "ref": ref, "targetCommit": oid}
                    for name, ref, oid in repo.refs_under(prefix)
                ]
                for key, prefix in (
                    ("branches", "refs/heads/"),
                    ("converts", "refs/convert/"),
                    ("tags", "refs/tags/"),
                    ("pullRequests", "refs/pr/"),
                )
            }
        if not self._flag("include_prs"):
            del refs["pullRequests"]
        self._send_json(200, refs)

    def _commits(self, repo_id: str, revision: str) -> None:
        history = self._readable(repo_id).history(revision)
        self._send_page(
            [
                {
                    "id": c.oid,
                    "title": c.title,
                    "message": c.message,
                    "authors": [{"user": AUTHOR}],
                    "date": _timestamp(c.date),
                }
                for c in history
            ]
        )

    def _tree(self, repo_id: str, revision: str, path: str) -> None:
        commit = self._readable(repo_id).resolve(revision)
        items = tree_items(commit.files, path, recursive=self._flag("recursive"))
        if path and not items:
            raise HubError(404, "EntryNotFound", f"{path} does not exist on {revision}")
        self._send_page(items)

    def _paths_info(self, repo_id: str, revision: str) -> None:
        """The tree entries of the paths asked for (a form: `paths` repeated); missing ones are
        left out, as on the Hub."""
        commit = self._readable(repo_id).resolve(revision)
        form = parse_qs(b"".join(self._body).decode(), keep_blank_values=True)
        wanted = set(form.get("paths", []))
        items = tree_items(commit.files, "", recursive=True)
        self._send_json(200, [item for item in items if item["path"] in wanted])

    def _send_page(self, items: list[Any], size: int | None = None) -> None:
        """One page of `items`, with a `Link: <next>; rel="next"` while more remain."""
        size = size or self.hub.page_size
        page = _int(self._param("p") or "0")
        start = page * size
        headers = {}
        if start + size < len(items):
            query = urlencode({**self.params, "p": [str(page + 1)]}, doseq=True)
            headers["Link"] = f'<{self.hub.url}{self.raw_path}?{query}>; rel="next"'
        self._send_json(200, items[start : start + size], headers)

    def _resolve(self, repo_id: str, revision: str, path: str) -> None:
        repo = self._readable(repo_id)
        if repo.gated:
            raise HubError(403, "GatedRepo", f"Access to model {repo_id} is restricted.")
        commit = repo.resolve(revision)
        headers = {"X-Repo-Commit": commit.oid}
        entry = commit.files.get(path)
        if entry is None:
            raise HubError(404, "EntryNotFound", f"Entry not found: {path}", headers)
        headers["ETag"] = f'"{entry.oid}"'
        if not entry.lfs:
            self._send_blob(entry.sha256, headers)
            return
        name = quote(path.rpartition("/")[2])
        headers["Location"] = f"{self.hub.blob_url}/lfs/{entry.sha256}/{name}"
        headers["X-Linked-Etag"] = f'"{entry.sha256}"'
        headers["X-Linked-Size"] = str(entry.size)
        if entry.xet_hash is not None:  # what makes huggingface_hub download through hf_xet
            headers["Location"] = f"{self.hub.blob_url}/xet/{entry.xet_hash}/{name}"
            headers["X-Xet-Hash"] = entry.xet_hash
            token_url = f"{self.hub.url}/api/models/{repo_id}/xet-read-token/{commit.oid}"
            headers["Link"] = f'<{token_url}>; rel="xet-auth"'
        self._send(302, headers=headers)

    def _xet_token(self, repo_id: str, write: bool, revision: str) -> None:
        """A short-lived token for the Xet storage, in the body (hf_xet) and headers (the hub)."""
        if write:
            self._require_write(repo_id)  # a PR's branch does not exist yet: no revision check
        else:
            repo = self._readable(repo_id)
            if repo.gated:
                raise HubError(403, "GatedRepo", f"Access to model {repo_id} is restricted.")
            repo.resolve(revision)
        cas, token = self.hub.cas.url, f"xet_{secrets.token_hex(16)}"
        expiry = int(time.time() + self.hub.xet_token_lifetime)
        headers = {"X-Xet-Cas-Url": cas, "X-Xet-Access-Token": token}
        headers["X-Xet-Token-Expiration"] = str(expiry)
        self._send_json(200, {"casUrl": cas, "accessToken": token, "exp": expiry}, headers)

    # Writes

    def _create_repo(self) -> None:
        body = self._read_json()
        name, namespace = _field(body, "name", str), body.get("organization")
        if not isinstance(namespace, str):
            raise HubError(400, None, "The fake Hub has no user namespace: pass 'namespace/name'")
        if body.get("type", "model") != "model":
            raise HubError(400, None, "The fake Hub serves model repos only")
        repo_id = f"{namespace}/{name}"
        self._require_write(repo_id)
        url = f"{self.hub.url}/{repo_id}"
        private = body.get("visibility") == "private"
        try:
            self.hub.store.create(repo_id, private=private, gated=False, created_at=None)
        except HubError as e:
            if e.status != 409:
                raise
            self._send_json(409, {"error": e.message, "url": url})  # exist_ok reads the url
            return
        self._send_json(200, {"url": url, "name": repo_id})

    def _delete_repo(self) -> None:
        body = self._read_json()
        name = _field(body, "name", str)
        repo_id = f"{body.get('organization')}/{name}"
        self._require_write(repo_id)
        self.hub.store.delete(repo_id)
        self._send(200)

    def _create_branch(self, repo_id: str, branch: str) -> None:
        self._require_write(repo_id)
        body = self._read_json() if self.headers.get("Content-Length", "0") != "0" else {}
        start = body.get("startingPoint") if isinstance(body, dict) else None
        if start is not None and not isinstance(start, str):
            raise HubError(400, None, "Expected str field 'startingPoint'")
        self.hub.store.create_branch(repo_id, branch, start)
        self._send_json(200, {})

    def _preupload(self, repo_id: str, revision: str) -> None:
        self._require_write(repo_id)
        commit = self.hub.store.get(repo_id).resolve(revision)
        files = []
        for item in _field(self._read_json(), "files", list):
            path, size = _field(item, "path", str), _field(item, "size", int)
            existing = commit.files.get(path)
            files.append(
                {
                    "path": path,
                    "uploadMode": "lfs" if wants_lfs(path, size) else "regular",
                    "shouldIgnore": False,
                    # The client drops the file from the commit when this equals its own oid.
                    "oid": existing and (existing.sha256 if existing.lfs else existing.oid),
                }
            )
        self._send_json(200, {"files": files, "commitOid": commit.oid})

    def _lfs_batch(self, repo_id: str) -> None:
        self._require_write(repo_id)
        repo = self.hub.store.get(repo_id)
        body = self._read_json()
        if _field(body, "operation", str) != "upload":
            raise HubError(400, None, "The fake Hub's LFS batch API only uploads")
        objects = []
        for item in _field(body, "objects", list):
            oid, size = _field(item, "oid", str), _field(item, "size", int)
            obj: dict[str, Any] = {"oid": oid, "size": size}
            if not SHA256.fullmatch(oid):
                obj["error"] = {"code": 422, "message": f"Invalid oid: {oid!r}"}
            elif oid not in repo.lfs:  # stored objects get no actions: nothing to upload again
                obj["actions"] = {
                    "upload": {"href": f"{self.hub.blob_url}/upload/{repo_id}/{oid}"},
                    "verify": {"href": f"{self.hub.url}/{repo_id}.git/info/lfs/objects/verify"},
                }
            objects.append(obj)
        self._send_json(200, {"transfer": "basic", "objects": objects}, content_type=LFS_JSON)

    def _lfs_verify(self, repo_id: str) -> None:
        self._require_write(repo_id)
        repo = self.hub.store.get(repo_id)
        body = self._read_json()
        oid, size = _field(body, "oid", str), _field(body, "size", int)
        if oid not in repo.lfs:
            raise HubError(404, None, f"LFS object {oid} was not uploaded")
        if self.hub.objects.path(oid).stat().st_size != size:
            raise HubError(422, None, f"LFS object {oid} does not have size {size}")
        self._send_json(200, {})

    def _commit(self, repo_id: str, revision: str) -> None:
        self._require_write(repo_id)
        try:
            lines = [json.loads(line) for line in b"".join(self._body).splitlines() if line.strip()]
        except ValueError:
            raise HubError(400, None, "Malformed ndjson body") from None
        if not lines or not isinstance(lines[0], dict) or lines[0].get("key") != "header":
            raise HubError(400, None, "The first ndjson line must be the header")
        header = _field(lines[0], "value", dict)
        ops = [self._operation(repo_id, line) for line in lines[1:]]
        stored = self.hub.store.get(repo_id).lfs
        through_xet = [
            op.entry.sha256
            for op in ops
            if isinstance(op, Put) and op.entry.xet_hash and op.entry.sha256 not in stored
        ]
        commit, pr = self.hub.store.commit(
            repo_id,
            ops,
            title=_field(header, "summary", str),
            message=header.get("description") or "",
            revision=revision,
            parent=header.get("parentCommit"),
            create_pr=self._flag("create_pr"),
        )
        self.hub.xet_commits.extend(through_xet)
        if pr:
            author = self.hub.credentials.user(self.headers.get("Authorization")) or AUTHOR
            self.hub.discussions.opened(repo_id, pr, commit.title, author, pull_request=True)
        url = f"{self.hub.url}/{repo_id}"
        self._send_json(
            200,
            {
                "success": True,
                "commitOid": commit.oid,
                "commitUrl": f"{url}/commit/{commit.oid}",
                "pullRequestUrl": f"{url}/discussions/{pr}" if pr else None,
            },
        )

    def _operation(self, repo_id: str, line: Any) -> Put | Delete:
        key, value = _field(line, "key", str), _field(line, "value", dict)
        path = _field(value, "path", str)
        if key == "deletedFile":
            return Delete(path)
        if key == "deletedFolder":
            return Delete(path, folder=True)
        if key == "file":
            try:
                content = base64.b64decode(_field(value, "content", str), validate=True)
            except binascii.Error:
                raise HubError(400, None, f"{path}: content is not base64") from None
            if len(content) >= LFS_MIN_SIZE:
                raise HubError(400, None, f"{path}: files of 10 MiB or more must go through LFS")
            sha256, _ = self.hub.objects.put([content])
            return Put(path, FileEntry.regular(sha256, content))
        if key == "lfsFile":
            oid = _field(value, "oid", str)
            stored = self.hub.store.get(repo_id).lfs
            xet_hash = None
            if oid in stored and self.hub.objects.has(oid):  # uploaded through legacy LFS
                size = self.hub.objects.path(oid).stat().st_size
            else:  # through Xet: the Hub finds it by sha256 in the shards uploaded
                found = self.hub.cas.by_sha256(oid) if SHA256.fullmatch(oid) else None
                if found is None:
                    raise HubError(400, None, f"{path}: LFS object {oid} was never uploaded")
                size, xet_hash = found.size, found.xet_hash
            if value.get("size", size) != size:  # copies leave the size out
                raise HubError(400, None, f"{path}: LFS object {oid} does not have that size")
            return Put(path, FileEntry.large(oid, size, xet_hash))
        raise HubError(400, None, f"Unknown commit operation: {key!r}")

    # Accounts and discussions (pull requests are discussions too)

    def _user(self) -> str:
        user = self.hub.credentials.user(self.headers.get("Authorization"))
        if user is None:
            raise HubError(401, None, "You must be authenticated to do this")
        return user

    def _whoami(self) -> None:
        name = self._user()
        self._send_json(200, {"type": "user", "name": name, "fullname": name, "orgs": []})

    def _discussions(self, repo_id: str) -> None:
        self._readable(repo_id)
        found = self.hub.discussions.list(
            repo_id,
            author=self._param("author"),
            kind=self._param("type"),
            status=self._param("status"),
        )
        size = self.hub.page_size
        start = _int(self._param("p") or "0") * size
        page = [discussion_json(d, _timestamp(d.created_at)) for d in found[start : start + size]]
        self._send_json(200, {"discussions": page, "count": len(found), "start": start})

    def _comment(self, repo_id: str, num: int) -> None:
        self._readable(repo_id)
        text = _field(self._read_json(), "comment", str)
        event = self.hub.discussions.comment(repo_id, num, self._user(), text)
        self._send_json(200, {"newMessage": event_json(event, _timestamp(event.created_at))})

    def _change_status(self, repo_id: str, num: int) -> None:
        """Its author or whoever may write to the repo can close or reopen a discussion."""
        self._readable(repo_id)
        body = self._read_json()
        user, discussion = self._user(), self.hub.discussions.get(repo_id, num)
        if user != discussion.author:
            self._require_write(repo_id)
        reply: dict[str, Any] = {}
        if isinstance(body.get("comment"), str) and body["comment"].strip():
            event = self.hub.discussions.comment(repo_id, num, user, body["comment"])
            reply["newMessage"] = event_json(event, _timestamp(event.created_at))
        status = self.hub.discussions.change_status(repo_id, num, user, _field(body, "status", str))
        reply["newStatus"] = event_json(status, _timestamp(status.created_at))
        self._send_json(200, reply)

    def _exchange_token(self) -> None:
        body = self._read_json()
        grant = _field(body, "grant_type", str), _field(body, "subject_token_type", str)
        if grant != (TOKEN_EXCHANGE, ID_TOKEN):
            raise oauth_error("unsupported_grant_type", "only RFC 8693 id-token exchange")
        resource = _field(body, "resource", str)
        if resource.count("/") != 1:
            raise oauth_error("invalid_target", "the fake Hub issues model repo tokens only")
        if not self.hub.store.exists(resource):
            raise oauth_error("invalid_grant", f"repository {resource} does not exist")
        token, lifetime = self.hub.credentials.exchange(
            _field(body, "subject_token", str), resource
        )
        self._send_json(
            200,
            {
                "access_token": token,
                "token_type": "bearer",
                "expires_in": lifetime,
                "issued_token_type": ACCESS_TOKEN,
            },
        )


class BlobHandler(_Handler):
    """The LFS storage: signed-URL-like, so no auth, like a CDN or S3."""

    role = "blobs"

    def route(self) -> None:
        match self.command, self.segments:
            case (("GET" | "HEAD"), ["lfs", sha256, _]):
                if not self.hub.objects.has(sha256):
                    raise HubError(404, None, f"No object {sha256}")
                self._send_blob(sha256, {"ETag": f'"{sha256}"'})
            case (("GET" | "HEAD"), ["xet", xet_hash, _]):
                self._send_xet(xet_hash)
            case "PUT", ["upload", ns, name, oid]:
                self._upload(f"{ns}/{name}", oid)
            case _:
                raise HubError(404, None, f"Not found: {self.command} {self.record.path}")

    def _send_xet(self, xet_hash: str) -> None:
        """A file in Xet storage, as the CDN serves it: reassembled, honouring a Range."""
        file = self.hub.cas.file(xet_hash) if SHA256.fullmatch(xet_hash) else None
        if file is None:
            raise HubError(404, None, f"No Xet file {xet_hash}")
        out = {
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
            "ETag": f'"{file.sha256}"',
        }
        status, start, end = 200, 0, file.size - 1
        span = self._range(file.size)
        if span is not None:
            status, (start, end) = 206, span
            out["Content-Range"] = f"bytes {start}-{end}/{file.size}"
        self._start(status, end - start + 1, out)
        if self.command != "HEAD":
            for data in self.hub.cas.read(file, start, end + 1):
                self.wfile.write(data)

    def _upload(self, repo_id: str, oid: str) -> None:
        self.hub.store.get(repo_id)
        self.hub.objects.path(oid)  # a malformed oid is refused before anything is stored
        sha256, _ = self.hub.objects.put(self._body)
        if sha256 != oid:
            raise HubError(400, None, f"Uploaded content has sha256 {sha256}, not {oid}")
        self.hub.store.add_lfs(repo_id, oid)
        self._send(200)


def tree_items(
    files: Mapping[str, FileEntry], path: str, *, recursive: bool
) -> list[dict[str, Any]]:
    """The tree API's entries under `path`: files and directories, sorted by path."""
    prefix = f"{path.strip('/')}/" if path.strip("/") else ""
    below = [p for p in files if p.startswith(prefix)]
    folders = {p[:i] for p in below for i in range(len(prefix), len(p)) if p[i] == "/"}
    items = []
    for item in sorted({*below, *folders}):
        if not recursive and "/" in item[len(prefix) :]:
            continue
        entry = files.get(item)
        if entry is None:
            items.append({"type": "directory", "oid": _folder_oid(files, item), "path": item})
            continue
        file: dict[str, Any] = {"type": "file", "oid": entry.oid, "size": entry.size, "path": item}
        if entry.xet_hash is not None:
            file["xetHash"] = entry.xet_hash
        if entry.lfs:
            file["lfs"] = {
                "oid": entry.sha256,
                "size": entry.size,
                "pointerSize": entry.pointer_size,
            }
        items.append(file)
    return items


def _folder_oid(files: Mapping[str, FileEntry], folder: str) -> str:
    listing = "".join(
        f"{p} {e.oid}\n" for p, e in sorted(files.items()) if p.startswith(f"{folder}/")
    )
    return hashlib.sha1(listing.encode()).hexdigest()  # noqa: S324 - a git-like id, not security


def front_matter(text: str) -> dict[str, Any] | None:
    """The README's YAML metadata block (the Hub's `cardData`), or None if it has none."""
    if not text.startswith("---\n"):
        return None
    block, found, _ = text[4:].partition("\n---")
    if not found:
        return None
    try:
        data = yaml.safe_load(block)
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


def _sibling(path: str, entry: FileEntry, blobs: bool) -> dict[str, Any]:
    if not blobs:
        return {"rfilename": path}
    sibling: dict[str, Any] = {"rfilename": path, "size": entry.size, "blobId": entry.oid}
    if entry.lfs:
        sibling["lfs"] = {
            "size": entry.size,
            "sha256": entry.sha256,
            "pointerSize": entry.pointer_size,
        }
    return sibling


def _pick(data: dict[str, Any], fields: list[str] | None) -> dict[str, Any]:
    """Only `fields` (and always `id`), like `expand=`; everything when None."""
    return data if fields is None else {k: data[k] for k in ("id", *fields) if k in data}


def _field(obj: Any, key: str, kind: type) -> Any:
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, kind):
        raise HubError(400, None, f"Expected {kind.__name__} field {key!r}")
    return value


def _int(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise HubError(400, None, f"Not a number: {value!r}") from None


def _timestamp(date: datetime) -> str:
    return date.strftime("%Y-%m-%dT%H:%M:%S.") + f"{date.microsecond // 1000:03d}Z"
