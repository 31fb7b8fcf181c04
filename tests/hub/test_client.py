import errno
import os
import re
import time

import pytest
from huggingface_hub import constants, file_download
from huggingface_hub.utils import close_session, get_session
from huggingface_hub.utils._http import hf_request_event_hook

from paramdelta.errors import (
    HubError,
    LocalFileError,
    MissingRevisionError,
    NotFoundError,
    PublishConflictError,
    UsageError,
)
from paramdelta.hub import xet
from paramdelta.hub.client import Hub, reset_client
from paramdelta.hub.hf_internals import is_uploaded

DATA = bytes(range(256)) * 40


@pytest.fixture
def hub(fake_hub, hub_token):
    client = Hub(token=hub_token, endpoint=fake_hub.url)
    client.sleep = lambda seconds: None  # no real waiting between retries
    return client


@pytest.fixture
def fresh_client():
    """The client settings are read once per process: here, by the test's first Hub."""
    reset_client()
    yield
    reset_client()  # later tests read their own (and get no 0.2 s timeout)


@pytest.fixture
def short_timeout(monkeypatch, fresh_client):
    """Requests time out after 0.2 s; the client factory is huggingface_hub's again afterwards."""
    monkeypatch.setenv("PARAMDELTA_HUB_TIMEOUT", "0.2")


@pytest.fixture
def repo(fake_hub):
    fake_hub.create_repo("org/model")
    sha = fake_hub.commit("org/model", {"config.json": b'{"a": 1}', "w.bin": DATA})
    return sha


@pytest.fixture
def lfs_repo(fake_hub):
    """The same files, with w.bin a legacy LFS object: downloads of it go over HTTP."""
    fake_hub.create_repo("org/model")
    return fake_hub.commit("org/model", {"config.json": b'{"a": 1}', "w.bin": DATA}, xet=False)


def test_repo_files_resolves_to_the_commit_sha(hub, fake_hub, repo):
    files = hub.repo_files("org/model", "main")
    assert files.sha == repo == fake_hub.head("org/model")
    assert files.sizes["config.json"] == 8
    assert files.sizes["w.bin"] == 10240
    assert hub.repo_files("org/model", repo).sha == repo


@pytest.mark.parametrize(
    ("setup", "call", "message"),
    [
        (
            None,
            lambda h: h.repo_files("org/none"),
            "org/none@main: repository not found (or private, and the token cannot see it)",
        ),
        ("repo", lambda h: h.repo_files("org/model", "nope"), "org/model@nope: revision not found"),
        (
            "gated",
            lambda h: h.read_small_file("org/gated", "config.json", "main"),
            "org/gated@main/config.json: gated repository: accept its conditions on the Hub with the account of your token",
        ),
    ],
)
def test_errors_are_typed_one_liners(hub, fake_hub, repo, setup, call, message):
    if setup == "gated":
        fake_hub.create_repo("org/gated", gated=True)
        fake_hub.commit("org/gated", {"config.json": b"{}"})
    with pytest.raises(HubError) as e:
        call(hub)
    assert str(e.value) == message
    assert e.value.exit_code == 4


def test_what_does_not_exist_is_a_not_found_error_and_a_gated_repo_is_not(hub, fake_hub, repo):
    missing = [
        lambda: hub.repo_files("org/none"),
        lambda: hub.read("org/model", repo, "nope.bin", 0, 10),
    ]
    for call in missing:
        with pytest.raises(NotFoundError):
            call()
    # A revision that does not exist, in a repo that does: an error of its own.
    with pytest.raises(MissingRevisionError) as e:
        hub.repo_files("org/model", "nope")
    assert not isinstance(e.value, NotFoundError)
    fake_hub.create_repo("org/gated", gated=True)
    fake_hub.commit("org/gated", {"config.json": b"{}"})
    with pytest.raises(HubError) as e:
        hub.read_small_file("org/gated", "config.json", "main")
    assert not isinstance(e.value, NotFoundError)
    assert hub.find_repo_files("org/model", "nope") is None
    assert hub.find_repo_files("org/none", "main") is None


def test_missing_things_are_none_not_errors(hub, repo):
    assert hub.read_small_file("org/none", "x.json", "main") is None
    assert hub.read_small_file("org/model", "x.json", "main") is None
    assert hub.read_small_file("org/model", "config.json", "main") == b'{"a": 1}'


def test_a_small_file_is_read_no_further_than_its_limit(hub, fake_hub, repo):
    fake_hub.commit("org/model", {"paramdelta.json": b"x" * 100_000})
    assert len(hub.read_small_file("org/model", "paramdelta.json", "main")) == 100_000
    with pytest.raises(HubError, match=r"^org/model@main/paramdelta.json: larger than 1000 bytes$"):
        hub.read_small_file("org/model", "paramdelta.json", "main", limit=1000)


def test_read_into_reads_exact_ranges(hub, repo):
    view = memoryview(bytearray(1000))
    hub.read_into("org/model", repo, "w.bin", 5000, view)
    assert bytes(view) == DATA[5000:6000]
    assert hub.read("org/model", repo, "config.json", 1, 3) == b'"a"'


def test_transient_failures_are_retried(hub, fake_hub, repo):
    sleeps = []
    hub.sleep = sleeps.append
    fake_hub.faults.add(method="GET", path="/api/models/org/model", status=503, times=2)
    fake_hub.faults.add(
        method="GET", path="/api/models/org/model", status=429, headers={"Retry-After": "7"}
    )
    assert hub.repo_files("org/model").sha == repo
    assert sleeps == [1.0, 2.0, 8.0]  # Retry-After plus 1 s, as http_backoff waits


def test_a_transient_5xx_on_a_ranged_read_is_retried_once(hub, fake_hub, repo, monkeypatch):
    backoff_sleeps, bot_sleeps = [], []
    monkeypatch.setattr(time, "sleep", backoff_sleeps.append)  # http_backoff's waits
    hub.sleep = bot_sleeps.append
    fake_hub.faults.add(method="GET", path="w.bin", server="blobs", status=503)
    fake_hub.clear_requests()
    view = memoryview(bytearray(1000))
    hub.read_into("org/model", repo, "w.bin", 5000, view)
    assert bytes(view) == DATA[5000:6000]
    assert [(r.server, r.status) for r in fake_hub.requests] == [
        ("hub", 302),
        ("blobs", 503),
        ("hub", 302),
        ("blobs", 206),
    ]
    assert (backoff_sleeps, bot_sleeps) == ([1.0], [])  # one policy, one wait


def test_a_429_on_a_small_file_is_waited_out_by_huggingface_hub(hub, fake_hub, repo, monkeypatch):
    backoff_sleeps, bot_sleeps = [], []
    monkeypatch.setattr(time, "sleep", backoff_sleeps.append)  # http_stream_backoff's waits
    hub.sleep = bot_sleeps.append
    fake_hub.faults.add(path="config.json", status=429, headers={"Retry-After": "3"})
    assert hub.read_small_file("org/model", "config.json", "main") == b'{"a": 1}'
    assert (backoff_sleeps, bot_sleeps) == ([4.0], [])  # Retry-After plus 1 s, waited once


def test_dropped_connection_resumes_the_range(hub, fake_hub, repo):
    fake_hub.faults.add(method="GET", path="w.bin", server="blobs", drop=True)
    view = memoryview(bytearray(3000))
    hub.read_into("org/model", repo, "w.bin", 100, view)
    assert bytes(view) == DATA[100:3100]


def test_gives_up_after_the_retry_budget(hub, fake_hub, repo, monkeypatch):
    fake_hub.faults.add(method="GET", path="/api/models/org/model", status=502, times=10)
    with pytest.raises(HubError, match=r"^org/model@main: HTTP 502: "):
        hub.repo_files("org/model")


def test_timeouts_are_network_errors(fake_hub, hub_token, repo, short_timeout, monkeypatch):
    monkeypatch.setenv("PARAMDELTA_HUB_RETRIES", "1")
    hub = Hub(token=hub_token, endpoint=fake_hub.url)
    hub.sleep = lambda s: None
    fake_hub.faults.add(method="GET", path="/api/models/org/model", status=None, delay=1.0, times=2)
    with pytest.raises(HubError, match=r"^org/model@main: network error: ReadTimeout"):
        hub.repo_files("org/model")


def test_the_timeout_survives_a_session_reset(
    fake_hub, hub_token, repo, short_timeout, monkeypatch
):
    monkeypatch.setenv("PARAMDELTA_HUB_RETRIES", "0")
    hub = Hub(token=hub_token, endpoint=fake_hub.url)
    close_session()  # as huggingface_hub does after a connection error
    client = get_session()
    assert client.timeout.read == 0.2
    assert hf_request_event_hook in client.event_hooks["request"]  # the default's, kept
    # model_info sends timeout=None explicitly, overriding the client's: bounded all the same.
    fake_hub.faults.add(method="GET", path="/api/models/org/model", status=None, delay=1.0)
    with pytest.raises(HubError, match=r"^org/model@main: network error: ReadTimeout"):
        hub.repo_files("org/model")


@pytest.mark.parametrize(
    ("error", "where"),
    [
        (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), None),  # write() names no file
        (PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/cache/blob"), "/cache/blob"),
    ],
)
def test_a_local_file_failure_during_a_download_is_not_a_hub_error(
    hub, lfs_repo, tmp_path, monkeypatch, error, where
):
    def failing_http_get(*args, **kwargs):
        raise error

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(file_download, "http_get", failing_http_get)
    with pytest.raises(LocalFileError) as e:
        hub.download("org/model", lfs_repo, ["w.bin"])
    assert str(e.value) == f"{where or tmp_path / 'hf-cache'}: {error.strerror}"
    assert e.value.exit_code == 7


def test_an_unusable_cache_dir_is_a_local_file_error(hub, repo, tmp_path, monkeypatch):
    (tmp_path / "file").write_bytes(b"")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "file" / "hf-cache"))
    with pytest.raises(LocalFileError, match=f"^{re.escape(str(tmp_path / 'file'))}"):
        hub.download("org/model", repo, ["w.bin"])


def test_a_hub_failure_during_a_download_stays_a_hub_error(
    hub, fake_hub, lfs_repo, tmp_path, monkeypatch
):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    fake_hub.faults.add(method="GET", path="w.bin", server="blobs", status=500, times=10)
    with pytest.raises(HubError, match=r"^org/model@\w{7}: HTTP 500"):
        hub.download("org/model", lfs_repo, ["w.bin"])


def test_the_client_is_installed_once_per_process(fake_hub, hub_token, fresh_client, monkeypatch):
    monkeypatch.setenv("PARAMDELTA_HUB_TIMEOUT", "0.2")
    first = Hub(token=hub_token, endpoint=fake_hub.url)
    monkeypatch.setenv("PARAMDELTA_HUB_TIMEOUT", "30")
    monkeypatch.setenv("PARAMDELTA_HUB_MAX_RATE_WAIT", "5")
    second = Hub(endpoint=fake_hub.url)
    assert second.pacer is first.pacer  # one pacer: the quotas are the account's
    assert (second.timeout, second.max_rate_wait) == (0.2, 900.0)
    close_session()
    assert get_session().timeout.read == 0.2  # building the second Hub changed nothing


def test_bad_settings(monkeypatch, fresh_client):
    monkeypatch.setenv("PARAMDELTA_HUB_TIMEOUT", "soon")
    with pytest.raises(UsageError, match="PARAMDELTA_HUB_TIMEOUT='soon': expected a number"):
        Hub()


def test_newest_repo_of_a_family(hub, fake_hub):
    from datetime import datetime, timezone

    for name, day in [("Fam-1-7B", 1), ("Fam-2-7B", 3), ("Fam-2-70B", 5), ("Other-3-7B", 9)]:
        fake_hub.create_repo(f"fam/{name}", created_at=datetime(2026, 1, day, tzinfo=timezone.utc))
    repo_id, created = hub.newest_repo("fam", "Fam-*-7B")
    assert repo_id == "fam/Fam-2-7B" and created.day == 3
    assert hub.newest_repo("fam", "Nope-*") is None


def test_a_stale_parent_is_a_publish_conflict(hub, fake_hub, repo):
    from huggingface_hub import CommitOperationAdd

    fake_hub.commit("org/model", {"other.txt": b"someone else"})
    with pytest.raises(PublishConflictError) as e:
        hub.commit(
            "org/model",
            [CommitOperationAdd("x.txt", b"x")],
            message="m",
            description="",
            parent=repo,
            revision="main",
            create_pr=False,
        )
    assert str(e.value) == (
        f"output repo org/model changed during publish (main is no longer at {repo[:7]});"
        " nothing was committed; re-run to re-plan"
    )
    assert "x.txt" not in fake_hub.list_files("org/model")


def test_create_repo_says_whether_it_created_it_and_delete_repo_removes_it(hub, fake_hub, repo):
    assert hub.create_repo("org/new", private=True) is True
    assert fake_hub.store.get("org/new").private
    assert hub.create_repo("org/new", private=True) is False  # there already
    assert hub.create_repo("org/model", private=False) is False
    assert fake_hub.head("org/model") == repo
    hub.delete_repo("org/new")
    assert not fake_hub.repo_exists("org/new")
    hub.delete_repo("org/new")  # gone already: not an error
    assert fake_hub.repo_exists("org/model")


def test_a_token_that_may_not_create_repos_still_finds_its_own(hub, fake_hub, repo):
    """Trusted publishing: a token for one existing repo may not create any (403)."""
    fake_hub.faults.add(method="POST", path="/api/repos/create$", status=403, times=4)
    assert hub.create_repo("org/model", private=False) is False
    with pytest.raises(HubError, match=r"^org/other: HTTP 403"):
        hub.create_repo("org/other", private=False)


def test_unauthorised_writes(fake_hub, repo):
    hub = Hub(token="hf_wrong_token_value", endpoint=fake_hub.url)
    with pytest.raises(HubError) as e:
        hub.create_repo("org/new", private=False)
    assert str(e.value) == "org/new: HTTP 401: not authorised (check HF_TOKEN or --token-file)"
    assert "hf_wrong_token_value" not in repr(hub)


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (ConnectionError("Network error: connection reset by peer"), True),
        (ConnectionError("Rate limited: 429 Too Many Requests"), True),
        (ConnectionError("Server error: 503"), True),
        (TimeoutError("Timeout: no answer in 60 s"), True),
        (RuntimeError("Task error: Network error: broken pipe"), True),
        (RuntimeError("Data integrity error: hash mismatch"), False),
        (RuntimeError("Internal error: lock poisoned"), False),
        (PermissionError("Authentication error: token refresh failed"), False),
        (FileNotFoundError("Not found: xorb abc"), False),
    ],
)
def test_xet_failures_are_classified(error, transient):
    assert xet.is_xet_failure(error)
    assert xet.is_transient(error) is transient
    assert xet.describe(error).startswith(
        "Xet storage failed (transient, retried)"
        if transient
        else "Xet storage failed (not retried)"
    )


@pytest.mark.parametrize(
    ("message", "local"),
    [
        ("I/O error: No space left on device", "I/O error: No space left on device"),
        (  # a full disk under hf_xet's cache database: an "Internal error" of another kind
            "Internal error: Global shard dedup database error: Storage(Io(Os { code: 27,"
            ' kind: FileTooLarge, message: "File too large" }))',
            "File too large",
        ),
        (  # ... and once that database has failed a write, every later one
            "Internal error: Global shard dedup database error: Storage(PreviousIo)",
            "a write to the local disk failed (is it full?)",
        ),
        ('Internal error: Io(Os { code: 111, kind: ConnectionRefused, message: "no" })', None),
        ("Internal error: lock poisoned", None),
    ],
)
def test_a_xet_failure_of_the_local_disk_is_told_apart(message, local):
    assert xet.local_failure(RuntimeError(message)) == local
    assert not xet.is_xet_failure(RuntimeError("something else entirely"))


def test_a_broken_xet_stream_resumes_and_a_final_failure_is_a_one_liner(
    hub, fake_hub, repo, monkeypatch
):
    reader = hub.xet_reader("org/model", repo)
    assert reader.has("w.bin") and not reader.has("config.json")
    real = xet.XetReader.read_into
    failures = [ConnectionError("Network error: reset")]

    def flaky(self, path, size, offset, view):
        if failures:
            real(self, path, size, offset, view[:100])  # some bytes arrive, then it breaks
            raise failures.pop()
        return real(self, path, size, offset, view)

    monkeypatch.setattr(xet.XetReader, "read_into", flaky)
    buf = bytearray(5000)
    hub.read_xet(reader, "w.bin", len(DATA), 17, memoryview(buf))
    assert bytes(buf) == DATA[17:5017]

    def corrupt(self, *args):
        raise RuntimeError("Data integrity error: chunk hash mismatch")

    monkeypatch.setattr(xet.XetReader, "read_into", corrupt)
    with pytest.raises(HubError) as e:
        hub.read_xet(reader, "w.bin", len(DATA), 0, memoryview(buf))
    assert str(e.value) == (
        f"org/model@{repo[:7]}/w.bin: Xet storage failed (not retried):"
        " Data integrity error: chunk hash mismatch"
    )


def test_xet_upload_failures_are_retried_or_typed(hub, fake_hub, repo, monkeypatch):
    from huggingface_hub import CommitOperationAdd, HfApi

    real = HfApi.preupload_lfs_files
    failures = [RuntimeError("Task error: Network error: timed out")]

    def flaky(self, *args, **kwargs):
        if failures:
            raise failures.pop()
        return real(self, *args, **kwargs)

    monkeypatch.setattr(HfApi, "preupload_lfs_files", flaky)
    op = CommitOperationAdd("x.safetensors", DATA)
    hub.preupload("org/model", [op], revision="main", create_pr=False)
    assert is_uploaded(op)
    failures.append(RuntimeError("Internal error: the runtime is gone"))
    failures.append(RuntimeError("Internal error: the runtime is gone"))
    with pytest.raises(HubError, match=r"^org/model: Xet storage failed \(not retried\): Internal"):
        hub.preupload(
            "org/model",
            [CommitOperationAdd("y.safetensors", DATA)],
            revision="main",
            create_pr=False,
        )
    assert len(failures) == 1  # not retried
    failures.clear()
    failures.append(OSError("I/O error: No space left on device"))
    with pytest.raises(LocalFileError, match="No space left on device"):
        hub.preupload(
            "org/model",
            [CommitOperationAdd("z.safetensors", DATA)],
            revision="main",
            create_pr=False,
        )
