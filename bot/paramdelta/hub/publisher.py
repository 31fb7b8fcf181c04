"""Publish a merged checkpoint to the Hub as ONE commit, never half of one.

Shards are pre-uploaded through Xet as soon as they are written, one at a
time, by path (huggingface_hub falls back to legacy LFS for an open file
object, hashing it in Python first): hf_xet chunks, deduplicates and hashes in
one pass. A shard is uploaded from a hard link in a staging directory, so the
writer may rename or delete its own name meanwhile; with ``delete`` the disk
space goes when the upload is done (so disk holds about one shard uploading
and one being written). Nothing is visible in the repo until the single
`create_commit` at the end, which names the branch head read at the start as
its parent. If anyone moved the branch meanwhile the Hub refuses a direct
commit and nothing changes (exit 5); a pull request is opened from that parent
whatever the branch did since. A crash before the commit leaves the repo
exactly as it was; a re-run recomputes the same bytes, and Xet storage already
holds their chunks, so they are not uploaded again.

A repo that the publisher created is deleted again when it leaves without a
commit (a failed check, an error, Ctrl-C), if it still holds nothing but the
Hub's initial commit: a run that publishes nothing leaves no empty public repo
behind (docs/publishing.md). Files that are all the same as the branch's are
not committed: the result says the repo is already up to date.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import CommitOperationAdd, CommitOperationCopy, CommitOperationDelete

from paramdelta.engine.files import LINEAGE_FILE
from paramdelta.engine.safetensors_format import is_weights_file
from paramdelta.engine.workdirs import OwnedDir, sweep
from paramdelta.engine.writer import OUTPUT_MARKER, WORK_PREFIX, WrittenShard
from paramdelta.errors import HubError, PublishConflictError
from paramdelta.hub import content_ids
from paramdelta.hub.client import Hub
from paramdelta.hub.hf_internals import is_uploaded
from paramdelta.tokens import redact

log = logging.getLogger(__name__)

NEW_REPO = "new-repo"  # a Publisher's parent when the output repo did not exist at plan time
UPLOAD_PREFIX = f"{WORK_PREFIX}upload-"  # the staging directory of the shards being uploaded


@dataclass
class PublishResult:
    repo_id: str
    revision: str
    files: list[str]
    skipped: list[str] = field(default_factory=list)  # in the directory, not committed
    commit_url: str | None = None
    commit_sha: str | None = None
    pr_url: str | None = None
    pr_number: int | None = None
    dry_run: bool = False
    in_review: bool = False  # nothing committed: a pull request with the same merge is open
    up_to_date: bool = False  # nothing committed: the branch holds these very files

    @property
    def url(self) -> str | None:
        return self.pr_url or self.commit_url

    def describe(self) -> str:
        """One human line (a list, for a dry run) of what was or would be committed."""
        if self.dry_run:
            files = "".join(f"\n  {f}" for f in self.files)
            text = f"would commit {len(self.files)} files to {self.repo_id}@{self.revision}:{files}"
        elif self.in_review:
            text = f"already proposed in pull request {self.pr_url}: nothing committed"
        elif self.up_to_date:
            text = (
                f"{self.repo_id}@{self.revision} is already up to date, nothing committed"
                f" (its {len(self.files)} files are the same: {self.commit_url})"
            )
        elif self.pr_url:
            text = f"opened pull request {self.pr_url} ({len(self.files)} files)"
        else:
            text = f"published {len(self.files)} files to {self.repo_id}: {self.commit_url}"
        if self.skipped:
            text += (
                f"\nskipped (dotfiles, caches, links out of the folder): {', '.join(self.skipped)}"
            )
        return text

    def to_dict(self) -> dict[str, object]:
        return {
            "repo": self.repo_id,
            "revision": self.revision,
            "commit_sha": self.commit_sha,
            "commit_url": self.commit_url,
            "pr_url": self.pr_url,
            "files": self.files,
            "skipped": self.skipped,
            "dry_run": self.dry_run,
            "up_to_date": self.up_to_date,
        }


def _text(relpath: str, data: bytes) -> CommitOperationAdd:
    """The bot's own text (card, lineage, a leg's record) as committed: every token redacted."""
    return CommitOperationAdd(relpath, redact(data.decode()).encode())


class Publisher:
    """One commit to ``repo_id``, as a context manager.

    Entering creates the repo if needed and reads the branch head the commit will
    build on, unless ``parent`` pins the one seen when the target was planned (or
    NEW_REPO: there was no repo then, so the one found must hold no merge yet): of
    two overlapping runs, the second to commit is refused (exit 5). `upload_shard`
    sends shards while the merge goes on; `commit` makes the commit. Leaving waits
    for nothing and releases every handle, whatever happened; leaving without a
    commit deletes the repo if entering created it and it is still empty.
    """

    def __init__(
        self,
        hub: Hub,
        repo_id: str,
        *,
        message: str,
        description: str = "",
        private: bool = False,
        create_pr: bool = False,
        revision: str = "main",
        parent: str | None = None,
    ) -> None:
        self.hub = hub
        self.repo_id = repo_id
        self.message = message
        self.description = description
        self.private = private
        self.create_pr = create_pr
        self.revision = revision
        self.parent = parent
        self._uploaded: dict[str, CommitOperationAdd] = {}
        self._pending: Future[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._staging: OwnedDir | None = None
        self._remote_files: set[str] = set()
        self._remote_ids: dict[str, str] = {}  # each file of the parent: its content id
        self._lock = threading.Lock()
        self._created = False  # entering created the repo
        self._committed = False

    def __enter__(self) -> Publisher:
        self._created = self.hub.create_repo(self.repo_id, private=self.private)
        try:
            self._read_parent()
        except BaseException:
            self._remove_if_unpublished()
            raise
        return self

    def _read_parent(self) -> None:
        if self.parent is NEW_REPO:
            head = self.hub.repo_files(self.repo_id, self.revision)
            if any(is_weights_file(f) or f == LINEAGE_FILE for f in head.sizes):
                raise PublishConflictError(
                    f"output repo {self.repo_id} was created and published to since this target"
                    " was planned; nothing was committed; re-run to re-plan"
                )
        else:
            head = self.hub.repo_files(self.repo_id, self.parent or self.revision)
        self.parent = head.sha
        self._remote_files = set(head.sizes)
        self._remote_ids = head.content

    def __exit__(self, *exc_info: object) -> None:
        try:
            if self._executor is not None:
                self._executor.shutdown(wait=True, cancel_futures=True)
            if self._staging is not None:
                shutil.rmtree(self._staging.path, ignore_errors=True)
                self._staging.release()
        finally:
            self._remove_if_unpublished()

    def _remove_if_unpublished(self) -> None:
        """Delete the repo that entering created, unless something was committed to it.

        Only if it holds nothing but the Hub's initial .gitattributes: whatever someone
        (or a commit whose answer was lost) put there since stays.
        """
        if not self._created or self._committed:
            return
        self._created = False
        try:
            head = self.hub.find_repo_files(self.repo_id, self.revision)
            if head is not None and set(head.sizes) <= {".gitattributes"}:
                self.hub.delete_repo(self.repo_id)
                log.info(
                    "%s: deleted the repo this run created, as nothing was published", self.repo_id
                )
        except HubError as e:
            log.warning(
                "%s: this run created it and published nothing, but could not delete it (%s);"
                " delete it on the Hub",
                self.repo_id,
                e,
            )

    def upload_shard(self, shard: WrittenShard, *, delete: bool = False) -> None:
        """Upload a finished shard in the background once the previous one is done.

        The upload reads a hard link of the shard in the staging directory (beside the
        writer's, so on the same file system), so the writer may move its directory
        meanwhile; with ``delete`` the name goes at once and the disk space when the
        upload is done. Where no hard link can be made, the shard is uploaded before
        the writer goes on.
        """
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="paramdelta-upload")
            previous, self._pending = self._pending, None
        if previous is not None:
            previous.result()  # bounds disk to ~one shard uploading + one being written
        path, filename = shard.path, shard.plan.filename
        staged = self._stage(path)
        if staged is None:
            self._upload(path, filename, remove=delete)
            return
        if delete:
            path.unlink()
        self._pending = self._executor.submit(self._upload, staged, filename, remove=True)

    def _stage(self, path: Path) -> Path | None:
        try:
            if self._staging is None:
                parent = path.parent.parent
                sweep(parent, UPLOAD_PREFIX)  # what a killed run's uploads left there
                self._staging = OwnedDir(parent, UPLOAD_PREFIX)
            staged = self._staging.path / path.name
            os.link(path, staged)
        except OSError:
            return None
        return staged

    def _upload(self, path: Path, path_in_repo: str, *, remove: bool) -> None:
        operation = CommitOperationAdd(path_in_repo=path_in_repo, path_or_fileobj=str(path))
        self.hub.preupload(
            self.repo_id, [operation], revision=self.revision, create_pr=self.create_pr
        )
        self._uploaded[path_in_repo] = operation
        # Stored as a large file: the commit names it by sha256 and size, without reading it
        # again. A small one (regular upload mode) goes into the commit itself: keep it.
        if remove and is_uploaded(operation):
            path.unlink()

    def commit(
        self,
        directory: Path,
        extra_files: Mapping[str, bytes] | None = None,
        *,
        copies: Mapping[str, str] | None = None,
    ) -> PublishResult:
        """Commit every file in ``directory`` (plus ``extra_files``) in one commit.

        ``copies``: repo path -> the revision of this repo to copy it from, by reference
        (`CommitOperationCopy`: a large file is named by its sha256, not uploaded again);
        they win over files of the same name in ``directory``.
        """
        self._wait()
        operations: dict[str, CommitOperationAdd | CommitOperationCopy] = dict(self._uploaded)
        for relpath, revision in (copies or {}).items():
            operations[relpath] = CommitOperationCopy(relpath, relpath, src_revision=revision)
        files, skipped = publishable(directory)
        for relpath, path in files.items():
            operations.setdefault(relpath, CommitOperationAdd(relpath, str(path)))
        for relpath, data in (extra_files or {}).items():  # the bot's own text: card, lineage
            operations[relpath] = _text(relpath, data)
        # Weights of an earlier merge that this one does not overwrite (another shard
        # layout) would linger beside the new index: remove them in the same commit.
        # A lineage record left beside other weights would describe what is no longer there.
        stale = sorted(
            f
            for f in self._remote_files
            if (is_weights_file(f) or f == LINEAGE_FILE) and f not in operations
        )
        deletions = [CommitOperationDelete(path_in_repo=f) for f in stale]
        if not deletions and all(self._unchanged(p, op) for p, op in operations.items()):
            return self._up_to_date(sorted(operations), skipped)
        # Shards not uploaded yet (`publish` of a directory) go one by one: each upload
        # then sends the token of its moment, as the commit does (trusted publishing renews
        # tokens hourly; one create_commit would send one token for every upload and the commit).
        for relpath, operation in operations.items():
            if (
                isinstance(operation, CommitOperationAdd)
                and relpath.endswith(".safetensors")
                and not is_uploaded(operation)
            ):
                self.hub.preupload(
                    self.repo_id, [operation], revision=self.revision, create_pr=self.create_pr
                )
        info = self.hub.commit(
            self.repo_id,
            [*operations.values(), *deletions],
            message=self.message,
            description=self.description,
            parent=self.parent,
            revision=self.revision,
            create_pr=self.create_pr,
        )
        self._committed = True
        return PublishResult(
            self.repo_id,
            self.revision,
            sorted(operations),
            skipped=skipped,
            commit_url=info.commit_url,
            commit_sha=info.oid,
            pr_url=info.pr_url,
            pr_number=info.pr_num,
        )

    def _unchanged(self, relpath: str, operation: CommitOperationAdd | CommitOperationCopy) -> bool:
        """Whether the parent holds ``relpath`` with the operation's bytes (compared as
        content ids: the sha256 its upload computed, or for a regular git file its blob id;
        a copy from another revision counts as a change)."""
        remote = self._remote_ids.get(relpath)
        if remote is None or isinstance(operation, CommitOperationCopy):
            return False
        if content_ids.kind(remote) == content_ids.SHA256:
            return remote == content_ids.SHA256 + operation.upload_info.sha256.hex()
        data = operation.path_or_fileobj
        if isinstance(data, bytes):
            return remote in content_ids.of_bytes(data, relpath)
        return isinstance(data, str) and remote in content_ids.of_file(Path(data), relpath)

    def _up_to_date(self, files: list[str], skipped: list[str]) -> PublishResult:
        """Nothing to commit: no empty commit, no empty pull request (huggingface_hub would
        skip the commit with a warning and answer the old commit as if it were new)."""
        assert self.parent is not None
        return PublishResult(
            self.repo_id,
            self.revision,
            files,
            skipped=skipped,
            commit_url=f"{self.hub.endpoint}/{self.repo_id}/commit/{self.parent}",
            commit_sha=self.parent,
            up_to_date=True,
        )

    def commit_beside(self, extra_files: Mapping[str, bytes], *, attempts: int = 20) -> str:
        """Commit the uploaded shards and ``extra_files`` on top of whatever the branch holds
        now, deleting nothing; returns the commit's sha.

        The legs of a fan-out commit their own files to one staging branch at the same
        time: when another leg moved the branch since its head was read, the Hub refuses
        the commit (412) and changes nothing, so the head is read again and the same
        commit retried on it, after a short random wait.
        """
        self._wait()
        operations: list[CommitOperationAdd] = [
            *self._uploaded.values(),
            *(_text(relpath, data) for relpath, data in extra_files.items()),
        ]
        for attempt in range(attempts):
            try:
                info = self.hub.commit(
                    self.repo_id,
                    operations,
                    message=self.message,
                    description=self.description,
                    parent=self.parent,
                    revision=self.revision,
                    create_pr=False,
                )
                self._committed = True
                return info.oid
            except PublishConflictError:
                if attempt == attempts - 1:
                    raise
                time.sleep(random.uniform(0.05, 0.5))  # noqa: S311 - jitter, not secrets
                # Only the new head's sha: a lighter request than one with every file's ids.
                self.parent = self.hub.repo_files(self.repo_id, self.revision, files=False).sha
        raise AssertionError("unreachable")

    def uploaded_ids(self) -> dict[str, list[str]]:
        """The content id of each file uploaded so far: the sha256 computed for its upload."""
        self._wait()
        return {
            path: [content_ids.SHA256 + op.upload_info.sha256.hex()]
            for path, op in sorted(self._uploaded.items())
        }

    def _wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()


# Folders of tools, never of a model: byte-code and download caches.
SKIPPED_FOLDERS = frozenset({"__pycache__"})


def publishable(directory: Path) -> tuple[dict[str, Path], list[str]]:
    """What a publish of ``directory`` commits (repo path -> the file), and what it skips.

    Skipped: dotfiles and dot-folders (.env, .git, .cache, .huggingface), caches, links to
    folders (not followed), symlinks leading out of ``directory``, and anything that is
    not a regular file. A skipped folder is listed with a trailing "/".
    """
    root = directory.resolve()
    files: dict[str, Path] = {}
    skipped: list[str] = []
    for folder, subfolders, names in os.walk(root):  # does not follow links to folders
        here = Path(folder)
        for name in sorted(subfolders):
            if name.startswith(".") or name in SKIPPED_FOLDERS or (here / name).is_symlink():
                skipped.append(f"{(here / name).relative_to(root).as_posix()}/")
        subfolders[:] = [
            n
            for n in subfolders
            if not n.startswith(".") and n not in SKIPPED_FOLDERS and not (here / n).is_symlink()
        ]
        for name in sorted(names):
            path = here / name
            relpath = path.relative_to(root).as_posix()
            real = path.resolve()
            if relpath == OUTPUT_MARKER:
                continue  # the writer's own mark of a merged folder: never published, no news
            if name.startswith(".") or not real.is_relative_to(root) or not real.is_file():
                skipped.append(relpath)
            else:
                files[relpath] = real
    return dict(sorted(files.items())), sorted(skipped)


def weight_ids(directory: Path) -> dict[str, list[str]]:
    """The content ids of each weight file a publish of ``directory`` commits (each hashed)."""
    files, _ = publishable(directory)
    return {
        relpath: content_ids.of_file(path, relpath)
        for relpath, path in files.items()
        if is_weights_file(relpath)
    }


def dry_run(
    repo_id: str, revision: str, directory: Path, extra: Mapping[str, bytes] | None = None
) -> PublishResult:
    """What `commit` would commit, without a single request."""
    found, skipped = publishable(directory)
    files = {*found, *(extra or {})}
    return PublishResult(repo_id, revision, sorted(files), skipped=skipped, dry_run=True)
