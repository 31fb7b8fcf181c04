"""The safetensors file format: strict header parsing and header encoding.

Layout: 8-byte little-endian header length N, N bytes of UTF-8 JSON, then the
data section. The JSON maps tensor names to ``{"dtype", "shape",
"data_offsets": [begin, end]}`` (offsets relative to the data section) plus an
optional ``__metadata__`` string map.

Validation follows safetensors' own ``Metadata::validate`` (offsets sorted,
contiguous from 0, no overlap, no gap, ending exactly at end of file), because
a file we accept must be a file every other loader accepts too. Nothing here
touches tensor data.
"""

from __future__ import annotations

import json
import math
import operator
import re
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from paramdelta.engine.dtypes import ITEMSIZE
from paramdelta.errors import CheckpointError

# Same cap as safetensors (tensor.rs: MAX_HEADER_SIZE).
MAX_HEADER_BYTES = 100_000_000
PREFIX_BYTES = 8
# Headers are padded with spaces to this boundary, as safetensors does, so
# tensor data stays aligned for zero-copy loaders.
HEADER_ALIGNMENT = 8


# The file names of a checkpoint's weights, as transformers and the Hub use them.
SINGLE_FILE = "model.safetensors"
INDEX = "model.safetensors.index.json"


def shard_filename(number: int, total: int) -> str:
    return f"model-{number:05d}-of-{total:05d}.safetensors"


def is_weights_file(path: str) -> bool:
    """A shard or the index, at any depth of a repo."""
    name = path.rsplit("/", 1)[-1]
    return name.endswith(".safetensors") or name == INDEX


class TensorEntry(NamedTuple):  # a tuple: ~95k per checkpoint are made while planning
    """Where one tensor's bytes are: ``offset`` is absolute within its file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int

    @property
    def numel(self) -> int:
        n = 1
        for dim in self.shape:
            n *= dim
        return n


@dataclass(frozen=True)
class Header:
    """A validated safetensors header: tensors in file order."""

    tensors: tuple[TensorEntry, ...]
    metadata: Mapping[str, str]
    data_start: int


def read_header(read: Callable[[int, int], bytes], file_size: int, where: str) -> Header:
    """Read and validate a header through ``read(offset, length)``; no data bytes are read."""
    if file_size < PREFIX_BYTES:
        raise CheckpointError(
            f"{where}: truncated: {file_size} bytes is too short for a safetensors header"
        )
    (length,) = struct.unpack("<Q", read(0, PREFIX_BYTES))
    if length > MAX_HEADER_BYTES:
        raise CheckpointError(
            f"{where}: header length {length} exceeds the {MAX_HEADER_BYTES}-byte limit"
        )
    if PREFIX_BYTES + length > file_size:
        raise CheckpointError(
            f"{where}: header length {length} runs past the end of the {file_size}-byte file"
            " (truncated?)"
        )
    return parse_header(read(PREFIX_BYTES, length), file_size=file_size, where=where)


class DuplicateKeyError(ValueError):
    """A JSON object names the same key twice (args[0] is the key)."""


def reject_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """``object_pairs_hook`` for json.loads: a repeated key is an error, not a silent overwrite."""
    doc = dict(pairs)  # at C speed: a header holds one object per tensor (~95k for DeepSeek)
    if len(doc) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKeyError(key)
            seen.add(key)
    return doc


# JSON whitespace between a key's closing quote and its colon (see `loads_unique`).
_SPACED_COLON = re.compile(r'"[ \t\n\r]+:')


def loads_unique(text: str) -> object:
    """``json.loads`` refusing a repeated key (`DuplicateKeyError`), the hook only where needed.

    The hook costs a Python call per object (~95k per DeepSeek checkpoint), so the text is
    parsed plainly first and kept when counting proves it has no repeated key: with no
    backslash no string holds a quote, so with no space before a colon every key's closing
    quote is one ``":`` and ``text.count('":')`` bounds the keys written from above; if it
    equals the keys parsed (every object being the top one or one of its values, by the count
    of ``{``), none was lost to a repeat. Anything else takes the hook, so errors are the same.
    """
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):
        doc = None
    if type(doc) is dict and "\\" not in text and not _SPACED_COLON.search(text):
        objects = [v for v in doc.values() if type(v) is dict]
        if text.count("{") == 1 + len(objects) and text.count('":') == len(doc) + sum(
            map(len, objects)
        ):
            return doc
    return json.loads(text, object_pairs_hook=reject_duplicate_keys)


def _is_index(value: object) -> bool:
    # type() rather than isinstance: JSON's true/false are bools, which are ints too.
    return type(value) is int and value >= 0


def parse_header(raw: bytes, *, file_size: int, where: str) -> Header:
    """Validate the JSON header ``raw`` of a ``file_size``-byte file."""
    data_start = PREFIX_BYTES + len(raw)
    data_size = file_size - data_start
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{where}: header is not valid UTF-8 (byte {e.start})") from None
    try:
        doc = loads_unique(text)
    except DuplicateKeyError as e:
        raise CheckpointError(f"{where}: key {e.args[0]!r} appears twice in the header") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{where}: header is not valid JSON ({e.msg} at {e.pos})") from None
    except RecursionError:  # valid headers nest three levels: tensor, field, list
        raise CheckpointError(f"{where}: header nests too deeply") from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"{where}: header is not a JSON object")

    metadata = doc.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise CheckpointError(f"{where}: __metadata__ must map strings to strings")

    entries = [_entry(name, info, where, data_start) for name, info in doc.items()]
    entries.sort(key=operator.attrgetter("offset", "nbytes"))  # i.e. by (begin, end)
    _check_tiling(entries, data_start, data_size, where)
    return Header(tensors=tuple(entries), metadata=metadata, data_start=data_start)


_ENTRY_KEYS = {"dtype", "shape", "data_offsets"}
_INT_ONLY = frozenset({int})  # type(), not isinstance: JSON's true/false are ints too


def _entry(name: str, info: object, where: str, data_start: int) -> TensorEntry:
    """One validated entry: a fast path for a good one (a MoE header holds ~600 per shard),
    the checks one by one to say what is wrong with a bad one."""
    if type(info) is dict and len(info) == 3:
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if (
            type(dtype) is str
            and dtype in ITEMSIZE
            and type(shape) is list
            and type(offsets) is list
            and len(offsets) == 2
        ):
            begin, end = offsets
            if (
                type(begin) is int
                and type(end) is int
                and 0 <= begin <= end
                and _INT_ONLY.issuperset(map(type, shape))  # no generator per tensor
                and (not shape or min(shape) >= 0)
                and math.prod(shape) * ITEMSIZE[dtype] == end - begin
            ):
                return TensorEntry(name, dtype, tuple(shape), data_start + begin, end - begin)
    return _checked_entry(name, info, where, data_start)


def _checked_entry(name: str, info: object, where: str, data_start: int) -> TensorEntry:
    if type(info) is not dict or info.keys() != _ENTRY_KEYS:
        raise CheckpointError(
            f"{where}: tensor {name!r}: entry must have exactly dtype, shape and data_offsets"
        )
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if dtype not in ITEMSIZE:
        raise CheckpointError(f"{where}: tensor {name!r}: unknown or unsupported dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_index(d) for d in shape):
        raise CheckpointError(
            f"{where}: tensor {name!r}: shape must be a list of non-negative integers"
        )
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_index(o) for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise CheckpointError(
            f"{where}: tensor {name!r}: data_offsets must be [begin, end] with 0 <= begin <= end"
        )
    begin, end = offsets
    entry = TensorEntry(name, dtype, tuple(shape), data_start + begin, end - begin)
    expected = entry.numel * ITEMSIZE[dtype]
    if expected != entry.nbytes:
        raise CheckpointError(
            f"{where}: tensor {name!r}: shape {list(shape)} of {dtype} needs {expected} bytes"
            f" but data_offsets span {entry.nbytes}"
        )
    return entry


def _check_tiling(entries: list[TensorEntry], data_start: int, data_size: int, where: str) -> None:
    """The tensors must tile the data section exactly: no gap, no overlap, no tail."""
    cursor = 0
    previous = None
    for entry in entries:
        begin = entry.offset - data_start
        end = begin + entry.nbytes
        if end > data_size:
            raise CheckpointError(
                f"{where}: tensor {entry.name!r} ends at byte {end} of the data section,"
                f" past its end at {data_size} (truncated file?)"
            )
        if begin < cursor:
            raise CheckpointError(
                f"{where}: tensors {previous!r} and {entry.name!r} overlap"
                f" (data_offsets {begin} < {cursor})"
            )
        if begin > cursor:
            after = f"after tensor {previous!r}" if previous else "at the start of the data"
            raise CheckpointError(
                f"{where}: gap of {begin - cursor} bytes {after} (data_offsets must be contiguous)"
            )
        cursor = end
        previous = entry.name
    if cursor != data_size:
        raise CheckpointError(
            f"{where}: {data_size - cursor} bytes after the last tensor are not described"
            " by the header"
        )


def encode_header(
    tensors: Iterable[tuple[str, str, tuple[int, ...]]], metadata: Mapping[str, str]
) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """Encode a header for tensors laid out back to back in the given order.

    Returns the full prefix (length + padded JSON) and each tensor's
    ``(begin, end)`` relative to the data section.
    """
    doc: dict[str, object] = {"__metadata__": dict(metadata)}
    spans: dict[str, tuple[int, int]] = {}
    cursor = 0
    for name, dtype, shape in tensors:
        numel = 1
        for dim in shape:
            numel *= dim
        end = cursor + numel * ITEMSIZE[dtype]
        doc[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [cursor, end]}
        spans[name] = (cursor, end)
        cursor = end
    raw = json.dumps(doc, separators=(",", ":")).encode()
    raw += b" " * (-(PREFIX_BYTES + len(raw)) % HEADER_ALIGNMENT)
    return struct.pack("<Q", len(raw)) + raw, spans
