"""Attack: another job on a shared runner tampers with the Hugging Face cache.

A weight blob with flipped bits (same size) and a tokenizer file replaced by a symlink
to a secret file on the runner were merged and published as they were, under a lineage
record that still named the genuine commits.
"""

import json
from pathlib import Path

import pytest
from huggingface_hub import constants

from paramdelta.cli import main
from paramdelta.reporting.results import load_results
from paramdelta.testing.checkpoints import load_tensors, mismatched_tensors, reference_merge

from .helpers import blob_downloads, download_repo, target, write_watchlist

SECRET = "hf_secret_of_another_job_on_this_runner"


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path, monkeypatch):
    """A cache of this test's own: blobs are named by content, and the trio's never change."""
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


def _cached(repo: str, sha: str, path: str) -> Path:
    folder = "models--" + repo.replace("/", "--")
    return Path(constants.HF_HUB_CACHE) / folder / "snapshots" / sha / path


def _stamps(*but: Path) -> dict[Path, tuple[int, int]]:
    """Inode and mtime of every file in the cache (what a download changes), but the blobs
    ``but`` and their companions (huggingface_hub's ``.lock`` and ``.refs`` of a blob)."""
    cache = Path(constants.HF_HUB_CACHE)
    files = [p for p in cache.rglob("*") if p.is_file() and not p.is_symlink()]
    names = tuple(b.name for b in but)
    return {
        p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in files if not p.name.startswith(names)
    }


def _first_run(hub_trio, tmp_path):
    """Target one merges, filling the cache; target two (same inputs) is run after tampering."""
    watchlist = write_watchlist(tmp_path, target("one", "me/one"), target("two", "me/two"))
    assert main(["run", "--watchlist", str(watchlist), "--target", "one"]) == 0
    return watchlist


def _assert_published_the_genuine_merge(fake_hub, hub_trio, tmp_path):
    merged = load_tensors(download_repo(fake_hub, "me/two", tmp_path / "two"))
    inputs = (load_tensors(hub_trio.local[r]) for r in ("base", "post", "new_base"))
    assert mismatched_tensors(merged, reference_merge(*inputs)) == []
    for name in fake_hub.list_files("me/two"):
        assert SECRET.encode() not in fake_hub.read_file("me/two", name)


def test_a_weight_blob_with_flipped_bits_is_fetched_again(hub_trio, fake_hub, tmp_path, capsys):
    watchlist = _first_run(hub_trio, tmp_path)
    shard = sorted(hub_trio.local["base"].glob("*.safetensors"))[0].name
    blob = _cached("org/base", hub_trio.shas["base"], shard).resolve()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF  # same size, different content
    blob.write_bytes(bytes(data))
    others = _stamps(blob)
    capsys.readouterr()
    fake_hub.clear_requests()

    assert main(["run", "--watchlist", str(watchlist), "--target", "two"]) == 0
    err = capsys.readouterr().err
    assert (
        f"paramdelta: warning: org/base@{hub_trio.shas['base'][:7]}/{shard} in the cache:"
        " its sha256 is not the Hub's; fetching it again\n"
    ) in err
    # Fetched again, and nothing else was. Where the fresh copy goes is huggingface_hub's
    # choice: back where the bad one was (its shared store of Xet blobs, or the repo's own
    # blobs), or into the shared store when the bad one was the repo's.
    fresh = _cached("org/base", hub_trio.shas["base"], shard).resolve()
    assert fresh.read_bytes() == (hub_trio.local["base"] / shard).read_bytes()
    assert _stamps(blob, fresh) == {
        p: s for p, s in others.items() if not p.name.startswith(fresh.name)
    }
    assert blob_downloads(fake_hub) == []
    _assert_published_the_genuine_merge(fake_hub, hub_trio, tmp_path)


def test_a_tokenizer_file_made_a_symlink_to_a_secret_is_not_followed(
    hub_trio, fake_hub, tmp_path, capsys
):
    watchlist = _first_run(hub_trio, tmp_path)
    secret = tmp_path / "runner-secret.json"
    secret.write_text(json.dumps({"token": SECRET}))
    entry = _cached("org/post", hub_trio.shas["post"], "tokenizer_config.json")
    entry.unlink()
    entry.symlink_to(secret)
    capsys.readouterr()

    assert main(["run", "--watchlist", str(watchlist), "--target", "two"]) == 0
    assert (
        f"paramdelta: warning: org/post@{hub_trio.shas['post'][:7]}/tokenizer_config.json in the"
        " cache: leads out of the cache (a symlink to another file); fetching it again\n"
    ) in capsys.readouterr().err
    assert secret.read_text() == json.dumps({"token": SECRET})  # left alone
    assert (
        fake_hub.read_file("me/two", "tokenizer_config.json")
        == (hub_trio.local["post"] / "tokenizer_config.json").read_bytes()
    )
    _assert_published_the_genuine_merge(fake_hub, hub_trio, tmp_path)


def test_content_that_never_matches_the_listing_is_never_published(hub_trio, fake_hub, tmp_path):
    watchlist = write_watchlist(tmp_path, target("one", "me/one"))
    shard = sorted(hub_trio.local["new_base"].glob("*.safetensors"))[-1].name
    # A shard stored as a legacy LFS object, whose bytes the Hub serves as they are.
    weights = (hub_trio.local["new_base"] / shard).read_bytes()
    sha = fake_hub.commit("org/new-base", {shard: weights}, xet=False)
    listed = fake_hub.store.get("org/new-base").resolve("main").files[shard]
    stored = fake_hub.objects.path(listed.sha256)  # what the Hub itself serves: bad bytes
    data = bytearray(stored.read_bytes())
    data[-1] ^= 0xFF
    stored.write_bytes(bytes(data))
    results = tmp_path / "result.json"

    assert main(["run", "--watchlist", str(watchlist), "--result-file", str(results)]) == 4
    [result] = load_results([results])
    assert result.error == (
        f"org/new-base@{sha[:7]}/{shard}: its sha256 is not the Hub's, even as downloaded again"
    )
    # The inputs are fetched and checked before the output repo is created: none was.
    assert not fake_hub.repo_exists("me/one")


def test_check_of_a_hub_repo_reads_only_what_matches_the_listing(
    hub_trio, fake_hub, tmp_path, capsys, monkeypatch
):
    """`paramdelta check org/name` loads cached files too: checked as `run` checks its inputs."""
    from paramdelta.pipeline import check as pre_publish
    from paramdelta.pipeline.check_rules import CheckReport

    loaded = []

    def record_what_is_loaded(directory, references, **_):
        loaded.append({p.name: p.read_bytes() for p in Path(directory).iterdir() if p.is_file()})
        return CheckReport(device="cpu")

    monkeypatch.setattr(pre_publish, "transformers_installed", lambda: True)
    monkeypatch.setattr(pre_publish, "run_check", record_what_is_loaded)
    assert main(["check", "org/post"]) == 0  # fills the cache
    shard = sorted(hub_trio.local["post"].glob("*.safetensors"))[0].name
    blob = _cached("org/post", hub_trio.shas["post"], shard).resolve()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF  # same size, different content
    blob.write_bytes(bytes(data))
    capsys.readouterr()

    assert main(["check", "org/post"]) == 0
    assert (
        f"paramdelta: warning: org/post@{hub_trio.shas['post'][:7]}/{shard} in the cache:"
        " its sha256 is not the Hub's; fetching it again\n"
    ) in capsys.readouterr().err
    genuine = {p.name: p.read_bytes() for p in hub_trio.local["post"].iterdir()}
    assert loaded[-1][shard] == genuine[shard]
    assert all(loaded[-1][name] == genuine[name] for name in loaded[-1])
