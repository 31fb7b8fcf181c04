import contextlib
import tempfile
import threading
import time
from pathlib import Path

from huggingface_hub import HfApi

from merging import merge, recipe_and_runtime
from paramdelta.engine.checkpoint import LocalSource
from paramdelta.engine.stages import preflight
from paramdelta.hub.client import Hub
from paramdelta.hub.publisher import Publisher
from paramdelta.pipeline.publish import push_merge
from paramdelta.testing.checkpoints import llama_config, make_trio


def test_disk_holds_at_most_two_shards_while_pushing(
    fake_hub, hub_token, tmp_path, monkeypatch, caplog
):
    """One shard uploading plus the one being written: never the whole model; all through Xet."""
    trio = make_trio(tmp_path / "in", config=llama_config(hidden_size=128, vocab_size=512))
    hub = Hub(token=hub_token)
    publisher = Publisher(hub, "me/out", message="m")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the merge's scratch dir
    real = Hub.preupload

    def slow_preupload(self, *args, **kwargs):
        time.sleep(0.05)  # an upload slower than the merge: the worst case for disk
        real(self, *args, **kwargs)

    monkeypatch.setattr(Hub, "preupload", slow_preupload)
    alive: list[int] = []
    done = threading.Event()

    def inode(stat):
        return stat.st_dev, stat.st_ino

    def sample():
        # Distinct inodes, so that a shard seen both in the writer's directory and as the
        # upload's hard link (between the link and the unlink) counts once.
        while not done.is_set():
            files = set()
            for pattern in (
                "paramdelta-*/.merged.partial-*/*.safetensors*",
                "paramdelta-*/.paramdelta-upload-*/*",
            ):
                for path in tmp_path.glob(pattern):
                    with contextlib.suppress(FileNotFoundError):
                        files.add(inode(path.stat()))
            alive.append(len(files))
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        sources = {role: LocalSource(path) for role, path in trio.items()}
        recipe, runtime = recipe_and_runtime(shard_size=150_000)
        result, published = push_merge(preflight(sources, recipe), sources, publisher, runtime)
    finally:
        done.set()
        sampler.join()
    assert len(result.shards) >= 4
    assert max(alive) <= 2, max(alive)
    assert max(alive) > 0  # the sampler did see the shards
    assert not list(tmp_path.glob("paramdelta-*"))  # uploaded, then removed with the scratch dir
    assert {s.filename for s in result.shards} <= set(published.files)
    assert set(fake_hub.list_files("me/out")) >= {s.filename for s in result.shards}
    assert (fake_hub.lfs_bytes_uploaded, fake_hub.xet_uploads) == (0, len(result.shards))
    assert "Falling back to HTTP upload" not in caplog.text
    api = HfApi(endpoint=fake_hub.url, token=hub_token)
    folder = Path(api.snapshot_download("me/out", cache_dir=tmp_path / "hf-cache"))
    local = merge(
        sources, tmp_path / "local", shard_size=150_000
    ).out_dir  # the same merge, on disk
    for shard in result.shards:  # downloaded back through hf_xet: bit-exact
        assert (folder / shard.filename).read_bytes() == (local / shard.filename).read_bytes()


def test_a_new_layout_removes_the_old_shards_in_the_same_commit(fake_hub, hub_token, tmp_path):
    trio = make_trio(tmp_path / "in", config=llama_config(hidden_size=128, vocab_size=512))
    sources = {role: LocalSource(path) for role, path in trio.items()}
    hub = Hub(token=hub_token)
    fake_hub.create_repo("me/out")
    fake_hub.commit("me/out", {"eval-results.md": b"kept: not weights"})

    def publish(shard_size, out):
        merged = merge(sources, tmp_path / out, shard_size=shard_size)
        with Publisher(hub, "me/out", message=f"shards of {shard_size}") as publisher:
            publisher.commit(merged.out_dir)
        return merged

    sharded = publish(150_000, "a")
    assert "model.safetensors.index.json" in fake_hub.list_files("me/out")
    single = publish(10**9, "b")
    files = set(fake_hub.list_files("me/out"))
    assert [s.filename for s in single.shards] == ["model.safetensors"]
    assert not files & {s.filename for s in sharded.shards}
    assert "model.safetensors.index.json" not in files
    assert {"model.safetensors", "eval-results.md", "config.json"} <= files
    assert fake_hub.commits("me/out")[0].title == f"shards of {10**9}"


def test_the_bots_own_files_are_redacted_before_they_are_committed(fake_hub, hub_token, tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with Publisher(Hub(token=hub_token), "me/out", message="m") as publisher:
        publisher.commit(folder, {"README.md": f"made with {hub_token}\n".encode()})
    assert fake_hub.read_file("me/out", "README.md") == b"made with ***\n"


def test_leaving_without_a_commit_deletes_the_repo_it_created_and_no_other(fake_hub, hub_token):
    hub = Hub(token=hub_token)
    with Publisher(hub, "me/new", message="m"):
        assert fake_hub.repo_exists("me/new")
    assert not fake_hub.repo_exists("me/new")
    fake_hub.create_repo("me/old")
    with contextlib.suppress(RuntimeError), Publisher(hub, "me/old", message="m"):
        raise RuntimeError("the merge failed")
    assert fake_hub.repo_exists("me/old") and len(fake_hub.commits("me/old")) == 1


def test_a_repo_it_cannot_delete_again_is_a_warning_naming_it(fake_hub, hub_token, caplog):
    fake_hub.faults.add(method="DELETE", path="/api/repos/delete$", status=403)
    with contextlib.suppress(RuntimeError), Publisher(Hub(token=hub_token), "me/new", message="m"):
        raise RuntimeError("the merge failed")
    assert fake_hub.repo_exists("me/new")
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        "me/new: this run created it and published nothing, but could not delete it"
        " (me/new: HTTP 403: not authorised (check HF_TOKEN or --token-file)); delete it on the Hub"
    ]
