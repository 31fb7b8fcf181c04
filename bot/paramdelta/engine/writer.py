"""Write the output checkpoint: shards planned up front, filled in place, renamed at the end.

Each shard's header is known before any tensor is computed (`plan_shards`),
so the engine writes every chunk straight to its final offset with `pwrite`.
Everything goes into a hidden sibling directory; only `commit` renames it to
the requested name, so an interrupted merge never leaves an output that looks
complete, and the next merge into the same place removes what a killed one
left (see `workdirs`). A finished shard gets its real name at once, so that the
caller can upload it while the next one is written (`paramdelta.engine.stages`).

A mount point (an empty Docker volume as --output) cannot be renamed or replaced
(EBUSY), and its parent is another file system: the output is staged in a hidden
directory inside it and moved in entry by entry, the marker first and the lineage
record last, so that it looks finished (`publish` takes it) only once complete.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from paramdelta import __version__
from paramdelta.engine.checkpoint import Source
from paramdelta.engine.files import LINEAGE_FILE
from paramdelta.engine.merge_plan import MergeItem
from paramdelta.engine.safetensors_format import INDEX, SINGLE_FILE, encode_header, shard_filename
from paramdelta.engine.workdirs import OwnedDir, sweep
from paramdelta.errors import LocalFileError, UsageError, local_io

COPY_PIECE = 8 << 20  # bytes per read when copying a donated file
# In every output directory: what --overwrite may replace. A dotfile: `publish` skips it.
OUTPUT_MARKER = ".paramdelta-output"
# paramdelta's work directories inside a folder (a merge's into a mount point, an upload's
# staging): no content of the folder; a killed run's is removed by the next one.
WORK_PREFIX = ".paramdelta-"
IN_PLACE_PREFIX = f"{WORK_PREFIX}partial-"


def _marker() -> bytes:
    return (json.dumps({"tool": "paramdelta-bot", "version": __version__}) + "\n").encode()


@dataclass(frozen=True)
class ShardPlan:
    filename: str
    prefix: bytes  # length + JSON header, written first
    offsets: dict[str, int]  # tensor name -> absolute offset of its data in the file
    size: int

    @property
    def data_bytes(self) -> int:
        return self.size - len(self.prefix)


class WrittenShard(NamedTuple):
    """A finished output shard: its file (in the staging directory) and its plan."""

    path: Path
    plan: ShardPlan


def plan_shards(items: Sequence[MergeItem], max_shard_bytes: int) -> list[ShardPlan]:
    """Split tensors into shards in order, as transformers does: a new shard when the
    next tensor would overflow this one; a tensor bigger than the limit gets its own."""
    groups: list[list[MergeItem]] = [[]]
    size = 0
    for i, item in enumerate(items):
        # An FP8 weight's scales are written with it, so they share its shard.
        with_scale = item.nbytes
        if i + 1 < len(items) and items[i + 1].scale_of == item.name:
            with_scale += items[i + 1].nbytes
        if groups[-1] and item.scale_of is None and size + with_scale > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(item)
        size += item.nbytes
    shards = []
    for number, group in enumerate(groups, start=1):
        name = SINGLE_FILE if len(groups) == 1 else shard_filename(number, len(groups))
        prefix, spans = encode_header(((i.name, i.dtype, i.shape) for i in group), {"format": "pt"})
        offsets = {key: len(prefix) + begin for key, (begin, _) in spans.items()}
        end = max((len(prefix) + e for _, e in spans.values()), default=len(prefix))
        shards.append(ShardPlan(name, prefix, offsets, end))
    return shards


def index_json(shards: Sequence[ShardPlan]) -> bytes:
    weight_map = {name: s.filename for s in shards for name in s.offsets}
    doc = {
        "metadata": {"total_size": sum(s.data_bytes for s in shards)},
        "weight_map": dict(sorted(weight_map.items())),
    }
    return (json.dumps(doc, indent=2) + "\n").encode()


def check_output_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse to clobber a non-empty directory (checked before merging, and again at the end).

    ``overwrite`` replaces only an earlier paramdelta output (it holds the OUTPUT_MARKER):
    a typo in --output must not delete a checkpoint, a home folder or the merge's inputs.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--output {out_dir}: exists and is not a directory")
    if not out_dir.is_dir() or not _contents(out_dir):
        return
    if not overwrite:
        raise UsageError(
            f"--output {out_dir}: directory is not empty (pass --overwrite to replace it)"
        )
    if not (out_dir / OUTPUT_MARKER).is_file():
        raise UsageError(
            f"--output {out_dir}: not an earlier paramdelta output (it has no {OUTPUT_MARKER}):"
            " --overwrite replaces nothing else"
        )


def _contents(out_dir: Path) -> list[Path]:
    """What ``out_dir`` holds, but for paramdelta's work directories."""
    return [
        entry
        for entry in out_dir.iterdir()
        if not (entry.name.startswith(WORK_PREFIX) and entry.is_dir())
    ]


def check_not_an_input(out_dir: Path, roots: Iterable[Path]) -> None:
    """The output must be neither a folder the merge reads nor inside or around one."""
    out = out_dir.resolve()
    for root in roots:
        root = root.resolve()
        if out == root or out.is_relative_to(root) or root.is_relative_to(out):
            raise UsageError(f"--output {out_dir}: is (or holds) {root}, an input of the merge")


class OutputWriter:
    """Writes a planned checkpoint into a hidden temp dir; `commit` makes it visible."""

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        shards: Sequence[ShardPlan],
        *,
        overwrite: bool = False,
    ) -> None:
        self.out_dir = Path(out_dir).absolute()
        self.shards = list(shards)
        self.overwrite = overwrite
        check_output_dir(self.out_dir, overwrite)
        # A mount point cannot be replaced by a rename: the output is moved into it.
        self.in_place = self.out_dir.is_dir() and os.path.ismount(self.out_dir)
        self._work: OwnedDir | None = None
        self._fds: dict[int, int] = {}
        self._written = [0] * len(self.shards)
        self._lock = threading.Lock()  # workers write concurrently

    def __enter__(self) -> OutputWriter:
        if self.in_place:
            with local_io(self.out_dir):
                sweep(self.out_dir, IN_PLACE_PREFIX)
                self._work = OwnedDir(self.out_dir, IN_PLACE_PREFIX)
            return self
        parent, name = self.out_dir.parent, self.out_dir.name
        with local_io(parent):
            parent.mkdir(parents=True, exist_ok=True)
            # What a killed merge into the same place left behind (its owner is dead).
            sweep(parent, f".{name}.partial-")
            sweep(parent, f".{name}.old-")
            self._work = OwnedDir(parent, f".{name}.partial-")
        return self

    @property
    def tmp_dir(self) -> Path:
        """The hidden directory the output is written in, until `commit` renames it."""
        assert self._work is not None, "use OutputWriter as a context manager"
        return self._work.path

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self.abort()

    def _fd(self, shard: int) -> int:
        with self._lock:
            fd = self._fds.get(shard)
            if fd is None:
                plan = self.shards[shard]
                with local_io(self._partial(shard)):
                    fd = os.open(self._partial(shard), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                    self._fds[shard] = fd
                    os.ftruncate(fd, plan.size)
                    os.pwrite(fd, plan.prefix, 0)
            return fd

    def write(self, shard: int, offset: int, data: memoryview) -> None:
        """Write ``data`` at ``offset`` of a shard (thread-safe: positional writes)."""
        fd = self._fd(shard)
        done = 0
        try:  # not local_io: a Path and a context manager per write add up (~90k for MoE)
            while done < len(data):
                done += os.pwrite(fd, data[done:], offset + done)
        except OSError as e:
            raise LocalFileError.from_os_error(e, self._partial(shard)) from e
        with self._lock:
            self._written[shard] += len(data)

    def shard_done(self, shard: int) -> Path:
        """Close a fully written shard and give it its real name."""
        plan = self.shards[shard]
        self._fd(shard)  # a shard of empty tensors still gets its file
        if self._written[shard] != plan.data_bytes:
            raise AssertionError(
                f"{plan.filename}: wrote {self._written[shard]} of {plan.data_bytes} data bytes"
            )
        with self._lock:
            os.close(self._fds.pop(shard))
        path = self.tmp_dir / plan.filename
        with local_io(path):
            self._partial(shard).rename(path)
        return path

    def shard_path(self, shard: int) -> Path:
        """Where a finished shard is (until `commit` moves the directory)."""
        return self.tmp_dir / self.shards[shard].filename

    def _partial(self, shard: int) -> Path:
        return self.tmp_dir / (self.shards[shard].filename + ".incomplete")

    def add_file(self, relpath: str, data: bytes) -> None:
        path = self.tmp_dir / relpath
        with local_io(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

    def copy_file(self, relpath: str, source: Source) -> None:
        """Copy a file of ``source`` in pieces: memory holds one piece, whatever its size."""
        path = self.tmp_dir / relpath
        size = source.size(relpath)
        with local_io(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("wb") as f:
                for offset in range(0, size, COPY_PIECE):
                    f.write(source.read(relpath, offset, min(COPY_PIECE, size - offset)))

    def write_index(self) -> None:
        """Write the index of a sharded output (again at `commit`: it is small)."""
        if len(self.shards) > 1:
            self.add_file(INDEX, index_json(self.shards))

    def commit(self) -> Path:
        """Write the index and move the finished directory into place."""
        self.write_index()
        self.add_file(OUTPUT_MARKER, _marker())
        if self.in_place:
            self._move_in()
            self._release()
            return self.out_dir
        old = None
        with local_io(self.out_dir):
            if self.out_dir.exists():
                check_output_dir(self.out_dir, self.overwrite)
                old = self.out_dir.parent / f".{self.out_dir.name}.old-{uuid.uuid4().hex[:8]}"
                self.out_dir.rename(old)
            self.tmp_dir.rename(self.out_dir)
            if old is not None:
                shutil.rmtree(old)
        self._release()
        return self.out_dir

    def _move_in(self) -> None:
        """Move the output into the mount point ``out_dir``, entry by entry (each a rename
        on its file system): an earlier output's record goes first, this one's last."""
        with local_io(self.out_dir):
            check_output_dir(self.out_dir, self.overwrite)
            old = sorted(_contents(self.out_dir), key=lambda p: p.name != LINEAGE_FILE)
            for path in old:  # --overwrite of an earlier output (check_output_dir said so)
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
            new = sorted(
                self.tmp_dir.iterdir(),
                key=lambda p: (p.name != OUTPUT_MARKER, p.name == LINEAGE_FILE, p.name),
            )
            for path in new:
                path.replace(self.out_dir / path.name)
            self.tmp_dir.rmdir()

    def abort(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        if self._work is not None:
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
            self._release()

    def _release(self) -> None:
        if self._work is not None:
            self._work.release()
