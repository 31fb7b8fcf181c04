"""The fake Hub, driven by the real huggingface_hub client."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from http.client import HTTPConnection, HTTPMessage
from pathlib import Path

import huggingface_hub.constants
import huggingface_hub.utils._auth
import pytest
import torch
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, get_token
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import GitRefInfo, RepoFile, RepoFolder
from safetensors.torch import save_file

from paramdelta.testing.hub import FakeHub, HubError, PullRequest

REPO = "org/model"
README = (
    b"---\nlicense: apache-2.0\nbase_model: org/base\ntags:\n- merge\n- 'paramdelta'\n---\n# M\n"
)
CONFIG = b'{"model_type": "llama"}'


def git_oid(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()  # noqa: S324 - git's


def sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def pointer(content: bytes) -> bytes:
    """The git-lfs pointer file that stands for `content` in git."""
    spec = "version https://git-lfs.github.com/spec/v1"
    return f"{spec}\noid sha256:{sha256(content)}\nsize {len(content)}\n".encode()


def http(
    url: str, *, method: str = "GET", headers: dict[str, str] | None = None, data: bytes = b""
) -> tuple[int, HTTPMessage, bytes]:
    """(status, headers, body) of one plain urllib request, errors included."""
    # S310: these URLs are the fake Hub's own http:// ones.
    request = urllib.request.Request(url, data or None, headers or {}, method=method)  # noqa: S310
    try:
        with urllib.request.urlopen(request) as response:  # noqa: S310
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def calls(hub: FakeHub) -> list[tuple[str, str, str, int]]:
    return [(r.server, r.method, r.path, r.status) for r in hub.requests]


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    """A real safetensors file of about 256 KiB: bigger than the client's 100 kB header read."""
    path = tmp_path / "src" / "model.safetensors"
    path.parent.mkdir()
    tensors = {
        "a": torch.arange(256 * 256, dtype=torch.float32).reshape(256, 256),
        "b": torch.ones(3, dtype=torch.bfloat16),
    }
    save_file(tensors, path, metadata={"format": "pt"})
    return path


@pytest.fixture
def seeded(fake_hub: FakeHub, weights: Path) -> str:
    """REPO with a README, a config and LFS weights; returns main's sha."""
    fake_hub.create_repo(REPO, created_at=datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc))
    files = {"README.md": README, "config.json": CONFIG, "model.safetensors": weights}
    return fake_hub.commit(REPO, files, message="Add model")


@pytest.fixture
def legacy_lfs(monkeypatch: pytest.MonkeyPatch) -> None:
    """huggingface_hub as with HF_HUB_DISABLE_XET=1: the legacy LFS protocol, both ways."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)


@pytest.fixture
def seeded_lfs(fake_hub: FakeHub, weights: Path) -> str:
    """REPO as `seeded`, but its weights are a legacy LFS object (a repo from before Xet)."""
    fake_hub.create_repo(REPO)
    files = {"config.json": CONFIG, "model.safetensors": weights}
    return fake_hub.commit(REPO, files, message="Add model", xet=False)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The client's backoff sleeps, recorded instead of slept."""
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    return slept


def test_model_info_reports_files_card_and_dates(fake_hub, hf_api, seeded, weights):
    content = weights.read_bytes()
    info = hf_api.model_info(REPO, files_metadata=True)
    assert info.sha == seeded == fake_hub.head(REPO)
    assert info.created_at == datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert abs(info.last_modified - fake_hub.commits(REPO)[0].date) < timedelta(milliseconds=1)
    assert (info.author, info.private, info.gated) == ("org", False, False)
    assert info.card_data.license == "apache-2.0"
    assert info.card_data.base_model == "org/base"
    assert info.card_data.tags == ["merge", "paramdelta"]
    siblings = {s.rfilename: s for s in info.siblings}
    assert sorted(siblings) == [".gitattributes", "README.md", "config.json", "model.safetensors"]
    assert (siblings["config.json"].size, siblings["config.json"].lfs) == (len(CONFIG), None)
    assert siblings["config.json"].blob_id == git_oid(CONFIG)
    lfs = siblings["model.safetensors"].lfs
    assert (lfs.sha256, lfs.size) == (sha256(content), len(content))
    assert (siblings["model.safetensors"].blob_id, lfs.pointer_size) == (
        git_oid(pointer(content)),
        len(pointer(content)),
    )

    expanded = hf_api.model_info(REPO, expand=["sha"])
    assert (expanded.sha, expanded.siblings, expanded.created_at) == (seeded, None, None)
    first = fake_hub.commits(REPO)[1].oid
    assert hf_api.model_info(REPO, revision=first).sha == first


def test_downloads_go_direct_for_regular_files_and_through_xet_for_large_ones(
    fake_hub, hf_api, seeded, weights, tmp_path
):
    fake_hub.clear_requests()
    config = hf_api.hf_hub_download(REPO, "config.json", cache_dir=tmp_path / "c")
    assert Path(config).read_bytes() == CONFIG
    assert Path(config).parent.name == seeded
    model = hf_api.hf_hub_download(REPO, "model.safetensors", cache_dir=tmp_path / "c")
    size = weights.stat().st_size
    assert Path(model).read_bytes() == weights.read_bytes()
    assert calls(fake_hub) == [
        ("hub", "HEAD", f"/{REPO}/resolve/main/config.json", 200),
        ("hub", "GET", f"/{REPO}/resolve/main/config.json", 200),
        ("hub", "HEAD", f"/{REPO}/resolve/main/model.safetensors", 302),
        ("hub", "GET", f"/api/models/{REPO}/xet-read-token/{seeded}", 200),
    ]
    assert fake_hub.weight_bytes_served() == 0  # hf_xet read the CAS, not the blob server
    assert fake_hub.xet_token_requests("read", REPO) == 1

    xet_hash = fake_hub.xet_hash(REPO, "model.safetensors")
    meta = hf_api.get_hf_file_metadata(url=f"{fake_hub.url}/{REPO}/resolve/main/model.safetensors")
    assert (meta.commit_hash, meta.etag, meta.size) == (seeded, sha256(weights.read_bytes()), size)
    assert meta.location == f"{fake_hub.blob_url}/xet/{xet_hash}/model.safetensors"
    assert meta.xet_file_data.file_hash == xet_hash
    token_url = f"{fake_hub.url}/api/models/{REPO}/xet-read-token/{seeded}"
    assert meta.xet_file_data.refresh_route == token_url


def test_legacy_lfs_downloads_go_through_the_blob_server(
    fake_hub, hf_api, seeded_lfs, weights, tmp_path, legacy_lfs
):
    fake_hub.clear_requests()
    model = hf_api.hf_hub_download(REPO, "model.safetensors", cache_dir=tmp_path / "c")
    assert Path(model).read_bytes() == weights.read_bytes()
    blob_path = f"/lfs/{sha256(weights.read_bytes())}/model.safetensors"
    assert calls(fake_hub) == [
        ("hub", "HEAD", f"/{REPO}/resolve/main/model.safetensors", 302),
        ("blobs", "GET", blob_path, 200),
    ]
    assert [r.auth for r in fake_hub.requests] == [True, False]
    assert fake_hub.weight_bytes_served() == fake_hub.requests[-1].sent == weights.stat().st_size
    assert fake_hub.xet_hash(REPO, "model.safetensors") is None


def test_xet_backed_files_still_serve_http_ranges_without_xet(
    fake_hub, hf_api, seeded, weights, tmp_path, legacy_lfs
):
    """With Xet off the client follows the redirect: the CDN reassembles the file."""
    model = hf_api.hf_hub_download(REPO, "model.safetensors", cache_dir=tmp_path / "c")
    assert Path(model).read_bytes() == weights.read_bytes()
    assert fake_hub.weight_bytes_served() == weights.stat().st_size
    assert fake_hub.xet_token_requests() == 0


def test_snapshot_download_gets_every_file_of_a_revision(
    fake_hub, hf_api, seeded, weights, tmp_path
):
    old = fake_hub.commits(REPO)[1].oid
    fake_hub.commit(REPO, {"config.json": b"{}"}, delete=["README.md"])
    folder = Path(hf_api.snapshot_download(REPO, revision=seeded, cache_dir=tmp_path / "c"))
    assert sorted(p.name for p in folder.iterdir()) == [
        ".gitattributes",
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    assert (folder / "model.safetensors").read_bytes() == weights.read_bytes()
    assert (folder / "config.json").read_bytes() == CONFIG
    latest = Path(hf_api.snapshot_download(REPO, cache_dir=tmp_path / "c"))
    assert (latest / "config.json").read_bytes() == b"{}"
    assert not (latest / "README.md").exists()
    initial = Path(hf_api.snapshot_download(REPO, revision=old, cache_dir=tmp_path / "c"))
    assert [p.name for p in initial.iterdir()] == [".gitattributes"]


def test_safetensors_metadata_reads_only_the_header_range(fake_hub, hf_api, seeded):
    fake_hub.clear_requests()
    meta = hf_api.get_safetensors_metadata(REPO)
    tensors = meta.files_metadata["model.safetensors"].tensors
    assert (tensors["a"].dtype, tensors["a"].shape) == ("F32", [256, 256])
    assert (tensors["b"].dtype, tensors["b"].shape) == ("BF16", [3])
    ranged = [(r.server, r.path, r.range, r.status, r.sent) for r in fake_hub.requests if r.range]
    xet_hash = fake_hub.xet_hash(REPO, "model.safetensors")
    assert ranged == [
        ("hub", f"/{REPO}/resolve/main/model.safetensors", "bytes=0-100000", 302, 0),
        ("blobs", f"/xet/{xet_hash}/model.safetensors", "bytes=0-100000", 206, 100_001),
    ]
    assert fake_hub.weight_bytes_served() == 100_001


def test_byte_ranges_on_both_servers(fake_hub, hf_api, seeded, weights):
    data = weights.read_bytes()
    url = f"{fake_hub.url}/{REPO}/resolve/main/model.safetensors"
    blob = hf_api.get_hf_file_metadata(url=url).location
    n = len(data)
    cases = {
        "bytes=10-19": (206, f"bytes 10-19/{n}", data[10:20]),
        f"bytes={n - 8}-": (206, f"bytes {n - 8}-{n - 1}/{n}", data[-8:]),
        "bytes=-5": (206, f"bytes {n - 5}-{n - 1}/{n}", data[-5:]),
        f"bytes=0-{n + 100}": (206, f"bytes 0-{n - 1}/{n}", data),
        "bytes=9-3": (200, None, data),  # invalid: ignored, as RFC 9110 allows
    }
    for spec, (status, content_range, body) in cases.items():
        got = http(blob, headers={"Range": spec})
        assert (got[0], got[1]["Content-Range"], got[2]) == (status, content_range, body), spec
    status, headers, _ = http(blob, headers={"Range": f"bytes={n}-"})
    assert (status, headers["Content-Range"]) == (416, f"bytes */{n}")
    regular = f"{fake_hub.url}/{REPO}/resolve/main/config.json"
    status, headers, body = http(regular, headers={"Range": "bytes=2-6"})
    assert (status, headers["Content-Range"], body) == (
        206,
        f"bytes 2-6/{len(CONFIG)}",
        CONFIG[2:7],
    )
    assert headers["ETag"] == f'"{git_oid(CONFIG)}"'


def test_upload_folder_sends_large_files_through_xet_and_skips_unchanged_ones(
    fake_hub, hf_api, weights, tmp_path
):
    folder = weights.parent
    (folder / "config.json").write_bytes(CONFIG)
    (folder / "README.md").write_bytes(README)
    assert hf_api.create_repo(REPO).repo_id == REPO
    fake_hub.clear_requests()
    info = hf_api.upload_folder(repo_id=REPO, folder_path=folder, commit_message="Upload model")
    head = fake_hub.commits(REPO)[0]
    assert info.oid == head.oid == fake_hub.head(REPO)
    assert (head.title, head.changed) == (
        "Upload model",
        ("README.md", "config.json", "model.safetensors"),
    )
    assert fake_hub.read_file(REPO, "model.safetensors") == weights.read_bytes()
    assert calls(fake_hub) == [
        ("hub", "POST", "/api/validate-yaml", 200),
        ("hub", "POST", f"/api/models/{REPO}/preupload/main", 200),
        ("hub", "GET", f"/api/models/{REPO}/xet-write-token/main", 200),
        ("hub", "POST", f"/api/models/{REPO}/commit/main", 200),
    ]
    assert (fake_hub.xet_uploads, fake_hub.lfs_uploads, fake_hub.lfs_bytes_uploaded) == (1, 0, 0)
    [entry] = [e for e in hf_api.list_repo_tree(REPO) if e.path == "model.safetensors"]
    assert entry.xet_hash == fake_hub.xet_hash(REPO, "model.safetensors")
    assert entry.lfs.sha256 == sha256(weights.read_bytes())

    again = hf_api.upload_folder(repo_id=REPO, folder_path=folder, commit_message="Again")
    assert again.oid == head.oid  # nothing changed: the client skips the commit
    copy = hf_api.upload_file(
        path_or_fileobj=weights, path_in_repo="copy.safetensors", repo_id=REPO
    )
    assert fake_hub.head(REPO) == copy.oid != head.oid
    assert fake_hub.read_file(REPO, "copy.safetensors") == weights.read_bytes()
    assert fake_hub.xet_uploads == 1  # the same content: already in the repo's storage


def test_legacy_lfs_uploads_go_to_the_blob_server_once(
    fake_hub, hf_api, weights, tmp_path, legacy_lfs
):
    folder = weights.parent
    (folder / "config.json").write_bytes(CONFIG)
    assert hf_api.create_repo(REPO).repo_id == REPO
    fake_hub.clear_requests()
    info = hf_api.upload_folder(repo_id=REPO, folder_path=folder, commit_message="Upload model")
    assert info.commit_url == f"{fake_hub.url}/{REPO}/commit/{info.oid}"
    assert fake_hub.read_file(REPO, "model.safetensors") == weights.read_bytes()
    oid = sha256(weights.read_bytes())
    assert calls(fake_hub) == [
        ("hub", "POST", f"/api/models/{REPO}/preupload/main", 200),
        ("hub", "POST", f"/{REPO}.git/info/lfs/objects/batch", 200),
        ("blobs", "PUT", f"/upload/{REPO}/{oid}", 200),
        ("hub", "POST", f"/{REPO}.git/info/lfs/objects/verify", 200),
        ("hub", "POST", f"/api/models/{REPO}/commit/main", 200),
    ]
    assert fake_hub.lfs_bytes_uploaded == weights.stat().st_size
    assert (fake_hub.lfs_uploads, fake_hub.xet_uploads) == (1, 0)
    copy = hf_api.upload_file(
        path_or_fileobj=weights, path_in_repo="copy.safetensors", repo_id=REPO
    )
    assert fake_hub.lfs_uploads == 1  # the batch API knew the object: no second PUT
    assert fake_hub.head(REPO) == copy.oid != info.oid
    assert fake_hub.read_file(REPO, "copy.safetensors") == weights.read_bytes()


def test_blob_uploads_take_chunked_bodies_and_must_match_their_sha256(fake_hub):
    fake_hub.create_repo(REPO)
    host, port = fake_hub.blob_url.removeprefix("http://").split(":")
    connection = HTTPConnection(host, int(port))

    def put(oid: str) -> int:
        connection.request(
            "PUT", f"/upload/{REPO}/{oid}", iter([b"ab", b"cd"]), encode_chunked=True
        )
        response = connection.getresponse()
        response.read()
        return response.status

    assert (put(sha256(b"abcd")), put(sha256(b"abce")), put("not-a-sha")) == (200, 400, 400)
    connection.close()
    # Rejected bodies are still read to their end: the keep-alive connection stays usable.
    assert [r.received for r in fake_hub.requests] == [4, 4, 4]
    assert fake_hub.lfs_uploads == 1
    assert fake_hub.store.get(REPO).lfs == {sha256(b"abcd")}


def test_create_commit_with_preuploaded_lfs_files_and_deletions(fake_hub, hf_api, weights):
    fake_hub.create_repo(REPO)
    initial = fake_hub.head(REPO)
    ops = [
        CommitOperationAdd("w/model.safetensors", weights),
        CommitOperationAdd("w/notes.txt", b"notes"),
    ]
    hf_api.preupload_lfs_files(REPO, additions=ops)
    assert (fake_hub.xet_uploads, fake_hub.head(REPO)) == (0, initial)
    info = hf_api.create_commit(REPO, ops, commit_message="Add weights", commit_description="Why")
    assert (fake_hub.xet_uploads, fake_hub.lfs_uploads) == (1, 0)
    assert fake_hub.read_file(REPO, "w/model.safetensors") == weights.read_bytes()
    assert fake_hub.list_files(REPO) == [".gitattributes", "w/model.safetensors", "w/notes.txt"]
    [latest, *_] = hf_api.list_repo_commits(REPO)
    assert (latest.commit_id, latest.title, latest.message) == (info.oid, "Add weights", "Why")

    with pytest.raises(RemoteEntryNotFoundError):
        hf_api.create_commit(REPO, [CommitOperationDelete("nope.txt")], commit_message="Delete")
    assert fake_hub.head(REPO) == info.oid
    delete = [CommitOperationDelete("w/", is_folder=True)]
    hf_api.create_commit(REPO, delete, commit_message="Delete w")
    assert fake_hub.list_files(REPO) == [".gitattributes"]
    assert fake_hub.commits(REPO)[0].changed == ("w/model.safetensors", "w/notes.txt")


def test_refs_commits_and_tree_with_pagination(fake_hub, hf_api, monkeypatch):
    fake_hub.create_repo(REPO)
    first = fake_hub.commit(REPO, {"a.txt": b"a", "dir/b.txt": b"b"}, message="First\n\nBody")
    fake_hub.create_tag(REPO, "v1")
    main = fake_hub.commit(REPO, {"dir/sub/c.bin": b"\0" * 10})
    pr = hf_api.create_commit(
        REPO, [CommitOperationAdd("d.txt", b"d")], commit_message="Propose", create_pr=True
    )
    refs = hf_api.list_repo_refs(REPO, include_pull_requests=True)
    assert refs.branches == [GitRefInfo("main", "refs/heads/main", main)]
    assert refs.tags == [GitRefInfo("v1", "refs/tags/v1", first)]
    assert refs.converts == []
    assert refs.pull_requests == [GitRefInfo("1", "refs/pr/1", pr.oid)]
    assert hf_api.list_repo_refs(REPO).pull_requests is None

    monkeypatch.setattr(fake_hub, "page_size", 2)
    fake_hub.clear_requests()
    commits = hf_api.list_repo_commits(REPO)
    assert [c.commit_id for c in commits] == [c.oid for c in fake_hub.commits(REPO)]
    assert [c.title for c in commits] == ["Update files", "First", "initial commit"]
    assert (commits[1].message, commits[1].authors) == ("Body", ["fake-hub-user"])
    assert [r.query.get("p") for r in fake_hub.requests] == [None, "1"]

    tree = list(hf_api.list_repo_tree(REPO, recursive=True))
    assert [(type(e), e.path) for e in tree] == [
        (RepoFile, ".gitattributes"),
        (RepoFile, "a.txt"),
        (RepoFolder, "dir"),
        (RepoFile, "dir/b.txt"),
        (RepoFolder, "dir/sub"),
        (RepoFile, "dir/sub/c.bin"),
    ]
    lfs_file, zeros = tree[-1], b"\0" * 10
    assert (lfs_file.size, lfs_file.blob_id) == (10, git_oid(pointer(zeros)))
    assert (lfs_file.lfs.sha256, lfs_file.lfs.pointer_size) == (sha256(zeros), len(pointer(zeros)))
    assert (tree[1].blob_id, tree[1].lfs) == (git_oid(b"a"), None)
    assert [e.path for e in hf_api.list_repo_tree(REPO, "dir")] == ["dir/b.txt", "dir/sub"]
    assert [e.path for e in hf_api.list_repo_tree(REPO, revision="v1")] == [
        ".gitattributes",
        "a.txt",
        "dir",
    ]
    with pytest.raises(RemoteEntryNotFoundError):
        list(hf_api.list_repo_tree(REPO, "missing"))


def test_list_models_filters_sorts_limits_and_paginates(fake_hub, hf_api, hub_token, monkeypatch):
    for repo_id, year, private in [
        ("org/alpha", 2020, False),
        ("org/beta-fam", 2022, False),
        ("org/gamma-Fam", 2021, False),
        ("other/fam", 2023, False),
        ("org/secret-fam", 2024, True),
    ]:
        created = datetime(year, 1, 1, tzinfo=timezone.utc)
        fake_hub.create_repo(repo_id, private=private, created_at=created)

    def ids(api: HfApi = hf_api, **kwargs) -> list[str]:
        return [m.id for m in api.list_models(**kwargs)]

    by_age = ["org/secret-fam", "org/beta-fam", "org/gamma-Fam", "org/alpha"]
    assert ids(author="org", sort="created_at") == by_age
    fake_hub.clear_requests()
    assert ids(author="org", search="FAM", sort="created_at", limit=2) == by_age[:2]
    query = {"author": "org", "search": "FAM", "sort": "createdAt", "limit": "2"}
    assert fake_hub.requests[0].query == query
    anonymous = HfApi(endpoint=fake_hub.url, token=False)
    assert ids(anonymous, search="fam") == ["org/beta-fam", "org/gamma-Fam", "other/fam"]

    fake_hub.commit("org/alpha", {"x": b"x"})
    assert ids(author="org", sort="last_modified")[0] == "org/alpha"
    [model] = hf_api.list_models(author="other")
    assert (model.created_at.year, model.private, model.sha) == (2023, False, None)
    [model] = hf_api.list_models(author="other", expand=["sha", "lastModified"])
    assert model.sha == fake_hub.head("other/fam")

    monkeypatch.setattr(fake_hub, "page_size", 2)
    fake_hub.clear_requests()
    assert ids(sort="created_at") == ["org/secret-fam", "other/fam", *by_age[1:]]
    assert len(fake_hub.requests) == 3


def test_revisions_resolve_branches_tags_prs_and_past_commits(fake_hub, hf_api, tmp_path):
    fake_hub.create_repo(REPO)
    one = fake_hub.commit(REPO, {"f.txt": b"one"})
    fake_hub.create_tag(REPO, "v1")
    fake_hub.commit(REPO, {"f.txt": b"two"})
    fake_hub.commit(REPO, {"f.txt": b"dev"}, branch="dev")
    pr = hf_api.create_commit(
        REPO, [CommitOperationAdd("f.txt", b"pr")], commit_message="PR", create_pr=True
    )

    def read(revision: str) -> bytes:
        path = hf_api.hf_hub_download(REPO, "f.txt", revision=revision, cache_dir=tmp_path)
        return Path(path).read_bytes()

    assert [read(r) for r in (one, "v1", "main", "dev", "refs/pr/1")] == [
        b"one",
        b"one",
        b"two",
        b"dev",
        b"pr",
    ]
    assert pr.pr_revision == "refs/pr/1"
    assert hf_api.file_exists(REPO, "f.txt", revision="refs/pr/1")
    assert not hf_api.file_exists(REPO, "g.txt")
    assert not hf_api.file_exists(REPO, "f.txt", revision="nope")
    assert not hf_api.file_exists("org/nope", "f.txt")
    assert hf_api.repo_exists(REPO) and not hf_api.repo_exists("org/nope")
    with pytest.raises(RevisionNotFoundError):
        hf_api.model_info(REPO, revision="0" * 40)
    with pytest.raises(RevisionNotFoundError):
        hf_api.hf_hub_download(REPO, "f.txt", revision="nope", cache_dir=tmp_path)
    status, headers, _ = http(f"{fake_hub.url}/{REPO}/resolve/main/g.txt", method="HEAD")
    assert (status, headers["X-Error-Code"]) == (404, "EntryNotFound")
    assert headers["X-Repo-Commit"] == fake_hub.head(REPO)


def test_create_pr_opens_numbered_prs_and_leaves_the_branch_alone(fake_hub, hf_api):
    fake_hub.create_repo(REPO)
    main = fake_hub.commit(REPO, {"a.txt": b"a"})
    add = [CommitOperationAdd("b.txt", b"b")]
    first = hf_api.create_commit(REPO, add, commit_message="Propose b", create_pr=True)
    assert (first.pr_num, first.pr_revision) == (1, "refs/pr/1")
    assert first.pr_url == f"{fake_hub.url}/{REPO}/discussions/1"
    assert fake_hub.head(REPO) == main
    assert fake_hub.list_files(REPO, "refs/pr/1") == [".gitattributes", "a.txt", "b.txt"]
    assert fake_hub.commits(REPO, "refs/pr/1")[1].oid == main
    add = [CommitOperationAdd("c.txt", b"c")]
    second = hf_api.create_commit(REPO, add, commit_message="Propose c", create_pr=True)
    assert second.pr_num == 2
    assert fake_hub.pull_requests(REPO) == [
        PullRequest(1, "refs/pr/1", first.oid, "Propose b"),
        PullRequest(2, "refs/pr/2", second.oid, "Propose c"),
    ]
    assert len({main, first.oid, second.oid}) == 3


def test_a_stale_parent_commit_gets_412_and_changes_nothing(fake_hub, hf_api):
    """A direct commit; a pull request from a stale parent is opened (next test)."""
    fake_hub.create_repo(REPO)
    stale = fake_hub.commit(REPO, {"a.txt": b"1"})
    current = fake_hub.commit(REPO, {"a.txt": b"2"})
    add = [CommitOperationAdd("a.txt", b"3")]
    with pytest.raises(HfHubHTTPError) as e:
        hf_api.create_commit(REPO, add, commit_message="Late", parent_commit=stale)
    assert e.value.response.status_code == 412
    assert fake_hub.head(REPO) == current
    assert fake_hub.read_file(REPO, "a.txt") == b"2"
    add = [CommitOperationAdd("a.txt", b"3")]
    info = hf_api.create_commit(REPO, add, commit_message="On time", parent_commit=current)
    assert fake_hub.commits(REPO)[0].parents == (current,)
    assert fake_hub.head(REPO) == info.oid


def test_a_pull_request_starts_from_its_parent_however_far_the_branch_moved(fake_hub, hf_api):
    fake_hub.create_repo(REPO)
    stale = fake_hub.commit(REPO, {"a.txt": b"1"})
    current = fake_hub.commit(REPO, {"a.txt": b"2", "b.txt": b"b"})
    info = hf_api.create_commit(
        REPO,
        [CommitOperationAdd("c.txt", b"c")],
        commit_message="Late PR",
        parent_commit=stale,
        create_pr=True,
    )
    assert info.pr_revision == "refs/pr/1" and fake_hub.head(REPO) == current
    assert fake_hub.commits(REPO, "refs/pr/1")[0].parents == (stale,)
    assert fake_hub.list_files(REPO, "refs/pr/1") == [".gitattributes", "a.txt", "c.txt"]
    assert fake_hub.read_file(REPO, "a.txt", revision="refs/pr/1") == b"1"
    with pytest.raises(RevisionNotFoundError):
        hf_api.create_commit(
            REPO,
            [CommitOperationAdd("c.txt", b"c")],
            commit_message="No such parent",
            parent_commit="f" * 40,
            create_pr=True,
        )


def test_xet_token_endpoints_hand_out_the_local_cas(fake_hub, hf_api, hub_token, seeded):
    auth = {"Authorization": f"Bearer {hub_token}"}
    before = time.time()
    for kind in ("read", "write"):
        url = f"{fake_hub.url}/api/models/{REPO}/xet-{kind}-token/main"
        status, headers, body = http(url, headers=auth)
        answer = json.loads(body)
        assert status == 200 and answer["casUrl"] == fake_hub.cas.url
        assert answer["casUrl"].startswith("local:///")
        assert before + 3599 <= answer["exp"] <= time.time() + 3600
        assert (
            headers["X-Xet-Cas-Url"],
            headers["X-Xet-Access-Token"],
            int(headers["X-Xet-Token-Expiration"]),
        ) == (answer["casUrl"], answer["accessToken"], answer["exp"])
    assert http(f"{fake_hub.url}/api/models/{REPO}/xet-write-token/main")[0] == 401
    assert http(f"{fake_hub.url}/api/models/{REPO}/xet-read-token/nope", headers=auth)[0] == 404
    fake_hub.create_repo("org/secret", private=True)
    assert http(f"{fake_hub.url}/api/models/org/secret/xet-read-token/main")[0] == 404
    assert fake_hub.xet_token_requests("read") == 1
    assert fake_hub.xet_token_requests("write", REPO) == 1


def test_a_commit_naming_content_uploaded_nowhere_is_refused(fake_hub, hf_api):
    fake_hub.create_repo(REPO)
    line = {"path": "w.bin", "algo": "sha256", "oid": sha256(b"never sent"), "size": 10}
    body = "\n".join(
        json.dumps(x)
        for x in ({"key": "header", "value": {"summary": "x"}}, {"key": "lfsFile", "value": line})
    )
    status, _, answer = http(
        f"{fake_hub.url}/api/models/{REPO}/commit/main",
        method="POST",
        headers={"Authorization": f"Bearer {hf_api.token}", "Content-Type": "application/x-ndjson"},
        data=body.encode(),
    )
    assert (status, json.loads(answer)["error"]) == (
        400,
        f"w.bin: LFS object {line['oid']} was never uploaded",
    )


def test_rate_limits_count_each_token_per_bucket_and_window(fake_hub, hf_api, seeded, monkeypatch):
    fake_hub.rate_limits.configure(api=2, resolvers=1, window=0.5)
    info = HfApi(endpoint=fake_hub.url, token=hf_api.token)
    assert info.model_info(REPO).sha == seeded
    status, headers, _ = http(
        f"{fake_hub.url}/api/models/{REPO}", headers={"Authorization": f"Bearer {hf_api.token}"}
    )
    limit = huggingface_hub.utils.parse_ratelimit_headers(headers)
    assert (status, limit.resource_type, limit.remaining, limit.limit) == (200, "api", 0, 2)
    assert limit.reset_in_seconds == 1 and limit.window_seconds == 1
    with pytest.raises(HfHubHTTPError) as e:
        info.model_info(REPO)
    assert e.value.response.status_code == 429
    assert "you have reached your 'api' rate limit" in str(e.value)
    assert e.value.response.json() == {
        "error": "you have reached your 'api' rate limit. Retry after 1 seconds"
    }
    # Another bucket, another token: counted apart.
    assert hf_api.file_exists(REPO, "config.json")
    assert HfApi(endpoint=fake_hub.url, token=False).repo_exists(REPO)
    status, headers, _ = http(f"{fake_hub.url}/{REPO}/resolve/main/config.json")
    assert (status, headers["RateLimit"]) == (200, '"resolvers";r=0;t=1')
    time.sleep(0.5)
    assert info.model_info(REPO).sha == seeded  # a new window
    assert fake_hub.rate_limits.refused == 1


def test_a_gated_repo_shows_its_info_but_not_its_files(fake_hub, hf_api, tmp_path):
    fake_hub.create_repo(REPO, gated=True)
    fake_hub.commit(REPO, {"config.json": CONFIG})
    assert hf_api.model_info(REPO).gated == "manual"
    assert hf_api.repo_exists(REPO)
    with pytest.raises(GatedRepoError):
        hf_api.hf_hub_download(REPO, "config.json", cache_dir=tmp_path)
    with pytest.raises(GatedRepoError):
        hf_api.file_exists(REPO, "config.json")
    assert fake_hub.requests[-1].status == 403


def test_a_private_repo_is_invisible_without_the_token(fake_hub, hf_api, tmp_path):
    hf_api.create_repo(REPO, private=True)
    fake_hub.commit(REPO, {"config.json": CONFIG})
    anonymous = HfApi(endpoint=fake_hub.url, token=False)
    assert not anonymous.repo_exists(REPO)
    assert not anonymous.file_exists(REPO, "config.json")
    with pytest.raises(RepositoryNotFoundError):
        anonymous.model_info(REPO)
    assert hf_api.model_info(REPO).private is True
    path = hf_api.hf_hub_download(REPO, "config.json", cache_dir=tmp_path)
    assert Path(path).read_bytes() == CONFIG


def test_writes_need_the_token_and_the_log_never_holds_it(fake_hub, hf_api, hub_token):
    fake_hub.create_repo(REPO)
    head = fake_hub.head(REPO)
    anonymous = HfApi(endpoint=fake_hub.url, token=False)
    with pytest.raises(HfHubHTTPError) as e:
        anonymous.create_repo("org/new")
    assert e.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as e:
        anonymous.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=REPO)
    assert e.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as e:
        HfApi(endpoint=fake_hub.url, token="hf_wrong").model_info(REPO)
    assert e.value.response.status_code == 401
    assert (
        e.value.response.headers["X-Error-Message"] == "Invalid credentials in Authorization header"
    )
    assert not fake_hub.repo_exists("org/new") and fake_hub.head(REPO) == head

    with pytest.raises(HfHubHTTPError) as e:
        hf_api.create_repo(REPO)
    assert e.value.response.status_code == 409
    assert hf_api.create_repo(REPO, exist_ok=True) == f"{fake_hub.url}/{REPO}"
    hf_api.delete_repo(REPO)
    assert not fake_hub.repo_exists(REPO)
    with pytest.raises(RepositoryNotFoundError):
        hf_api.delete_repo(REPO)
    hf_api.delete_repo(REPO, missing_ok=True)
    assert hub_token not in repr(fake_hub.requests)


def test_retried_endpoints_recover_from_503_429_and_drops(
    fake_hub, hf_api, seeded, sleeps, legacy_lfs
):
    fake_hub.faults.add(path="/tree/", status=503)
    fake_hub.faults.add(path="/tree/", status=429, headers={"Retry-After": "0"})
    fake_hub.faults.add(path="/tree/", drop=True)
    fake_hub.clear_requests()
    assert hf_api.list_repo_files(REPO) == [
        ".gitattributes",
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    assert [r.status for r in fake_hub.requests] == [503, 429, 0, 200]
    # Backoff doubles (1, 2, 4 s) unless Retry-After says otherwise (then it waits that + 1 s).
    assert sleeps == [1, 1.0, 4]

    fake_hub.faults.add(server="hub", method="POST", path="/preupload/", status=503)
    fake_hub.faults.add(server="blobs", method="PUT", status=500)
    fake_hub.clear_requests()
    hf_api.upload_file(path_or_fileobj=b"w" * 100, path_in_repo="new.bin", repo_id=REPO)
    assert [(r.server, r.method, r.status) for r in fake_hub.requests[:5]] == [
        ("hub", "POST", 503),
        ("hub", "POST", 200),
        ("hub", "POST", 200),
        ("blobs", "PUT", 500),
        ("blobs", "PUT", 200),
    ]
    assert (fake_hub.lfs_uploads, fake_hub.read_file(REPO, "new.bin")) == (1, b"w" * 100)


def test_downloads_resume_after_a_dropped_blob_connection(
    fake_hub, hf_api, seeded_lfs, weights, sleeps, tmp_path, legacy_lfs
):
    fake_hub.faults.add(server="blobs", method="GET", drop=True)
    fake_hub.clear_requests()
    path = hf_api.hf_hub_download(REPO, "model.safetensors", cache_dir=tmp_path)
    assert Path(path).read_bytes() == weights.read_bytes()
    assert [(r.server, r.status) for r in fake_hub.requests] == [
        ("hub", 302),
        ("blobs", 0),
        ("blobs", 200),
    ]


def test_faults_can_fake_any_answer_or_slow_one_down(fake_hub, hf_api, seeded):
    fake_hub.faults.add(path=f"^/api/models/{REPO}$", status=503)
    with pytest.raises(HfHubHTTPError) as e:
        hf_api.model_info(REPO)  # not retried by the client
    assert e.value.response.status_code == 503
    assert hf_api.model_info(REPO).sha == seeded  # the fault is used up

    fake_hub.faults.add(path="^/api/models/", headers={"X-Error-Code": "RepoNotFound"}, status=404)
    assert not hf_api.repo_exists(REPO)
    fake_hub.faults.add(path="^/api/models/", status=None, delay=0.2, times=2)
    start = time.monotonic()
    assert hf_api.repo_exists(REPO) and hf_api.repo_exists(REPO)
    assert time.monotonic() - start >= 0.4
    fake_hub.faults.add(status=500)
    fake_hub.faults.clear()
    assert hf_api.repo_exists(REPO)


def test_oidc_exchange_issues_a_token_for_one_repo(fake_hub, hub_token, oidc_id_token, monkeypatch):
    fake_hub.create_repo(REPO)
    fake_hub.trust_publisher(REPO)
    fake_hub.create_repo("org/other")
    monkeypatch.setattr(huggingface_hub.utils._auth, "_OIDC_TOKEN_CACHE", None)
    monkeypatch.setenv("HF_OIDC_RESOURCE", REPO)
    monkeypatch.setenv("HF_OIDC_ID_TOKEN", oidc_id_token)
    fake_hub.clear_requests()
    token = get_token()
    assert token is not None and token.startswith("hf_oidc_") and token != hub_token
    assert calls(fake_hub) == [("hub", "POST", "/oauth/token", 200)]
    api = HfApi(endpoint=fake_hub.url, token=token)
    api.upload_file(path_or_fileobj=b"ci", path_in_repo="ci.txt", repo_id=REPO)
    assert fake_hub.read_file(REPO, "ci.txt") == b"ci"
    with pytest.raises(HfHubHTTPError) as e:
        api.upload_file(path_or_fileobj=b"ci", path_in_repo="ci.txt", repo_id="org/other")
    assert e.value.response.status_code == 403
    assert token not in repr(fake_hub.requests) and oidc_id_token not in repr(fake_hub.requests)

    for resource, id_token, why in [
        (REPO, "forged", "invalid_grant: the OIDC id token is not trusted"),
        ("org/other", oidc_id_token, "invalid_grant: no trusted publisher is configured for"),
        ("org/missing", oidc_id_token, "invalid_grant: repository org/missing does not exist"),
    ]:
        monkeypatch.setattr(huggingface_hub.utils._auth, "_OIDC_TOKEN_CACHE", None)
        monkeypatch.setenv("HF_OIDC_RESOURCE", resource)
        monkeypatch.setenv("HF_OIDC_ID_TOKEN", id_token)
        with pytest.raises(HfHubHTTPError) as e:
            get_token()
        assert e.value.response.status_code == 400
        assert e.value.response.json()["error"] == "invalid_grant"
        assert why in e.value.server_message


@pytest.mark.slow  # waits out real windows and lifetimes
def test_oidc_tokens_expire_after_their_lifetime(fake_hub, oidc_id_token, monkeypatch):
    fake_hub.create_repo(REPO)
    fake_hub.trust_publisher(REPO)
    monkeypatch.setattr(fake_hub.credentials, "lifetime", 1)
    monkeypatch.setattr(huggingface_hub.utils._auth, "_OIDC_TOKEN_CACHE", None)
    monkeypatch.setenv("HF_OIDC_RESOURCE", REPO)
    monkeypatch.setenv("HF_OIDC_ID_TOKEN", oidc_id_token)
    token = get_token()
    api = HfApi(endpoint=fake_hub.url, token=token)
    api.upload_file(path_or_fileobj=b"1", path_in_repo="a.txt", repo_id=REPO)
    time.sleep(1 + fake_hub.credentials.LEEWAY)
    with pytest.raises(HfHubHTTPError) as e:
        api.upload_file(path_or_fileobj=b"2", path_in_repo="a.txt", repo_id=REPO)
    assert e.value.response.status_code == 401
    # Fetched per request (token=True), the token is exchanged again once it has expired.
    HfApi(endpoint=fake_hub.url, token=True).upload_file(
        path_or_fileobj=b"3", path_in_repo="a.txt", repo_id=REPO
    )
    assert fake_hub.read_file(REPO, "a.txt") == b"3"
    assert [r.status for r in fake_hub.requests if r.path == "/oauth/token"] == [200, 200]


def test_seeding_api(fake_hub, tmp_path):
    fake_hub.create_repo(REPO)
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "sub" / "w.bin").write_bytes(b"weights")
    (tmp_path / "d" / "a.txt").write_bytes(b"a")
    sha = fake_hub.upload_folder(REPO, tmp_path / "d", message="Seed")
    assert fake_hub.list_files(REPO, sha) == [".gitattributes", "a.txt", "sub/w.bin"]
    assert fake_hub.commits(REPO)[0].title == "Seed"
    fake_hub.commit(REPO, {}, delete=["sub/"])
    assert fake_hub.list_files(REPO) == [".gitattributes", "a.txt"]
    assert fake_hub.read_file(REPO, "sub/w.bin", revision=sha) == b"weights"
    with pytest.raises(HubError, match="Invalid rev id: dev"):
        fake_hub.commit(REPO, {"b.txt": b"b"}, branch="dev", create_branch_ok=False)
    with pytest.raises(HubError, match="Entry not found: nope"):
        fake_hub.read_file(REPO, "nope")
    with pytest.raises(HubError, match="already created"):
        fake_hub.create_repo(REPO)
    fake_hub.reset()
    assert not fake_hub.repo_exists(REPO) and fake_hub.requests == []


def test_lifecycle_and_loopback_only(tmp_path):
    with pytest.raises(ValueError, match="loopback"):
        FakeHub(host="0.0.0.0")  # noqa: S104 - refused, which is the point
    hub = FakeHub(page_size=5)
    with pytest.raises(RuntimeError, match="not running"):
        hub.url  # noqa: B018
    data = Path(hub.objects.root).parent
    with hub:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", hub.url)
        assert hub.blob_url != hub.url
        status, _, body = http(f"{hub.url}/api/models")
        assert (status, json.loads(body)) == (200, [])
    assert not data.exists()
    with pytest.raises(RuntimeError, match="starts once"):
        hub.start()
    with FakeHub(tmp_path):
        pass
    assert (tmp_path / "objects").is_dir()


def test_standalone_prints_its_url_and_stops_cleanly_on_sigterm(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "paramdelta.testing.hub", "--data", str(tmp_path), "--token", "t"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = proc.stdout.readline().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
        create = json.dumps({"name": "m", "organization": "org"}).encode()
        auth = {"Authorization": "Bearer t", "Content-Type": "application/json"}
        status, _, body = http(f"{url}/api/repos/create", method="POST", headers=auth, data=create)
        assert (status, json.loads(body)) == (200, {"url": f"{url}/org/m", "name": "org/m"})
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=10)
    assert (proc.returncode, out, err) == (0, "", "")
