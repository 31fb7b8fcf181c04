"""hf_xet's failures and download streams (the Hub client's retries of them: tests/hub/test_client.py)."""

import errno

import pytest

from paramdelta.hub import xet
from paramdelta.hub.client import Hub

DATA = bytes(range(251)) * 97  # 24347 bytes, no period of a power of two
REPO = "org/xet-model"


class XetStorageError(Exception):
    """What hf_xet's own exception classes look like by name."""


def test_hf_xets_exceptions_are_known_by_module_or_name():
    foreign = type("Error", (Exception,), {"__module__": "hf_xet"})
    assert xet.is_xet_failure(foreign("anything at all"))
    assert xet.is_xet_failure(XetStorageError("anything at all"))
    assert not xet.is_xet_failure(ValueError("anything at all"))


@pytest.mark.parametrize(
    "prefix",
    [
        "Configuration error",
        "I/O error",
        "Previous task error",
        "Operation cancelled",
        "User cancelled",
        "Already completed",
        "Invalid task ID",
        "Wrong runtime mode",
    ],
)
def test_every_final_kind_is_a_xet_failure_not_retried(prefix):
    error = RuntimeError(f"{prefix}: details")
    assert xet.is_xet_failure(error) and not xet.is_transient(error)


@pytest.mark.parametrize(
    ("message", "transient"),
    [
        ("Previous task error: Timeout: no answer", True),
        ("Task error: Rate limited: 429", True),
        ("Task error: Data integrity error: hash mismatch", False),
        ("Task error: Task error: Network error: reset", False),  # one level of nesting only
        ("Network error:no space after the colon", False),
        ("network error: lower case", False),
    ],
)
def test_a_nested_kind_decides_whether_it_is_retried(message, transient):
    assert xet.is_transient(RuntimeError(message)) is transient


def test_a_kind_named_inside_the_message_is_not_one():
    error = ValueError("could not parse 'Network error: x' from the config")
    assert not xet.is_xet_failure(error) and not xet.is_transient(error)


def test_describe_is_one_line_of_at_most_300_characters_of_the_message():
    error = RuntimeError("Server error: 503\n  at xet_client::cas\n\tat tokio::runtime  ")
    assert xet.describe(error) == (
        "Xet storage failed (transient, retried): Server error: 503 at xet_client::cas"
        " at tokio::runtime"
    )
    long = RuntimeError("Not found: " + "x" * 400)
    assert xet.describe(long) == "Xet storage failed (not retried): Not found: " + "x" * 289
    assert xet.describe(RuntimeError("")) == "Xet storage failed (not retried): "


@pytest.mark.parametrize(
    "code",
    [errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO],
)
def test_an_os_error_of_the_local_disk_inside_another_kind_is_local(code):
    message = f'Internal error: Storage(Io(Os {{ code: {code}, kind: Other, message: "m{code}" }}))'
    assert xet.local_failure(RuntimeError(message)) == f"m{code}"


@pytest.mark.parametrize("code", [errno.ENOENT, errno.ECONNRESET, errno.ETIMEDOUT])
def test_other_os_errors_are_not_the_local_disks(code):
    message = f'Network error: Io(Os {{ code: {code}, kind: Other, message: "m" }})'
    assert xet.local_failure(RuntimeError(message)) is None


@pytest.fixture
def xet_repo(fake_hub):
    fake_hub.create_repo(REPO)
    sha = fake_hub.commit(REPO, {"config.json": b"{}", "w.safetensors": DATA})
    assert fake_hub.xet_hash(REPO, "w.safetensors")  # stored in Xet, as weights are
    return sha


@pytest.fixture
def reader(fake_hub, hub_token, xet_repo):
    made = Hub(token=hub_token, endpoint=fake_hub.url).xet_reader(REPO, xet_repo)
    yield made
    made.close()  # hf_xet's local CAS stays locked while a stream group is open


def test_a_reader_knows_the_revisions_xet_files(reader, fake_hub, xet_repo):
    assert reader.label == f"{REPO}@{xet_repo[:7]}"
    assert reader.xet_hashes == {"w.safetensors": fake_hub.xet_hash(REPO, "w.safetensors")}
    assert reader.has("w.safetensors") and not reader.has("config.json")
    assert reader.refresh_route == f"{fake_hub.url}/api/models/{REPO}/xet-read-token/{xet_repo}"
    assert fake_hub.xet_token_requests("read", REPO) == 0  # no token until a read


def test_a_range_is_read_from_a_download_stream(reader, fake_hub):
    view = memoryview(bytearray(5000))
    assert reader.read_into("w.safetensors", len(DATA), 1234, view) == 5000
    assert bytes(view) == DATA[1234:6234]
    tail = memoryview(bytearray(100))
    assert reader.read_into("w.safetensors", len(DATA), len(DATA) - 100, tail) == 100
    assert bytes(tail) == DATA[-100:]
    # One read token, one stream group, for both reads; and no /resolve/ request.
    assert fake_hub.xet_token_requests("read", REPO) == 1
    assert not [r for r in fake_hub.requests if "/resolve/" in r.path]


def test_a_renewed_token_opens_a_new_stream_group(reader, fake_hub, monkeypatch):
    # Tokens that expire within huggingface_hub's safety margin are fetched anew every time.
    monkeypatch.setattr(fake_hub, "xet_token_lifetime", 30.0)
    view = memoryview(bytearray(10))
    reader.read_into("w.safetensors", len(DATA), 0, view)
    first, token = reader._group, reader._token
    reader.read_into("w.safetensors", len(DATA), 10, view)
    assert bytes(view) == DATA[10:20]
    assert reader._token != token and reader._group is not first
    assert fake_hub.xet_token_requests("read", REPO) == 2
    reader.close()
    assert reader._group is None
    reader.read_into("w.safetensors", len(DATA), 20, view)  # a closed reader opens a new one
    assert bytes(view) == DATA[20:30]
