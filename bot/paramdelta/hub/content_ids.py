"""Content ids: a file's bytes named as the Hub's listing names them, whatever commit holds them.

``sha256:<hex>`` for a file stored in LFS or Xet (the listing gives the sha256 of
both), ``blob:<git blob id>`` for a regular git file. One vocabulary for all that
compares content: the inputs' files in the lineage record (`plan` tells a new
release from a README edit), the cache check (`paramdelta.hub.cache`), and the
weights a merge committed, in the record's output section.

The Hub, not the client, decides whether a committed file is stored in LFS, so the
ids of a file about to be committed are all those it may be listed under: a
``.safetensors`` file always goes to LFS (the Hub's default .gitattributes), any
other file may go either way.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Collection
from pathlib import Path

from huggingface_hub.hf_api import RepoSibling

from paramdelta.errors import LocalFileError

SHA256 = "sha256:"
BLOB = "blob:"
KINDS = (SHA256, BLOB)
HASH_PIECE = 8 << 20  # bytes per read while hashing


def listed(sibling: RepoSibling) -> str | None:
    """The content id the Hub's listing gives a file (None: listed without file metadata)."""
    if sibling.lfs is not None:
        return f"{SHA256}{sibling.lfs.sha256}"
    return f"{BLOB}{sibling.blob_id}" if sibling.blob_id else None


def kind(content_id: str) -> str:
    """The kind of a content id, ``sha256:`` or ``blob:`` ('' for anything else)."""
    return next((k for k in KINDS if content_id.startswith(k)), "")


def kinds_for(path: str) -> tuple[str, ...]:
    """The kinds of id a file about to be committed may be listed under."""
    return (SHA256,) if path.endswith(".safetensors") else KINDS


def _hashers(size: int, kinds: Collection[str]) -> dict[str, hashlib._Hash]:
    hashers = {}
    if SHA256 in kinds:
        hashers[SHA256] = hashlib.sha256()
    if BLOB in kinds:
        hashers[BLOB] = hashlib.sha1(b"blob %d\0" % size)  # noqa: S324 - git's blob id
    return hashers


def of_fd(fd: int, size: int, kinds: Collection[str]) -> dict[str, str]:
    """The content ids of ``size`` bytes of the open file ``fd``, one per kind, in one read."""
    hashers = _hashers(size, kinds)
    view = memoryview(bytearray(min(HASH_PIECE, max(size, 1))))
    offset = 0
    while offset < size:
        n = os.preadv(fd, [view[: min(len(view), size - offset)]], offset)
        if n == 0:
            break  # shorter than said: the ids cannot match
        for hasher in hashers.values():
            hasher.update(view[:n])
        offset += n
    return {k: k + hasher.hexdigest() for k, hasher in hashers.items()}


def of_file(path: Path, repo_path: str) -> list[str]:
    """The ids the Hub may list the local file ``path`` under once committed as ``repo_path``."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            return list(of_fd(fd, os.fstat(fd).st_size, kinds_for(repo_path)).values())
        finally:
            os.close(fd)
    except OSError as e:
        raise LocalFileError.from_os_error(e, path) from e


def of_bytes(data: bytes, repo_path: str) -> list[str]:
    """The ids the Hub may list ``data`` under once committed as ``repo_path``."""
    hashers = _hashers(len(data), kinds_for(repo_path))
    for hasher in hashers.values():
        hasher.update(data)
    return [k + hasher.hexdigest() for k, hasher in hashers.items()]
