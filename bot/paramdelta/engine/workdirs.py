"""Work directories that tell whether their owner is alive, so that leftovers can be swept.

A merge writes into a hidden ``.NAME.partial-*`` directory (and `run` into a
scratch directory). SIGINT and SIGTERM remove it on the way out; SIGKILL or a
power loss cannot, and a multi-GB ``.incomplete`` shard would stay forever.
Each work directory is therefore flock()ed by its process for as long as it is
in use, and the next merge into the same place removes those whose lock nobody
holds. The kernel drops a lock when its holder dies, so a lock is never stale,
and a directory another live merge is using is never touched.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import uuid
from pathlib import Path

_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
_ATTEMPTS = 100


class OwnedDir:
    """A new directory ``parent/prefix<random>``, locked until `release`."""

    def __init__(self, parent: Path, prefix: str) -> None:
        for _ in range(_ATTEMPTS):
            path = parent / f"{prefix}{uuid.uuid4().hex[:8]}"
            try:
                path.mkdir()
            except FileExistsError:
                continue
            fd = os.open(path, _DIRECTORY)
            try:
                # Never wait: someone else holding it (a sweeper that found it unlocked) will
                # remove it; make another.
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            if os.fstat(fd).st_nlink > 0:  # not swept between mkdir and flock
                self.path, self._fd = path, fd
                return
            os.close(fd)
        raise FileExistsError(f"{parent}: could not make a work directory {prefix}*")

    def release(self) -> None:
        """Give up the lock (the directory, renamed or not, is the caller's to keep or remove)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def sweep(parent: Path, prefix: str) -> list[Path]:
    """Remove the directories ``parent/prefix*`` whose owner is gone; the ones removed."""
    removed: list[Path] = []
    try:
        names = [e.name for e in os.scandir(parent) if e.name.startswith(prefix)]
    except OSError:
        return removed
    for name in names:
        path = parent / name
        try:
            fd = os.open(path, _DIRECTORY)
        except OSError:  # gone, not a directory, or not ours to open
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its owner is alive
            with contextlib.suppress(OSError):
                shutil.rmtree(path)
                removed.append(path)
        finally:
            os.close(fd)
    return removed
