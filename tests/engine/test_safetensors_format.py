import json
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from paramdelta.engine.safetensors_format import (
    DuplicateKeyError,
    encode_header,
    loads_unique,
    parse_header,
    read_header,
)
from paramdelta.errors import CheckpointError


def _read(raw: bytes):
    return read_header(lambda off, n: raw[off : off + n], len(raw), "x.safetensors")


def _file(header: dict | bytes, data: bytes = b"", length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def _entry(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


def test_reads_a_file_written_by_safetensors(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file(
        {"b": torch.zeros(3, 2, dtype=torch.bfloat16), "a": torch.arange(4, dtype=torch.int64)},
        path,
        {"format": "pt"},
    )
    raw = path.read_bytes()
    header = _read(raw)
    assert header.metadata == {"format": "pt"}
    by_name = {t.name: t for t in header.tensors}
    assert by_name["a"].dtype == "I64" and by_name["a"].shape == (4,)
    assert by_name["b"].dtype == "BF16" and by_name["b"].nbytes == 12
    a = by_name["a"]
    assert raw[a.offset : a.offset + a.nbytes] == torch.arange(4).numpy().tobytes()


def test_zero_sized_tensors_share_an_offset():
    header = _read(_file({"e": _entry(shape=(0,), offsets=(0, 0)), "w": _entry()}, bytes(8)))
    assert [t.name for t in header.tensors] == ["e", "w"]


BAD_HEADERS = [
    (b"\x01\x02", "x.safetensors: truncated: 2 bytes is too short for a safetensors header"),
    (
        struct.pack("<Q", 200_000_000) + b"{}",
        "x.safetensors: header length 200000000 exceeds the 100000000-byte limit",
    ),
    (
        _file({}, length=50),
        "x.safetensors: header length 50 runs past the end of the 10-byte file (truncated?)",
    ),
    (_file(b'{"a": "\xff"}'), "x.safetensors: header is not valid UTF-8 (byte 7)"),
    (
        _file(b"{not json"),
        "x.safetensors: header is not valid JSON"
        " (Expecting property name enclosed in double quotes at 1)",
    ),
    (_file(b"[1, 2]"), "x.safetensors: header is not a JSON object"),
    (
        _file(b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "w": {}}', bytes(8)),
        "x.safetensors: key 'w' appears twice in the header",
    ),
    (_file({"__metadata__": {"a": 1}}), "x.safetensors: __metadata__ must map strings to strings"),
    (
        _file({"w": {"dtype": "F32", "shape": [2]}}),
        "x.safetensors: tensor 'w': entry must have exactly dtype, shape and data_offsets",
    ),
    (
        _file({"w": _entry(dtype="F7")}, bytes(8)),
        "x.safetensors: tensor 'w': unknown or unsupported dtype 'F7'",
    ),
    (
        _file({"w": _entry(shape=(-2,))}, bytes(8)),
        "x.safetensors: tensor 'w': shape must be a list of non-negative integers",
    ),
    (
        _file({"w": _entry(offsets=(8, 0))}, bytes(8)),
        "x.safetensors: tensor 'w': data_offsets must be [begin, end] with 0 <= begin <= end",
    ),
    (
        _file({"w": _entry(shape=(3,))}, bytes(8)),
        "x.safetensors: tensor 'w': shape [3] of F32 needs 12 bytes but data_offsets span 8",
    ),
    (
        _file({"w": _entry(offsets=(0, 8))}, bytes(4)),
        "x.safetensors: tensor 'w' ends at byte 8 of the data section,"
        " past its end at 4 (truncated file?)",
    ),
    (
        _file({"a": _entry(offsets=(0, 8)), "b": _entry(offsets=(4, 12))}, bytes(12)),
        "x.safetensors: tensors 'a' and 'b' overlap (data_offsets 4 < 8)",
    ),
    (
        _file({"a": _entry(offsets=(0, 8)), "b": _entry(offsets=(12, 20))}, bytes(20)),
        "x.safetensors: gap of 4 bytes after tensor 'a' (data_offsets must be contiguous)",
    ),
    (
        _file({"a": _entry(offsets=(4, 12))}, bytes(12)),
        "x.safetensors: gap of 4 bytes at the start of the data (data_offsets must be contiguous)",
    ),
    (
        _file({"a": _entry()}, bytes(10)),
        "x.safetensors: 2 bytes after the last tensor are not described by the header",
    ),
]


@pytest.mark.parametrize(
    ("raw", "message"), BAD_HEADERS, ids=[m.split(": ", 1)[1][:40] for _, m in BAD_HEADERS]
)
def test_rejects_malformed_headers(raw, message):
    with pytest.raises(CheckpointError) as excinfo:
        _read(raw)
    assert str(excinfo.value) == message


def test_encoded_header_is_valid_safetensors(tmp_path):
    tensors = {
        "x": torch.randn(3, 5, dtype=torch.float32),
        "y": torch.ones(7, dtype=torch.bfloat16),
    }
    prefix, spans = encode_header(
        ((name, {"x": "F32", "y": "BF16"}[name], tuple(t.shape)) for name, t in tensors.items()),
        {"format": "pt"},
    )
    assert len(prefix) % 8 == 0
    assert spans == {"x": (0, 60), "y": (60, 74)}
    data = b"".join(t.contiguous().view(torch.uint8).numpy().tobytes() for t in tensors.values())
    path = tmp_path / "out.safetensors"
    path.write_bytes(prefix + data)
    with safe_open(path, "pt") as f:
        assert f.metadata() == {"format": "pt"}
        for name, t in tensors.items():
            assert torch.equal(f.get_tensor(name), t)
    parsed = parse_header(prefix[8:], file_size=len(prefix) + len(data), where="out")
    assert [t.name for t in parsed.tensors] == ["x", "y"]


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('{"w":{"dtype":"F32"},"w":{}}', "w"),  # compact: the plain parse's counts see it
        ('{"__metadata__":{"k":"v","k":"v"}}', "k"),
        ('{"a":1,"a" :2}', "a"),  # a space before the colon: not counted, so the hook decides
        ('{"m":"x\\":","a":1,"a":2}', "a"),  # a quote in a string (escaped) offsets the count
        ('{"t":{"shape":[{"d":1,"d":2}]}}', "d"),  # an object below a tensor's entry
    ],
)
def test_loads_unique_refuses_every_repeated_key(text, key):
    with pytest.raises(DuplicateKeyError) as e:
        loads_unique(text)
    assert e.value.args == (key,)


@pytest.mark.parametrize("text", ['{"a":":x","b":"{"}', '{"a" :1,"m":"\\"q\\""}', "[1]"])
def test_loads_unique_parses_what_json_parses(text):
    assert loads_unique(text) == json.loads(text)
