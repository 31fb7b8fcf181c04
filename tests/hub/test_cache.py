import time

import pytest
from huggingface_hub import constants

from paramdelta.errors import LocalFileError
from paramdelta.hub.cache import checked_snapshot
from paramdelta.hub.client import Hub


@pytest.fixture
def cached(hub_trio, hub_token, tmp_path, monkeypatch):
    """The trio's base, fetched into a cache of this test's own: (listing, snapshot, fetch)."""
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    hub = Hub(token=hub_token)
    repo = hub.repo_files("org/base", "main")

    def fetch(paths):
        return hub.download(repo.repo_id, repo.sha, sorted(paths))

    return repo, fetch(repo.sizes), fetch


def _shard(repo):
    return sorted(p for p in repo.sizes if p.endswith(".safetensors"))[0]


def test_checked_files_are_read_through_the_descriptor_that_was_checked(hub_trio, cached):
    repo, snapshot, fetch = cached
    shard = _shard(repo)
    source = checked_snapshot(repo, snapshot, [shard, "config.json"], fetch)
    try:
        (snapshot / shard).unlink()  # the name may go or be replaced: the checked file stays
        original = (hub_trio.local["base"] / shard).read_bytes()
        assert source.read(shard, 0, len(original)) == original
        with pytest.raises(LocalFileError, match="not among the checked files"):
            source.read("tokenizer_config.json", 0, 1)
    finally:
        source.close()


def test_a_file_changed_in_place_after_the_check_is_never_merged(cached):
    repo, snapshot, fetch = cached
    shard = _shard(repo)
    source = checked_snapshot(repo, snapshot, [shard], fetch)
    try:
        assert len(source.read(shard, 0, 8)) == 8
        time.sleep(0.01)  # a coarse clock would give the write the same ctime
        with (snapshot / shard).resolve().open("r+b") as f:
            f.write(b"\0")  # e.g. another job "repairing" the blob while the merge runs
        with pytest.raises(LocalFileError) as e:
            source.read(shard, 0, 8)
        assert str(e.value) == (
            f"org/base@{repo.sha[:7]}/{shard}: changed in the cache during the merge"
            " (another job on this runner?)"
        )
    finally:
        source.close()
