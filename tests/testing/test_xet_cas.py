"""The local CAS reader: what hf_xet wrote, read back byte for byte without hf_xet."""

from __future__ import annotations

import hashlib
import time

import hf_xet
import pytest
import torch

from paramdelta.testing._xet_cas import XetCas, _regroup


@pytest.fixture
def cas(tmp_path) -> XetCas:
    return XetCas(tmp_path / "cas")


def contents() -> dict[str, bytes]:
    """Data that hf_xet stores uncompressed, LZ4 and byte-grouped LZ4 (float tensors)."""
    torch.manual_seed(0)
    return {
        "random": torch.randint(0, 256, (300_000,), dtype=torch.uint8).numpy().tobytes(),
        "text": b"the same line, again and again\n" * 20_000,
        "fp32": (torch.randn(200_000) * 0.01).numpy().tobytes(),
        "odd": bytes(range(256)) * 1001 + b"xyz",
        "empty-ish": b"x",
    }


def test_files_read_back_exactly_with_their_hashes_and_any_range(cas, tmp_path):
    data = contents()
    (tmp_path / "file.bin").write_bytes(data["odd"])
    files = cas.upload([*data.values(), tmp_path / "file.bin"])
    for (name, content), file in zip([*data.items(), ("path", data["odd"])], files, strict=True):
        assert file.sha256 == hashlib.sha256(content).hexdigest(), name
        assert file.size == len(content)
        assert cas.by_sha256(file.sha256).xet_hash == file.xet_hash
        assert b"".join(cas.read(file)) == content, name
        n = len(content)
        for start, end in [(0, 1), (n // 3, 2 * n // 3), (n - 1, n), (7, n + 100), (n, n)]:
            assert b"".join(cas.read(file, start, end)) == content[start:end], (name, start)
    schemes = {c.scheme for chunks in cas._chunks.values() for c in chunks}
    assert schemes == {0, 1, 2}  # every chunk encoding was met


def test_hashes_match_what_hf_xet_downloads(cas):
    [file] = cas.upload([contents()["fp32"]])
    group = hf_xet.XetSession().new_download_stream_group(
        endpoint=cas.url, token="t", token_expiry_unix_secs=int(time.time()) + 60
    )
    streamed = b"".join(group.download_stream(hf_xet.XetFileInfo(file.xet_hash, file.size)))
    assert streamed == b"".join(cas.read(file))


def test_unknown_content_is_not_found(cas):
    assert cas.by_sha256("0" * 64) is None and cas.file("1" * 64) is None


def test_regroup_inverts_four_byte_grouping():
    for n in range(9):
        data = bytes(range(n))
        grouped = b"".join(data[k::4] for k in range(4))
        assert _regroup(grouped) == data
