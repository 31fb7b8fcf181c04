"""A checkpoint: config.json plus a validated index of every tensor's bytes.

Bytes come through a `Source`, the one small interface between the engine and
where a checkpoint lives (a local directory here; the Hub in `hub_source`).
Opening a checkpoint reads only config.json, the index and the safetensors
headers, never tensor data, so every problem surfaces before the merge starts.
"""

from __future__ import annotations

import functools
import json
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn, Protocol

from paramdelta.engine.limits import (
    MAX_CONFIG_BYTES,
    MAX_INDEX_BYTES,
    MAX_JSON_DEPTH,
    MAX_SHARDS,
    MAX_TOTAL_HEADER_BYTES,
    check_size,
    json_depth,
)
from paramdelta.engine.safetensors_format import (
    INDEX,
    SINGLE_FILE,
    DuplicateKeyError,
    TensorEntry,
    read_header,
    reject_duplicate_keys,
)
from paramdelta.errors import CheckpointError, LocalFileError, local_io

if TYPE_CHECKING:
    from paramdelta.engine.adapter import Adapter

CONFIG = "config.json"
# Formats that can only be loaded by unpickling, which runs arbitrary code.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


class Provenance(NamedTuple):
    """Where a checkpoint comes from, as its lineage entry records it.

    A Hub repo: its id, the revision asked for, the commit it resolved to, the
    content id of each file (`paramdelta.hub.content_ids`) and its card data.
    A local folder: its ``path``, nothing else (its README is read for the licence).
    """

    repo: str | None = None
    revision: str | None = None
    sha: str | None = None
    content: Mapping[str, str] = {}
    card_data: Mapping[str, Any] = {}
    path: Path | None = None

    @property
    def name(self) -> str:
        """How a card or a message names it: the repo id, or a local folder's name (a path
        would say where it lies on one machine)."""
        if self.repo is not None or self.path is None:
            return str(self.repo)
        return self.path.absolute().name


class Source(Protocol):
    """Read access to the files of one checkpoint, at one fixed revision."""

    label: str
    provenance: Provenance
    # How the engine should read from it: bytes per range read, ranges in flight.
    read_size: int
    parallel_reads: int

    @property
    def directory(self) -> Path | None:
        """The local folder it reads, if any (an output must not overwrite it)."""

    def local(self, paths: Sequence[str]) -> Source:
        """These files readable from local disk: itself where it already is, a Hub
        checkpoint its files fetched into the checked cache (`paramdelta.hub.cache`)."""

    def list_files(self) -> list[str]:
        """Every file, as a repo-relative POSIX path."""

    def size(self, path: str) -> int: ...

    def read(self, path: str, offset: int, length: int) -> bytes:
        """A small byte range (headers, config files)."""

    def read_into(self, path: str, offset: int, view: memoryview) -> None:
        """Fill ``view`` with the bytes at ``offset``; the bulk data path."""

    def prefetch(self, paths: Sequence[str]) -> None:
        """A hint: the headers of these files are read next (a remote source reads them at once)."""

    def close(self) -> None: ...


class LocalSource:
    """A checkpoint directory on disk, read with positional reads (no mmap)."""

    # ~1 MiB per input keeps a worker's whole chunk in cache (see engine).
    read_size = 1 << 20
    parallel_reads = 1

    def __init__(
        self,
        root: str | os.PathLike[str],
        label: str | None = None,
        provenance: Provenance | None = None,
    ) -> None:
        self.root = Path(root)
        self.label = label or str(self.root)
        # A cached snapshot of a Hub repo keeps the repo's provenance.
        self.provenance = provenance or Provenance(path=self.root)
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()
        if not self.root.is_dir():
            raise CheckpointError(f"{self.label}: not a directory")

    @property
    def directory(self) -> Path:
        return self.root

    def local(self, paths: Sequence[str]) -> Source:
        return self

    def list_files(self) -> list[str]:
        return sorted(
            p.relative_to(self.root).as_posix()
            for p in self.root.rglob("*")
            if p.is_file() and ".cache" not in p.relative_to(self.root).parts
        )

    def _fd(self, path: str) -> int:
        if (fd := self._fds.get(path)) is not None:  # opened: no lock (a dict read is atomic)
            return fd
        with self._lock:
            fd = self._fds.get(path)
            if fd is None:
                with local_io(self.root / path):
                    fd = self._fds[path] = os.open(self.root / path, os.O_RDONLY)
            return fd

    def size(self, path: str) -> int:
        return os.fstat(self._fd(path)).st_size

    def read(self, path: str, offset: int, length: int) -> bytes:
        buf = bytearray(length)
        self.read_into(path, offset, memoryview(buf))
        return bytes(buf)

    def read_into(self, path: str, offset: int, view: memoryview) -> None:
        fd = self._fd(path)
        done = 0
        while done < len(view):
            try:  # not local_io: a Path and a context manager per read add up (~300k for MoE)
                n = os.preadv(fd, [view[done:]], offset + done)
            except OSError as e:
                raise LocalFileError.from_os_error(e, self.root / path) from e
            if n == 0:
                raise CheckpointError(
                    f"{self.label}/{path}: file ended at byte {offset + done} while reading"
                    " (changed on disk during the merge?)"
                )
            done += n

    def prefetch(self, paths: Sequence[str]) -> None:
        pass  # local reads are cheap one at a time

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()


class TensorRef(NamedTuple):
    """One tensor of one checkpoint: which file, and where in it."""

    file: str
    entry: TensorEntry

    @property
    def dtype(self) -> str:
        return self.entry.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return self.entry.shape


@dataclass
class Checkpoint:
    role: str
    source: Source
    config: dict[str, Any]
    tensors: dict[str, TensorRef]
    files: list[str]
    adapter: Adapter | None = None  # a PEFT adapter's post model (`paramdelta.engine.adapter`)

    @property
    def where(self) -> str:
        return f"{self.role}: {self.source.label}"


def load_json(data: bytes, where: str) -> Any:
    """Parse JSON strictly: a duplicated key is an error, not a silent overwrite.

    Nesting is bounded too: a config nested 200,000 deep would otherwise end in a
    RecursionError here or in whatever walks it later.
    """
    try:
        doc = json.loads(data.decode("utf-8"), object_pairs_hook=reject_duplicate_keys)
    except DuplicateKeyError as e:
        raise CheckpointError(f"{where}: key {e.args[0]!r} appears twice") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{where}: not valid JSON ({e})") from None
    except RecursionError:
        doc = None  # deeper than the interpreter's stack: far over the limit below
    if doc is None or json_depth(doc) > MAX_JSON_DEPTH:
        raise CheckpointError(f"{where}: nested more than {MAX_JSON_DEPTH} levels deep")
    return doc


def read_json(source: Source, path: str, limit: int, where: str) -> Any:
    """A JSON file of a checkpoint, its size checked against ``limit`` before it is read."""
    size = check_size(source.size(path), limit, where, path)
    return load_json(source.read(path, 0, size), where)


def open_checkpoint(source: Source, role: str) -> Checkpoint:
    """Validate a checkpoint's config, index and headers; read no tensor data."""
    where = f"{role}: {source.label}"
    files = source.list_files()
    top_level = {f for f in files if "/" not in f}
    if CONFIG not in top_level:
        raise CheckpointError(f"{where}: config.json is missing")
    config = read_json(source, CONFIG, MAX_CONFIG_BYTES, f"{where}/{CONFIG}")
    if not isinstance(config, dict):
        raise CheckpointError(f"{where}/{CONFIG}: not a JSON object")

    if INDEX in top_level:
        weight_map = _read_index(source, top_level, where)
        shards = sorted(set(weight_map.values()))
    elif SINGLE_FILE in top_level:
        weight_map = None
        shards = [SINGLE_FILE]
    else:
        _explain_missing_weights(top_level, where)

    tensors: dict[str, TensorRef] = {}
    header_bytes = 0
    source.prefetch(shards)
    for shard in shards:
        shard_where = f"{where}/{shard}"
        header = read_header(functools.partial(source.read, shard), source.size(shard), shard_where)
        header_bytes += header.data_start
        if header_bytes > MAX_TOTAL_HEADER_BYTES:
            raise CheckpointError(
                f"{where}: its safetensors headers hold more than {MAX_TOTAL_HEADER_BYTES} bytes"
            )
        refs = {entry.name: TensorRef(shard, entry) for entry in header.tensors}
        # At C speed for a good shard (~600 tensors of ~95k); the loop below names the culprit.
        if tensors.keys().isdisjoint(refs) and (
            weight_map is None or [*map(weight_map.get, refs)].count(shard) == len(refs)
        ):
            tensors.update(refs)
            continue
        for entry in header.tensors:
            if entry.name in tensors:
                raise CheckpointError(
                    f"{where}: tensor {entry.name!r} is in both {tensors[entry.name].file}"
                    f" and {shard}"
                )
            if weight_map is not None and weight_map.get(entry.name) != shard:
                listed = weight_map.get(entry.name)
                problem = f"the index says {listed}" if listed else "the index does not list it"
                raise CheckpointError(f"{shard_where}: has tensor {entry.name!r} but {problem}")
            tensors[entry.name] = TensorRef(shard, entry)
    # Every tensor is in the index (checked above): equal counts mean nothing is missing.
    if weight_map is not None and len(weight_map) != len(tensors):
        for name, shard in weight_map.items():
            if name not in tensors:
                raise CheckpointError(
                    f"{where}/{INDEX}: lists tensor {name!r} in {shard},"
                    " but that shard does not contain it"
                )
    if not tensors:
        raise CheckpointError(f"{where}: the checkpoint has no tensors")
    return Checkpoint(role, source, config, tensors, files)


def _read_index(source: Source, top_level: set[str], where: str) -> dict[str, str]:
    index_where = f"{where}/{INDEX}"
    doc = read_json(source, INDEX, MAX_INDEX_BYTES, index_where)
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{index_where}: 'weight_map' must map tensor names to shard files")
    if (shards := len(set(weight_map.values()))) > MAX_SHARDS:
        raise CheckpointError(f"{index_where}: {shards} shards, more than {MAX_SHARDS}")
    # Each shard once (DeepSeek: ~95k tensors in 163 shards); the error names a tensor in it.
    first_tensor: dict[str, str] = {}
    for name, shard in weight_map.items():
        first_tensor.setdefault(shard, name)
    for shard, name in first_tensor.items():
        if "/" in shard or "\\" in shard or not shard.endswith(".safetensors"):
            raise CheckpointError(
                f"{index_where}: tensor {name!r} points at {shard!r},"
                " which is not a .safetensors file next to the index"
            )
        if shard not in top_level:
            raise CheckpointError(
                f"{index_where}: tensor {name!r} points at missing shard {shard!r}"
            )
    return weight_map


def _explain_missing_weights(top_level: set[str], where: str) -> NoReturn:
    pickles = sorted(f for f in top_level if f.endswith(PICKLE_SUFFIXES) or ".bin.index" in f)
    if pickles:
        raise CheckpointError(
            f"{where}: only pickle weights ({', '.join(pickles[:3])}); paramdelta never"
            " unpickles (it can run arbitrary code): convert the checkpoint to safetensors"
        )
    if any(f.endswith(".safetensors") for f in top_level):
        raise CheckpointError(
            f"{where}: safetensors shards without {INDEX} (or a single {SINGLE_FILE})"
        )
    raise CheckpointError(f"{where}: no {SINGLE_FILE} or {INDEX} found")
