"""Branches and copy operations on the fake Hub, as huggingface_hub sends them (HUB-PROTOCOL §14)."""

from __future__ import annotations

import pytest
from huggingface_hub import CommitOperationAdd, CommitOperationCopy
from huggingface_hub.errors import HfHubHTTPError

WEIGHTS = bytes(range(256)) * 64  # a .safetensors name: stored as a large file


@pytest.fixture
def repo(fake_hub, hf_api):
    fake_hub.create_repo("org/out")
    return "org/out"


def test_branches_are_created_listed_and_deleted(fake_hub, hf_api, repo):
    main = fake_hub.head(repo)
    hf_api.create_branch(repo, branch="paramdelta-staging/t-abc", revision=main)
    refs = hf_api.list_repo_refs(repo)
    assert {b.name: b.target_commit for b in refs.branches} == {
        "main": main,
        "paramdelta-staging/t-abc": main,
    }
    with pytest.raises(HfHubHTTPError) as exists:
        hf_api.create_branch(repo, branch="paramdelta-staging/t-abc")
    assert exists.value.response.status_code == 409
    hf_api.create_branch(repo, branch="paramdelta-staging/t-abc", exist_ok=True)  # swallowed
    with pytest.raises(HfHubHTTPError) as invalid:
        hf_api.create_branch(repo, branch="refs/pr/5")
    assert invalid.value.response.status_code == 400

    hf_api.delete_branch(repo, branch="paramdelta-staging/t-abc")
    assert list(fake_hub.branches(repo)) == ["main"]
    with pytest.raises(HfHubHTTPError) as missing:
        hf_api.delete_branch(repo, branch="paramdelta-staging/t-abc")
    assert missing.value.response.status_code == 404


def test_a_branch_starts_from_its_starting_point_and_main_stays(fake_hub, hf_api, repo):
    first = fake_hub.head(repo)
    fake_hub.commit(repo, {"a.txt": b"a"})
    hf_api.create_branch(repo, branch="old", revision=first)
    hf_api.upload_file(path_or_fileobj=b"b", path_in_repo="b.txt", repo_id=repo, revision="old")
    assert fake_hub.list_files(repo, "old") == [".gitattributes", "b.txt"]
    assert fake_hub.list_files(repo) == [".gitattributes", "a.txt"]


def test_copies_link_stored_large_files_without_uploading_them_again(fake_hub, hf_api, repo):
    hf_api.create_branch(repo, branch="staging")
    hf_api.create_commit(
        repo,
        [
            CommitOperationAdd("w.safetensors", WEIGHTS),
            CommitOperationAdd("note.txt", b"small"),
        ],
        commit_message="stage",
        revision="staging",
    )
    staged = fake_hub.head(repo, "staging")
    fake_hub.clear_requests()
    hf_api.create_commit(
        repo,
        [
            CommitOperationCopy("w.safetensors", "w.safetensors", src_revision=staged),
            CommitOperationCopy("note.txt", "note.txt", src_revision=staged),
        ],
        commit_message="publish",
        parent_commit=fake_hub.head(repo),
    )
    assert fake_hub.read_file(repo, "w.safetensors") == WEIGHTS
    assert fake_hub.read_file(repo, "note.txt") == b"small"
    paths = [(r.method, r.path) for r in fake_hub.requests]
    assert ("POST", f"/api/models/{repo}/paths-info/{staged}") in paths
    assert not any(p.endswith("preupload/main") for _, p in paths)  # nothing uploaded again
    assert fake_hub.lfs_bytes_uploaded == 0
    # The regular file was fetched and sent again; the large one only named by its sha256.
    assert fake_hub.weight_bytes_served() == 0


def test_paths_info_lists_only_the_paths_asked_for(fake_hub, hf_api, repo):
    fake_hub.commit(repo, {"a/b.txt": b"b", "c.txt": b"c"})
    info = hf_api.get_paths_info(repo, ["c.txt", "a", "missing.txt"])
    assert sorted(i.path for i in info) == ["a", "c.txt"]
