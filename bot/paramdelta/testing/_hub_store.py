"""The fake Hub's state: content-addressed blobs on disk, repos, refs and commits in memory.

Stdlib only, and no HTTP here: `hub.py` seeds and inspects this directly,
`_hub_http.py` serves it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

CHUNK = 1 << 20
# What the Hub's default .gitattributes routes to LFS, plus its size cutoff for everything else.
LFS_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".gguf",
    ".model",
    ".onnx",
    ".h5",
    ".msgpack",
    ".npz",
)
LFS_MIN_SIZE = 10 * 1024 * 1024
GITATTRIBUTES = "".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n" for s in LFS_SUFFIXES)
AUTHOR = "fake-hub-user"
SHA256 = re.compile(r"[0-9a-f]{64}")


class HubError(Exception):
    """A Hub-side failure: becomes an HTTP status, an X-Error-Code and a message."""

    def __init__(
        self,
        status: int,
        code: str | None,
        message: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        self.body: dict[str, object] = {"error": message}  # OAuth errors answer other fields


def not_found(repo_id: str) -> HubError:
    """The same answer for a missing repo and one the caller may not see."""
    return HubError(404, "RepoNotFound", f"Repository not found: {repo_id}")


def git_blob_oid(content: bytes) -> str:
    """The git object id of a blob: what the Hub sends as a regular file's ETag."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()  # noqa: S324


def lfs_pointer(sha256: str, size: int) -> bytes:
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    )


def wants_lfs(path: str, size: int) -> bool:
    """The server's upload mode: LFS for weight-like names and big files; empty files never."""
    return size > 0 and (path.endswith(LFS_SUFFIXES) or size >= LFS_MIN_SIZE)


class ObjectStore:
    """Files named by the sha256 of their content, so GB-sized blobs never sit in memory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        if not SHA256.fullmatch(sha256):  # the name comes from URLs: no path tricks
            raise HubError(400, None, f"Invalid sha256: {sha256!r}")
        return self.root / sha256

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def put(self, chunks: Iterable[bytes]) -> tuple[str, int]:
        """Store a stream; returns (sha256, size)."""
        digest, size = hashlib.sha256(), 0
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    digest.update(chunk)
                    f.write(chunk)
                    size += len(chunk)
            sha256 = digest.hexdigest()
            Path(tmp).replace(self.root / sha256)  # atomic: readers never see a partial blob
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return sha256, size

    def put_file(self, path: str | os.PathLike[str]) -> tuple[str, int]:
        with Path(path).open("rb") as f:
            return self.put(iter(lambda: f.read(CHUNK), b""))

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True, exist_ok=True)


@dataclass(frozen=True)
class FileEntry:
    """One file in a commit's tree; `oid` is the git blob id (of the LFS pointer for LFS files).

    A large file's bytes are in Xet storage when it has a `xet_hash`, else in the object store
    (uploaded through the legacy LFS protocol).
    """

    sha256: str
    size: int
    lfs: bool
    oid: str
    xet_hash: str | None = None

    @classmethod
    def regular(cls, sha256: str, content: bytes) -> FileEntry:
        return cls(sha256, len(content), False, git_blob_oid(content))

    @classmethod
    def large(cls, sha256: str, size: int, xet_hash: str | None = None) -> FileEntry:
        return cls(sha256, size, True, git_blob_oid(lfs_pointer(sha256, size)), xet_hash)

    @property
    def pointer_size(self) -> int:
        return len(lfs_pointer(self.sha256, self.size))


@dataclass(frozen=True)
class Put:
    path: str
    entry: FileEntry


@dataclass(frozen=True)
class Delete:
    path: str
    folder: bool = False


@dataclass(frozen=True)
class Commit:
    """A commit; `changed` lists the paths it added, replaced or deleted."""

    oid: str
    title: str
    message: str
    parents: tuple[str, ...]
    changed: tuple[str, ...]
    date: datetime
    files: Mapping[str, FileEntry] = field(repr=False, compare=False)


@dataclass(frozen=True)
class PullRequest:
    num: int
    ref: str
    head: str
    title: str


@dataclass
class Repo:
    id: str
    private: bool
    gated: bool
    created_at: datetime
    refs: dict[str, str] = field(default_factory=dict)  # full ref name -> commit oid
    commits: dict[str, Commit] = field(default_factory=dict)
    lfs: set[str] = field(default_factory=set)  # sha256s uploaded to this repo's LFS storage
    pr_titles: dict[int, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit:
        """A branch, tag, full ref (refs/pr/N) or 40-hex sha; past commits stay readable."""
        for ref in (f"refs/heads/{revision}", f"refs/tags/{revision}", revision):
            if ref in self.refs:
                return self.commits[self.refs[ref]]
        if revision in self.commits:
            return self.commits[revision]
        raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")

    def history(self, revision: str) -> list[Commit]:
        """First-parent history, newest first."""
        commit: Commit | None = self.resolve(revision)
        out = []
        while commit is not None:
            out.append(commit)
            commit = self.commits[commit.parents[0]] if commit.parents else None
        return out

    def refs_under(self, prefix: str) -> Iterator[tuple[str, str, str]]:
        """(short name, full ref, target) for each ref starting with `prefix`."""
        for ref, oid in sorted(self.refs.items()):
            if ref.startswith(prefix):
                yield ref.removeprefix(prefix), ref, oid

    def pull_requests(self) -> list[PullRequest]:
        return [
            PullRequest(num, f"refs/pr/{num}", self.refs[f"refs/pr/{num}"], title)
            for num, title in sorted(self.pr_titles.items())
        ]


class RepoStore:
    """All repos; every read-modify-write happens under one lock."""

    def __init__(self, objects: ObjectStore) -> None:
        self.objects = objects
        self.lock = threading.RLock()
        self._repos: dict[str, Repo] = {}
        self._seq = 0
        self._last = datetime.min.replace(tzinfo=timezone.utc)

    def clear(self) -> None:
        with self.lock:
            self._repos.clear()
            self.objects.clear()

    def get(self, repo_id: str) -> Repo:
        with self.lock:
            try:
                return self._repos[repo_id]
            except KeyError:
                raise not_found(repo_id) from None

    def exists(self, repo_id: str) -> bool:
        with self.lock:
            return repo_id in self._repos

    def all(self) -> list[Repo]:
        with self.lock:
            return list(self._repos.values())

    def create(
        self, repo_id: str, *, private: bool, gated: bool, created_at: datetime | None
    ) -> Repo:
        """A new repo whose main branch holds the Hub's initial commit (a .gitattributes)."""
        namespace, _, name = repo_id.partition("/")
        if not namespace or not name or "/" in name:
            raise HubError(400, None, f"Repo id must be 'namespace/name', got {repo_id!r}")
        sha256, _ = self.objects.put([GITATTRIBUTES.encode()])
        with self.lock:
            if repo_id in self._repos:
                raise HubError(409, None, "You already created this model repo")
            repo = Repo(repo_id, private, gated, created_at or self._now())
            self._repos[repo_id] = repo
            files = {".gitattributes": FileEntry.regular(sha256, GITATTRIBUTES.encode())}
            self._record(repo, "refs/heads/main", None, files, tuple(files), "initial commit", "")
            return repo

    def delete(self, repo_id: str) -> None:
        with self.lock:
            self.get(repo_id)
            del self._repos[repo_id]

    def add_lfs(self, repo_id: str, sha256: str) -> None:
        """Note an object as uploaded to the repo's LFS storage: commits may now point at it."""
        with self.lock:
            self.get(repo_id).lfs.add(sha256)

    def tag(self, repo_id: str, tag: str, revision: str) -> str:
        """Point refs/tags/`tag` at a revision; returns its sha."""
        with self.lock:
            repo = self.get(repo_id)
            oid = repo.resolve(revision).oid
            repo.refs[f"refs/tags/{tag}"] = oid
            return oid

    def create_branch(self, repo_id: str, branch: str, revision: str | None) -> str:
        """A new branch at ``revision`` (None: main's head); returns its sha. 409 if it exists."""
        if not branch or branch.startswith("refs/") or ".." in branch or branch.endswith("/"):
            raise HubError(400, None, f"Invalid branch name: {branch!r}")
        with self.lock:
            repo = self.get(repo_id)
            ref = f"refs/heads/{branch}"
            if ref in repo.refs:
                raise HubError(409, None, f"Reference already exists: {ref}")
            oid = repo.resolve(revision or "main").oid
            repo.refs[ref] = oid
            return oid

    def delete_branch(self, repo_id: str, branch: str) -> None:
        """Remove a branch (its commits stay readable by sha); main cannot go."""
        with self.lock:
            repo = self.get(repo_id)
            ref = f"refs/heads/{branch}"
            if ref not in repo.refs:
                raise HubError(404, "RevisionNotFound", f"Invalid rev id: {branch}")
            if branch == "main":
                raise HubError(403, None, "Cannot delete the main branch")
            del repo.refs[ref]

    def commit(
        self,
        repo_id: str,
        ops: Sequence[Put | Delete],
        *,
        title: str,
        message: str,
        revision: str = "main",
        parent: str | None = None,
        create_pr: bool = False,
        create_branch: bool = False,
    ) -> tuple[Commit, int | None]:
        """Commit to a branch or PR ref, or open a PR on a branch; returns (commit, PR number).

        A direct commit whose `parent` is not the target's head is refused (412); a new PR starts
        from `parent` however far the branch moved since, as on the Hub. Everything is checked
        before anything changes: a failed commit leaves the repo as it was.
        """
        with self.lock:
            repo = self.get(repo_id)
            ref = revision if revision.startswith("refs/") else f"refs/heads/{revision}"
            new_branch = ref not in repo.refs
            if new_branch and not (create_branch and ref.startswith("refs/heads/")):
                raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            if not ref.startswith(("refs/heads/", "refs/pr/")) or (
                create_pr and not ref.startswith("refs/heads/")
            ):
                raise HubError(400, None, f"Cannot commit to {revision}")
            head = repo.refs["refs/heads/main" if new_branch else ref]
            if create_pr and parent is not None:
                if parent not in repo.commits:
                    raise HubError(404, "RevisionNotFound", f"Invalid rev id: {parent}")
                head = parent
            elif parent is not None and parent != head:
                raise HubError(
                    412, None, "A commit has happened since. Please refresh and try again."
                )
            files, changed = _edit(repo.commits[head].files, ops)
            pr = None
            if create_pr:
                pr = len(repo.pr_titles) + 1
                repo.pr_titles[pr] = title
                ref = f"refs/pr/{pr}"
            return self._record(repo, ref, head, files, changed, title, message), pr

    def _record(
        self,
        repo: Repo,
        ref: str,
        parent: str | None,
        files: dict[str, FileEntry],
        changed: tuple[str, ...],
        title: str,
        message: str,
    ) -> Commit:
        self._seq += 1
        date = self._now()
        oid = hashlib.sha1(  # noqa: S324 - a git-like id, not security
            f"{repo.id}\0{parent}\0{title}\0{self._seq}\0{date.isoformat()}".encode()
        ).hexdigest()
        commit = Commit(oid, title, message, (parent,) if parent else (), changed, date, files)
        repo.commits[oid] = commit
        repo.refs[ref] = oid
        repo.lfs.update(e.sha256 for p in changed if (e := files.get(p)) and e.lfs)
        return commit

    def _now(self) -> datetime:
        # Strictly increasing, so "newest first" orderings never tie on a fast clock.
        self._last = max(datetime.now(timezone.utc), self._last + timedelta(microseconds=1))
        return self._last


def _edit(
    files: Mapping[str, FileEntry], ops: Sequence[Put | Delete]
) -> tuple[dict[str, FileEntry], tuple[str, ...]]:
    """The tree after `ops`, and the paths they touched."""
    out, changed = dict(files), set()
    for op in ops:
        if isinstance(op, Put):
            _check_path(op.path)
            out[op.path] = op.entry
            changed.add(op.path)
            continue
        if op.folder:
            prefix = op.path.rstrip("/") + "/"
            gone = [p for p in out if p.startswith(prefix)]
        else:
            gone = [op.path] if op.path in out else []
        if not gone:
            what = "folder" if op.folder else "file"
            raise HubError(
                404, "EntryNotFound", f"A {what} with this name doesn't exist: {op.path}"
            )
        for path in gone:
            del out[path]
        changed.update(gone)
    return out, tuple(sorted(changed))


def _check_path(path: str) -> None:
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise HubError(400, None, f"Invalid path in repo: {path!r}")
    if parts[0] == ".git":
        raise HubError(400, None, f"Cannot commit to .git: {path!r}")
