"""Publish a merged checkpoint to the Hub as ONE commit, never half of one.

Shards are pre-uploaded (LFS) as soon as they are written, one at a time,
and deleted locally if asked (so disk holds about one shard); nothing is
visible in the repo until the single `create_commit` at the end, which names
the branch head read at the start as its parent. If anyone moved the branch
meanwhile the Hub refuses the commit and nothing changes (exit 5). A crash
before that commit leaves the repo exactly as it was; a re-run recomputes the
same bytes, and the Hub already holds their LFS objects, so they are not
uploaded again.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from huggingface_hub import CommitOperationAdd, CommitOperationDelete

from paramdelta.engine.writer import ShardPlan
from paramdelta.hub.client import Hub


@dataclass
class PublishResult:
    repo_id: str
    revision: str
    files: list[str]
    commit_url: str | None = None
    commit_sha: str | None = None
    pr_url: str | None = None
    dry_run: bool = False

    @property
    def url(self) -> str | None:
        return self.pr_url or self.commit_url

    def to_dict(self) -> dict[str, object]:
        return {
            "repo": self.repo_id,
            "revision": self.revision,
            "commit_sha": self.commit_sha,
            "commit_url": self.commit_url,
            "pr_url": self.pr_url,
            "files": self.files,
            "dry_run": self.dry_run,
        }


@dataclass
class Publisher:
    hub: Hub
    repo_id: str
    message: str
    description: str = ""
    private: bool = False
    create_pr: bool = False
    revision: str = "main"
    delete_uploaded: bool = False
    parent: str | None = None
    _uploaded: dict[str, CommitOperationAdd] = field(default_factory=dict)
    _pending: Future[None] | None = None
    _executor: ThreadPoolExecutor | None = None
    _handles: list[BinaryIO] = field(default_factory=list)
    _remote_files: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        """Create the repo if needed; remember the head the commit builds on, and its files."""
        self.hub.create_repo(self.repo_id, private=self.private)
        head = self.hub.repo_files(self.repo_id, self.revision, files=False)
        self.parent = head.sha
        self._remote_files = set(head.sizes)

    def shard_written(self, path: Path, shard: ShardPlan) -> None:
        """Writer hook: upload this shard in the background once the previous one is done.

        The upload reads from an open handle, so the writer may move its directory
        meanwhile; with ``delete_uploaded`` the name goes at once and the disk space
        when the upload is done and the handle closed.
        """
        handle = path.open("rb")
        if self.delete_uploaded:
            path.unlink()
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="paramdelta-upload")
            self._handles.append(handle)
            previous, self._pending = self._pending, None
        if previous is not None:
            previous.result()  # bounds disk to ~one shard uploading + one being written
        self._pending = self._executor.submit(self._upload, handle, shard.filename)

    def _upload(self, handle: BinaryIO, path_in_repo: str) -> None:
        operation = CommitOperationAdd(path_in_repo=path_in_repo, path_or_fileobj=handle)
        self.hub.preupload(
            self.repo_id, [operation], revision=self.revision, create_pr=self.create_pr
        )
        # preupload drops the content once it is stored as LFS; the commit then needs
        # only its hash. A regular (non-LFS) file keeps its handle for the commit.
        if operation.path_or_fileobj == b"":
            handle.close()
        self._uploaded[path_in_repo] = operation

    def finish(self, directory: Path, extra_files: dict[str, bytes] | None = None) -> PublishResult:
        """Commit every file in ``directory`` (plus ``extra_files``) in one commit."""
        self.wait()
        operations: dict[str, CommitOperationAdd] = dict(self._uploaded)
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            relpath = path.relative_to(directory).as_posix()
            operations.setdefault(relpath, CommitOperationAdd(relpath, str(path)))
        for relpath, data in (extra_files or {}).items():
            operations[relpath] = CommitOperationAdd(relpath, data)
        # Weights of an earlier merge that this one does not overwrite (another shard
        # layout) would linger beside the new index: remove them in the same commit.
        stale = sorted(f for f in self._remote_files if _is_weights(f) and f not in operations)
        deletions = [CommitOperationDelete(path_in_repo=f) for f in stale]
        info = self.hub.commit(
            self.repo_id,
            [*operations.values(), *deletions],
            message=self.message,
            description=self.description,
            parent=self.parent,
            revision=self.revision,
            create_pr=self.create_pr,
        )
        return PublishResult(
            self.repo_id,
            self.revision,
            sorted(operations),
            commit_url=info.commit_url,
            commit_sha=info.oid,
            pr_url=info.pr_url,
        )

    def wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
        for handle in self._handles:
            handle.close()


def _is_weights(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return name.endswith(".safetensors") or name == "model.safetensors.index.json"


def dry_run(
    repo_id: str, revision: str, directory: Path, extra: dict[str, bytes] | None = None
) -> PublishResult:
    """What `finish` would commit, without a single request."""
    files = {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()}
    return PublishResult(repo_id, revision, sorted(files | set(extra or {})), dry_run=True)
