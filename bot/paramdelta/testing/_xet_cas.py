"""hf_xet's local CAS (a `local://` directory), read without hf_xet, written through it.

hf_xet's simulation client stores uploads in a directory: MDB shards (which files
exist: each file's xet hash, sha256 and terms, i.e. chunk ranges of xorbs) and
xorbs (the chunks). While one process holds an hf_xet upload or download on the
directory, no other process can open one (a lock file), so the fake Hub, whose
clients may run in other processes, reads shards and xorbs itself (format:
xet-core's `metadata_shard` and `xorb_object` modules). Writing (seeding a repo)
goes through hf_xet, as a client's upload would; the lock is released when the
upload is done.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple

import lz4.frame

SHARD_TAG = b"HFRepoMetaData\x00"
XORB_FOOTER = b"XETBLOB"
_ENTRY = 48  # bytes of every file-info record: a 32-byte hash and 16 bytes of fields
_BOOKEND = b"\xff" * 32
_WITH_VERIFICATION = 1 << 31
_WITH_METADATA_EXT = 1 << 30
_NONE, _LZ4, _BG4_LZ4 = 0, 1, 2


def hash_hex(raw: bytes) -> str:
    """A xet-core hash as its hex name: four little-endian u64s, each printed as 16 digits."""
    return "".join(raw[i : i + 8][::-1].hex() for i in range(0, 32, 8))


@dataclass(frozen=True)
class Term:
    """Chunks [first, end) of one xorb: `size` bytes of a file, in order."""

    xorb: str
    first: int
    end: int
    size: int


class XetFile(NamedTuple):
    """A file in the CAS: named by its xet hash, its content's sha256, size and terms in order."""

    xet_hash: str
    sha256: str
    size: int
    terms: tuple[Term, ...]


@dataclass(frozen=True)
class _Chunk:
    offset: int  # of its 8-byte header in the xorb file
    stored: int
    scheme: int
    size: int


class XetCas:
    """The files of one local CAS directory, indexed by xet hash and by sha256."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._shards_read: set[str] = set()
        self._files: dict[str, XetFile] = {}
        self._by_sha256: dict[str, XetFile] = {}
        self._chunks: dict[str, list[_Chunk]] = {}

    @property
    def url(self) -> str:
        """What the Xet token endpoints answer as casUrl."""
        return f"local://{self.root}"

    def file(self, xet_hash: str) -> XetFile | None:
        return self._lookup(self._files, xet_hash)

    def by_sha256(self, sha256: str) -> XetFile | None:
        """The uploaded file with this content, as a commit names it (an lfsFile's oid)."""
        return self._lookup(self._by_sha256, sha256)

    def _lookup(self, index: dict[str, XetFile], key: str) -> XetFile | None:
        with self._lock:
            if key not in index:
                self._read_new_shards()
            return index.get(key)

    def _read_new_shards(self) -> None:
        shard_dir = self.root / "xet" / "xorbs" / "shards"
        for path in sorted(shard_dir.glob("*.mdb")) if shard_dir.is_dir() else ():
            if path.name not in self._shards_read:
                for file in read_shard(path.read_bytes()):
                    self._files[file.xet_hash] = file
                    self._by_sha256.setdefault(file.sha256, file)
                self._shards_read.add(path.name)

    def read(self, file: XetFile, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """The bytes [start, end) of a file, reassembled from its xorbs."""
        end = file.size if end is None else min(end, file.size)
        position = 0
        for term in file.terms:
            if position >= end:
                return
            if position + term.size <= start:
                position += term.size
                continue
            chunks = self._xorb_chunks(term.xorb)[term.first : term.end]
            with self._xorb_path(term.xorb).open("rb") as f:
                for chunk in chunks:
                    if position >= end:
                        return
                    if position + chunk.size > start:
                        data = _decode(f, chunk)
                        yield data[max(start - position, 0) : end - position]
                    position += chunk.size

    def stored_bytes(self) -> int:
        """The size of every xorb: what uploads have sent, after deduplication."""
        xorbs = self._xorb_path("*").parent.glob("default.*")
        return sum(p.stat().st_size for p in xorbs if p.suffix != ".tagset")

    def _xorb_path(self, xorb: str) -> Path:
        return self.root / "xet" / "xorbs" / "xorbs" / f"default.{xorb}"

    def _xorb_chunks(self, xorb: str) -> list[_Chunk]:
        with self._lock:
            chunks = self._chunks.get(xorb)
        if chunks is None:
            chunks = _scan_xorb(self._xorb_path(xorb))
            with self._lock:
                self._chunks[xorb] = chunks
        return chunks

    def upload(self, sources: Sequence[bytes | os.PathLike[str]]) -> list[XetFile]:
        """Store contents through hf_xet, as a client's Xet upload would; the files, in order."""
        import hf_xet  # the client library, not huggingface_hub: no endpoint is read at import

        session = hf_xet.XetSession()
        expiry = int(time.time()) + 3600
        with session.new_upload_commit(
            endpoint=self.url,
            token="fake-hub-seed",  # noqa: S106 - the local CAS checks no token
            token_expiry_unix_secs=expiry,
        ) as commit:
            handles = [
                commit.start_upload_bytes(s)
                if isinstance(s, bytes)
                else commit.start_upload_file(os.fspath(s))
                for s in sources
            ]
        hashes = [h.result().xet_info.hash for h in handles]
        del commit, handles, session  # releases the directory's lock for other processes
        found = [self.file(xet_hash) for xet_hash in hashes]
        if any(f is None for f in found):
            raise RuntimeError(f"hf_xet wrote no shard for a file under {self.root}")
        return [f for f in found if f is not None]


def read_shard(data: bytes) -> Iterator[XetFile]:
    """The files an MDB shard describes (its file-info section)."""
    if not data.startswith(SHARD_TAG):
        raise ValueError("not an MDB shard")
    footer_size = struct.unpack_from("<Q", data, 40)[0]
    file_info = struct.unpack_from("<Q", data, len(data) - footer_size + 8)[0]
    offset = file_info
    while data[offset : offset + 32] != _BOOKEND:
        xet_hash = hash_hex(data[offset : offset + 32])
        flags, count = struct.unpack_from("<II", data, offset + 32)
        offset += _ENTRY
        terms = []
        for _ in range(count):
            xorb = hash_hex(data[offset : offset + 32])
            _, size, first, end = struct.unpack_from("<IIII", data, offset + 32)
            terms.append(Term(xorb, first, end, size))
            offset += _ENTRY
        if flags & _WITH_VERIFICATION:
            offset += _ENTRY * count
        sha256 = ""
        if flags & _WITH_METADATA_EXT:
            sha256 = hash_hex(data[offset : offset + 32])
            offset += _ENTRY
        yield XetFile(xet_hash, sha256, sum(t.size for t in terms), tuple(terms))


def _scan_xorb(path: Path) -> list[_Chunk]:
    """Every chunk's place in a xorb file: headers are walked up to the footer."""
    chunks: list[_Chunk] = []
    with path.open("rb") as f:
        offset = 0
        while True:
            head = f.read(8)
            if len(head) < 8 or head.startswith(XORB_FOOTER[:7]):
                return chunks
            stored = int.from_bytes(head[1:4], "little")
            chunks.append(_Chunk(offset, stored, head[4], int.from_bytes(head[5:8], "little")))
            offset += 8 + stored
            f.seek(offset)


def _decode(f: BinaryIO, chunk: _Chunk) -> bytes:
    f.seek(chunk.offset + 8)
    body = f.read(chunk.stored)
    if chunk.scheme == _NONE:
        data = body
    elif chunk.scheme == _LZ4:
        data = lz4.frame.decompress(body)
    elif chunk.scheme == _BG4_LZ4:
        data = _regroup(lz4.frame.decompress(body))
    else:
        raise ValueError(f"unknown xorb chunk compression {chunk.scheme}")
    if len(data) != chunk.size:
        raise ValueError("xorb chunk decodes to the wrong size")
    return data


def _regroup(grouped: bytes) -> bytes:
    """Undo byte grouping: byte k of every 4 was stored in group k, groups back to back."""
    n = len(grouped)
    out = bytearray(n)
    start = 0
    for k in range(4):
        length = len(range(k, n, 4))
        out[k::4] = grouped[start : start + length]
        start += length
    return bytes(out)
