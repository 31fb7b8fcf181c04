"""A loopback fake Hugging Face Hub, speaking the HTTP protocol of huggingface_hub 2.4.0.

Two servers: the Hub (API, resolve URLs, commits, Xet tokens, LFS batch, OIDC
token exchange, rate limits) and a blob server standing in for the CDN, which
resolve URLs of large files redirect to. Large files live in Xet storage, as on
the Hub: the Xet token endpoints hand out hf_xet's local CAS (a `local://`
directory), so huggingface_hub uploads and downloads them through the real
hf_xet; the legacy LFS protocol (HF_HUB_DISABLE_XET=1) works too. It never
imports huggingface_hub: start it first, point HF_ENDPOINT at `.url`, then import
the client (which reads HF_ENDPOINT at import time).

    with FakeHub(token="hf_test") as hub:
        hub.create_repo("org/model")
        sha = hub.commit("org/model", {"config.json": b"{}", "model.safetensors": Path("w.st")})

Standalone: `python -m paramdelta.testing.hub` prints its URL on the first line
of stdout and serves until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import tempfile
import threading
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType

from paramdelta.testing._hub_discussions import Discussion, Discussions
from paramdelta.testing._hub_http import (
    BlobHandler,
    Credentials,
    HubHandler,
    RequestLog,
    RequestRecord,
    Server,
)
from paramdelta.testing._hub_limits import RateLimits
from paramdelta.testing._hub_store import (
    AUTHOR,
    Commit,
    Delete,
    FileEntry,
    HubError,
    ObjectStore,
    PullRequest,
    Put,
    RepoStore,
    wants_lfs,
)
from paramdelta.testing._xet_cas import XetCas
from paramdelta.testing.faults import Faults

__all__ = [
    "AUTHOR",
    "Commit",
    "Discussion",
    "FakeHub",
    "HubError",
    "PullRequest",
    "RequestRecord",
    "main",
]


class FakeHub:
    """A fake Hub on 127.0.0.1: seed and inspect it from Python, talk to it with huggingface_hub.

    With a `token`, every write needs `Authorization: Bearer <token>` (or a token issued by the
    OIDC exchange for `oidc_subject_token`, which may write to its one repo), and private repos
    are invisible without it. Without a token the hub is open. Gated repos list and show their
    info but answer every file request with 403 GatedRepo, as for a user without access.

    `store` (repos), `objects` (legacy LFS and small files) and `cas` (Xet storage) are the state
    both servers share; `credentials` (tokens, their `lifetime`, trusted publishers),
    `rate_limits`, `faults` and `log` are what the request handlers consult and fill.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        oidc_subject_token: str | None = None,
        *,
        page_size: int = 1000,
    ) -> None:
        try:
            loopback = ipaddress.IPv4Address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:  # it takes writes and serves files: never beyond this machine
            raise ValueError(f"FakeHub binds an IPv4 loopback address only, not {host!r}")
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="fake-hub-")
            data_dir = self._tmp.name
        self.objects = ObjectStore(Path(data_dir) / "objects")
        # Content-addressed and kept across reset(): hf_xet clients remember what it holds.
        self.cas = XetCas(Path(data_dir) / "xet-cas")
        self.store = RepoStore(self.objects)
        self.credentials = Credentials(token, oidc_subject_token)
        self.discussions = Discussions()
        self.rate_limits = RateLimits()
        self.xet_token_lifetime = 3600.0
        self.xet_commits: list[str] = []  # sha256 of each file a commit took from Xet storage
        self.faults = Faults(servers=("hub", "blobs"))
        self.log = RequestLog()
        self.page_size = page_size  # items per page of list endpoints (the Link header paginates)
        # The CDN may ignore a Range and send the whole file (200): "gzip" when the request
        # accepts gzip, as CloudFront can (huggingface_hub PR #3778), "always", or None.
        self.cdn_ignores_range: str | None = None
        self._address = (host, port)
        self._servers: list[Server] = []
        self._threads: list[threading.Thread] = []
        self._stopped = False

    # Lifecycle

    def start(self) -> FakeHub:
        """Bind both servers and serve them from background threads."""
        if self._servers or self._stopped:
            raise RuntimeError("a FakeHub starts once")
        host, port = self._address
        self._servers = [
            Server((host, port), HubHandler, self),
            Server((host, 0), BlobHandler, self),
        ]
        for server in self._servers:
            thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop serving, hang up open connections and delete the temporary data dir, if any."""
        for server in self._servers:
            server.shutdown()
            server.close_connections()
            server.server_close()
        for thread in self._threads:
            thread.join()
        self._servers, self._threads, self._stopped = [], [], True
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> FakeHub:
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
        """The endpoint, e.g. http://127.0.0.1:PORT (no trailing slash): HF_ENDPOINT's value."""
        return self._server(0).url

    @property
    def blob_url(self) -> str:
        """The blob server that resolve URLs of LFS files redirect to."""
        return self._server(1).url

    def _server(self, index: int) -> Server:
        if not self._servers:
            raise RuntimeError(
                "FakeHub is not running: call start() or use it as a context manager"
            )
        return self._servers[index]

    def reset(self) -> None:
        """Forget all repos, blobs, issued tokens, quotas, faults and recorded requests."""
        self.store.clear()
        self.credentials.clear()
        self.discussions.clear()
        self.rate_limits.clear()
        self.xet_commits.clear()
        self.cdn_ignores_range = None
        self.faults.clear()
        self.log.clear()

    # Seeding, without HTTP

    def create_repo(
        self,
        repo_id: str,
        *,
        private: bool = False,
        gated: bool = False,
        created_at: datetime | None = None,
    ) -> None:
        """Create a model repo; like on the Hub, main starts with a .gitattributes commit."""
        self.store.create(repo_id, private=private, gated=gated, created_at=created_at)

    def commit(
        self,
        repo_id: str,
        files: Mapping[str, bytes | os.PathLike[str]],
        *,
        message: str = "Update files",
        branch: str = "main",
        delete: Iterable[str] = (),
        create_branch_ok: bool = True,
        xet: bool = True,
    ) -> str:
        """Commit contents (bytes, or paths streamed from disk) and deletions; returns the sha.

        Weight-like names and files of 10 MiB or more are large files, as an upload would make
        them: stored in Xet (through hf_xet), or with ``xet=False`` as legacy LFS objects (a repo
        from before Xet). A path in `delete` ending in "/" deletes a folder. A missing branch
        starts from main.
        """
        title, _, body = message.partition("\n")
        commit, _ = self.store.commit(
            repo_id,
            self._operations(files, delete, xet=xet),
            title=title,
            message=body.strip(),
            revision=branch,
            create_branch=create_branch_ok,
        )
        return commit.oid

    def open_pull_request(
        self,
        repo_id: str,
        files: Mapping[str, bytes | os.PathLike[str]],
        *,
        author: str,
        title: str = "Update files",
        delete: Iterable[str] = (),
    ) -> int:
        """Open a pull request on main as ``author`` (any Hub user may); returns its number."""
        ops = self._operations(files, delete)
        _, pr = self.store.commit(repo_id, ops, title=title, message="", create_pr=True)
        assert pr is not None
        self.discussions.opened(repo_id, pr, title, author, pull_request=True)
        return pr

    def add_user(self, name: str, token: str) -> None:
        """An account that may read and comment but write to no repo (`whoami` says ``name``)."""
        self.credentials.add_user(name, token)

    def upload_folder(
        self,
        repo_id: str,
        folder: str | os.PathLike[str],
        *,
        message: str = "Upload folder",
        branch: str = "main",
    ) -> str:
        """Commit every file under `folder`, at its relative path; returns the sha."""
        root = Path(folder)
        files = {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}
        return self.commit(repo_id, files, message=message, branch=branch)

    def trust_publisher(self, repo_id: str) -> None:
        """Configure a trusted publisher on an existing repo: the OIDC exchange may issue for it."""
        self.store.get(repo_id)
        self.credentials.trusted.add(repo_id)

    def create_tag(self, repo_id: str, tag: str, *, revision: str = "main") -> str:
        """Tag a revision; returns the tagged sha."""
        return self.store.tag(repo_id, tag, revision)

    def _operations(
        self,
        files: Mapping[str, bytes | os.PathLike[str]],
        delete: Iterable[str],
        *,
        xet: bool = True,
    ) -> list[Put | Delete]:
        """What a commit of ``files`` and deletions does (large files go to Xet, if ``xet``)."""
        large = {p: s for p, s in files.items() if xet and wants_lfs(p, _size(s))}
        uploaded = self.cas.upload(list(large.values())) if large else []
        stored = dict(zip(large, uploaded, strict=True))
        ops: list[Put | Delete] = [
            Put(path, FileEntry.large(f.sha256, f.size, f.xet_hash))
            if (f := stored.get(path))
            else Put(path, self._store(path, src))
            for path, src in files.items()
        ]
        return ops + [Delete(path, folder=path.endswith("/")) for path in delete]

    def _store(self, path: str, source: bytes | os.PathLike[str]) -> FileEntry:
        """Into the object store: a regular file, or a legacy LFS object."""
        if isinstance(source, bytes):
            sha256, size = self.objects.put([source])
        else:
            sha256, size = self.objects.put_file(source)
        if wants_lfs(path, size):
            return FileEntry.large(sha256, size)
        return FileEntry.regular(sha256, self.objects.path(sha256).read_bytes())  # < 10 MiB

    # Inspection

    def repo_exists(self, repo_id: str) -> bool:
        """Whether the repo exists (private or not)."""
        return self.store.exists(repo_id)

    def head(self, repo_id: str, revision: str = "main") -> str:
        """The commit sha a revision points at."""
        return self.store.get(repo_id).resolve(revision).oid

    def branches(self, repo_id: str) -> dict[str, str]:
        """Every branch of a repo and the commit it points at."""
        with self.store.lock:
            return {name: oid for name, _, oid in self.store.get(repo_id).refs_under("refs/heads/")}

    def list_files(self, repo_id: str, revision: str = "main") -> list[str]:
        """Sorted paths of every file at a revision."""
        return sorted(self.store.get(repo_id).resolve(revision).files)

    def read_file(self, repo_id: str, path: str, revision: str = "main") -> bytes:
        """A file's content at a revision."""
        entry = self.store.get(repo_id).resolve(revision).files.get(path)
        if entry is None:
            raise HubError(404, "EntryNotFound", f"Entry not found: {path}")
        xet = self.cas.file(entry.xet_hash) if entry.xet_hash else None
        if xet is not None:
            return b"".join(self.cas.read(xet))
        return self.objects.path(entry.sha256).read_bytes()

    def xet_hash(self, repo_id: str, path: str, revision: str = "main") -> str | None:
        """The Xet hash of a file at a revision; None if it is not in Xet storage."""
        entry = self.store.get(repo_id).resolve(revision).files.get(path)
        return entry.xet_hash if entry else None

    def commits(self, repo_id: str, revision: str = "main") -> list[Commit]:
        """First-parent history of a revision, newest first."""
        return self.store.get(repo_id).history(revision)

    def discussion(self, repo_id: str, num: int) -> Discussion:
        """A pull request's (or discussion's) author, status and events."""
        return self.discussions.get(repo_id, num)

    def pull_requests(self, repo_id: str) -> list[PullRequest]:
        """The repo's pull requests, oldest first."""
        with self.store.lock:
            return self.store.get(repo_id).pull_requests()

    @property
    def requests(self) -> list[RequestRecord]:
        """Every request served so far by either server, oldest first (a copy)."""
        return self.log.snapshot()

    def clear_requests(self) -> None:
        """Forget the recorded requests."""
        self.log.clear()

    def weight_bytes_served(self, agent: str = "") -> int:
        """Body bytes of .safetensors files sent by either server (0: no weights downloaded);
        ``agent``: only to clients whose User-Agent holds it."""
        return sum(
            r.sent
            for r in self.requests
            if r.method == "GET"
            and r.status in (200, 206)
            and r.path.endswith(".safetensors")
            and agent in r.agent
        )

    @property
    def lfs_uploads(self) -> int:
        """Legacy LFS objects uploaded to the blob server (successful PUTs)."""
        return sum(
            r.server == "blobs" and r.method == "PUT" and r.status == 200 for r in self.requests
        )

    @property
    def lfs_bytes_uploaded(self) -> int:
        """Bytes received by legacy LFS uploads (0: everything went through Xet)."""
        return self.lfs_bytes_uploaded_by("")

    def lfs_bytes_uploaded_by(self, agent: str) -> int:
        """Bytes received by legacy LFS uploads from clients whose User-Agent holds ``agent``."""
        return sum(
            r.received
            for r in self.requests
            if r.server == "blobs" and r.method == "PUT" and agent in r.agent
        )

    @property
    def xet_uploads(self) -> int:
        """Files that commits took from Xet storage, where a client had uploaded them."""
        return len(self.xet_commits)

    @property
    def xet_stored_bytes(self) -> int:
        """Bytes of the chunk files (xorbs) in Xet storage: what uploads sent, deduplicated."""
        return self.cas.stored_bytes()

    def xet_token_requests(self, kind: str = "read", repo_id: str | None = None) -> int:
        """Xet tokens handed out ("read" or "write"), for one repo or all: one per download
        or upload session, so 0 means no Xet transfer touched the repo."""
        return sum(
            r.status == 200
            and (segments := r.path.split("/"))[5:6] == [f"xet-{kind}-token"]
            and repo_id in (None, "/".join(segments[3:5]))
            for r in self.requests
            if r.server == "hub"
        )


def _size(source: bytes | os.PathLike[str]) -> int:
    return len(source) if isinstance(source, bytes) else Path(source).stat().st_size


def main(argv: Sequence[str] | None = None) -> int:
    """Serve a FakeHub from the command line; prints its URL first, exits 0 on SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m paramdelta.testing.hub",
        description="Serve a fake Hugging Face Hub on loopback until SIGINT or SIGTERM.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="IPv4 loopback address to bind")
    parser.add_argument("--port", type=int, default=0, help="API port (default: a free one)")
    parser.add_argument("--data", help="folder for blobs (default: a temporary one)")
    parser.add_argument("--token", help="token that writes need (default: none, all open)")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with FakeHub(args.data, args.host, args.port, args.token) as hub:
        print(hub.url, flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
