"""Inputs read from the Hugging Face cache, checked against the Hub's metadata first.

On a self-hosted runner the cache (HF_HOME) is persistent and may be shared
with other jobs, so a file found there proves nothing: any job that can write
the cache can flip bits in a weight blob or replace a tokenizer file with a
symlink to a secret. Before a cached file is merged:

- it must resolve to a regular file inside this repo's cache folder (a snapshot
  entry is a symlink to ``../../blobs/<etag>``) or inside huggingface_hub's
  cache-wide store of Xet files (``<cache>/blobs/<xx>/<xet hash>``, which that
  entry may in turn link to); one leading anywhere else is refused;
- its size must be the one the Hub lists for the pinned commit;
- its content must hash to what the Hub lists: the sha256 of an LFS or Xet file
  (the weights), the git blob id of any other file.

A file that fails is removed from the cache and downloaded again, once; if the
fresh copy fails too, the merge stops with a HubError and nothing is published.
Each file then stays open and is read through that descriptor only; a change
to it in place after the check moves its ctime, which every read looks at, so
bytes written after the check are never merged either.

Hashing runs one thread per core (hashlib releases the GIL); its cost is
measured by benchmarks/cache_check_bench.py.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

from huggingface_hub import constants
from huggingface_hub.file_download import repo_folder_name

from paramdelta.engine.checkpoint import LocalSource
from paramdelta.errors import HubError, LocalFileError
from paramdelta.hub import content_ids
from paramdelta.hub.client import RepoFiles
from paramdelta.hub.hf_internals import shared_blobs_dir

log = logging.getLogger(__name__)

_OPEN = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK  # O_NONBLOCK: a FIFO cannot hang us


class Stamp(NamedTuple):
    """What changes when a file is written to or replaced: its identity and times."""

    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, fd: int) -> Stamp:
        st = os.fstat(fd)
        return cls(st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class CheckedSource(LocalSource):
    """A snapshot of the cache whose files were checked and are read through open descriptors."""

    def __init__(self, root: Path, label: str, files: dict[str, int]) -> None:
        super().__init__(root, label)
        self._fds = dict(files)
        self._stamps = {path: Stamp.of(fd) for path, fd in files.items()}

    def _fd(self, path: str) -> int:
        fd = self._fds.get(path)
        if fd is None:  # the merge reads only what was checked
            raise LocalFileError(f"{self.label}/{path}: not among the checked files")
        return fd

    def read_into(self, path: str, offset: int, view: memoryview) -> None:
        super().read_into(path, offset, view)
        if Stamp.of(self._fd(path)) != self._stamps[path]:
            raise LocalFileError(
                f"{self.label}/{path}: changed in the cache during the merge"
                " (another job on this runner?)"
            )


Download = Callable[[Iterable[str]], Path]


def checked_snapshot(
    repo: RepoFiles, snapshot: Path, paths: Iterable[str], download: Download
) -> CheckedSource:
    """``paths`` of ``snapshot`` checked against ``repo``'s listing, re-fetched once if need be.

    ``download(paths)`` fetches files into the cache again and returns the snapshot.
    """
    label = f"{repo.repo_id}@{repo.sha[:7]}"
    root = Path(constants.HF_HUB_CACHE).resolve() / repo_folder_name(
        repo_id=repo.repo_id, repo_type="model"
    )
    wanted = sorted(set(paths))
    opened, failed = _check_all(repo, root, snapshot, wanted)
    if failed:
        for path, problem in failed.items():
            log.warning("%s/%s in the cache: %s; fetching it again", label, path, problem)
            _evict(repo, root, snapshot, path)
        snapshot = download(sorted(failed))
        again, still = _check_all(repo, root, snapshot, sorted(failed))
        opened |= again
        if still:
            for fd in opened.values():
                os.close(fd)
            path, problem = next(iter(still.items()))
            raise HubError(f"{label}/{path}: {problem}, even as downloaded again")
    return CheckedSource(snapshot, label, opened)


def _check_all(
    repo: RepoFiles, root: Path, snapshot: Path, paths: list[str]
) -> tuple[dict[str, int], dict[str, str]]:
    """(path -> open descriptor of each file that passed, path -> problem of each that failed)."""
    opened: dict[str, int] = {}
    failed: dict[str, str] = {}
    workers = max(1, min(len(paths), os.cpu_count() or 1))
    with ThreadPoolExecutor(workers, thread_name_prefix="paramdelta-check") as pool:
        for path, (fd, problem) in zip(
            paths, pool.map(lambda p: _check(repo, root, snapshot / p, p), paths), strict=True
        ):
            if fd is not None:
                opened[path] = fd
            else:
                failed[path] = problem
    return opened, failed


def _check(repo: RepoFiles, root: Path, entry: Path, path: str) -> tuple[int | None, str]:
    """An open descriptor of the file if it is the one the Hub lists, else (None, the problem)."""
    if path not in repo.sizes:
        return None, "not in the Hub's listing of the commit"
    real = Path(os.path.realpath(entry))
    if not (real.is_relative_to(root) or real.is_relative_to(_shared_store())):
        return None, "leads out of the cache (a symlink to another file)"
    try:
        fd = os.open(real, _OPEN)
    except OSError as e:
        return None, f"cannot be opened ({e.strerror})"
    try:
        problem = _content_problem(repo, path, fd)
    except OSError as e:
        problem = f"cannot be read ({e.strerror})"
    if problem is not None:
        os.close(fd)
        return None, problem
    return fd, ""


def _content_problem(repo: RepoFiles, path: str, fd: int) -> str | None:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    size = repo.sizes[path]
    if st.st_size != size:
        return f"{st.st_size} bytes, the Hub lists {size}"
    expected = repo.content.get(path, "")
    which = content_ids.kind(expected)
    if not which:
        return "the Hub's listing gives no content hash for it"
    if content_ids.of_fd(fd, size, [which])[which] == expected:
        return None
    hash_name = "sha256" if which == content_ids.SHA256 else "git blob id"
    return f"its {hash_name} is not the Hub's"


def _shared_store() -> Path:
    return shared_blobs_dir(Path(constants.HF_HUB_CACHE).resolve())


def _evict(repo: RepoFiles, root: Path, snapshot: Path, path: str) -> None:
    """Remove a bad cache entry and the blob it should point at, so both are fetched again.

    Only inside the repo's cache folder: a snapshot folder that leads elsewhere is left
    alone (the re-check then fails and the error says so).
    """
    entry = snapshot / path
    if not Path(os.path.realpath(entry.parent)).is_relative_to(root):
        return
    # The cache names a blob by its etag: the sha256 of an LFS file, else its git blob id.
    etag = repo.content.get(path, "").partition(":")[2]
    blob = root / "blobs" / etag if etag else None
    # A shared Xet blob of the right size is linked again, not downloaded: it goes too.
    real = Path(os.path.realpath(entry))
    shared = real if real.is_relative_to(_shared_store()) else None
    for victim in (entry, blob, shared):
        if victim is not None and (victim.is_symlink() or victim.exists()):
            try:
                victim.unlink()
            except OSError as e:
                raise LocalFileError.from_os_error(e, victim) from e
