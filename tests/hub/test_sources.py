import time

import pytest

from paramdelta.engine.checkpoint import LocalSource
from paramdelta.engine.recipe import Recipe
from paramdelta.engine.stages import preflight
from paramdelta.errors import NotFoundError, UsageError
from paramdelta.hub.client import Hub
from paramdelta.hub.sources import (
    HEAD_BYTES,
    HubFactory,
    HubSource,
    download_inputs,
    open_sources,
)
from paramdelta.repo_ids import parse_spec


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("org/name", ("org/name", "main")),
        ("org/name@v1.0", ("org/name", "v1.0")),
        ("o/n@" + "a" * 40, ("o/n", "a" * 40)),
    ],
)
def test_parse_spec(spec, parsed):
    assert parse_spec(spec) == parsed


@pytest.mark.parametrize("spec", ["name", "org/name@", "../etc/passwd", "org/na me", "/abs/path"])
def test_parse_spec_rejects(spec):
    with pytest.raises(UsageError, match="is neither a directory nor a Hub repo id"):
        parse_spec(spec)


def test_hub_sources_are_pinned_and_local_dirs_win(hub_trio, tmp_path):
    with open_sources(
        HubFactory(), base=hub_trio.repos["base"], post=str(hub_trio.local["post"])
    ) as sources:
        base, post = sources["base"], sources["post"]
        assert isinstance(base, HubSource) and isinstance(post, LocalSource)
        assert (base.repo.repo_id, base.repo.revision) == ("org/base", "main")
        assert base.repo.sha == hub_trio.shas["base"]
        assert base.label == f"org/base@{hub_trio.shas['base'][:7]}"
        assert post.root == hub_trio.local["post"]


def test_download_fetches_only_what_the_merge_reads(hub_trio, fake_hub):
    fake_hub.commit(hub_trio.repos["post"], {"unrelated/big.bin": b"x" * 1000})
    specs = {role: hub_trio.repos[role] for role in ("base", "post", "new_base")}
    with open_sources(HubFactory(), **specs) as sources:
        plan = preflight(sources, Recipe())
        needed = {role: set(paths) for role, paths in plan.read.items()}
        assert needed["post"] >= {"tokenizer_config.json", "chat_template.jinja", "config.json"}
        assert "unrelated/big.bin" not in needed["post"]
        local = download_inputs(plan, sources)
    for role, source in local.items():
        assert isinstance(source, LocalSource)
        # and its config and index, so that the snapshot opens as a checkpoint on its own
        extra = {"config.json", "model.safetensors.index.json"}
        assert set(source.list_files()) == needed[role] | extra
        # the cached snapshot of the pinned commit, under the same label
        assert source.root.name == fake_hub.head(hub_trio.repos[role])
        assert source.label == f"{hub_trio.repos[role]}@{source.root.name[:7]}"


def test_stream_reads_xet_files_through_hf_xet_and_stays_within_the_resolver_quota(
    hub_trio, fake_hub
):
    """No /resolve/ request per range: one per file read (config, index, each header)."""
    specs = {role: hub_trio.repos[role] for role in ("base", "post", "new_base")}
    files = sum(len(fake_hub.list_files(repo)) for repo in specs.values())
    fake_hub.rate_limits.configure(resolvers=files)
    fake_hub.clear_requests()
    with open_sources(HubFactory(), **specs) as sources:
        plan = preflight(sources, Recipe())
        for role, source in sources.items():
            for shard in (p for p in source.list_files() if p.endswith(".safetensors")):
                size = source.size(shard)
                buf = bytearray(size - 3)
                source.read_into(shard, 3, memoryview(buf))
                assert bytes(buf) == (hub_trio.local[role] / shard).read_bytes()[3:], shard
    assert plan.items
    resolves = [r.path for r in fake_hub.requests if "/resolve/" in r.path]
    assert len(resolves) == len(set(resolves))  # each file once at most
    assert fake_hub.rate_limits.refused == 0
    assert fake_hub.weight_bytes_served() == sum(
        min(p.stat().st_size, HEAD_BYTES)
        for d in hub_trio.local.values()
        for p in d.glob("*.safetensors")
    )
    for repo in specs.values():  # one read token per repo revision
        assert fake_hub.xet_token_requests("read", repo) == 1


def test_the_preflight_reads_each_header_with_one_request_all_at_once(hub_trio, fake_hub):
    specs = {role: hub_trio.repos[role] for role in ("base", "post", "new_base")}
    fake_hub.faults.add(server="blobs", path=".safetensors", status=None, delay=0.2, times=100)
    with open_sources(HubFactory(), **specs) as sources:
        shards = len([p for p in sources["base"].list_files() if p.endswith(".safetensors")])
        assert shards >= 3
        fake_hub.clear_requests()
        start = time.monotonic()
        preflight(sources, Recipe())
        elapsed = time.monotonic() - start
    heads = [r for r in fake_hub.requests if r.server == "blobs"]
    assert len(heads) == 3 * shards and all(r.range.startswith("bytes=0-") for r in heads)
    assert elapsed < 3 * 0.2 * shards / 2  # the shards of a repo are read concurrently


def test_other_files_stream_by_http_ranges_even_when_the_cdn_sends_everything(
    fake_hub, hub_token, tmp_path
):
    """A legacy LFS file: ranges sent with Accept-Encoding: identity; a 200 is read anyway."""
    data = bytes(range(256)) * 1000
    fake_hub.create_repo("org/old")
    sha = fake_hub.commit("org/old", {"w.safetensors": data}, xet=False)
    hub = Hub(token=hub_token, endpoint=fake_hub.url)
    source = HubSource(hub, hub.repo_files("org/old", sha))
    for mode in ("gzip", "always"):
        fake_hub.cdn_ignores_range = mode
        fake_hub.clear_requests()
        buf = bytearray(5000)
        source.read_into("w.safetensors", 123_456, memoryview(buf))
        assert bytes(buf) == data[123_456:128_456]
        [blob] = [r for r in fake_hub.requests if r.server == "blobs"]
        assert (blob.range, blob.status) == (
            "bytes=123456-128455",
            206 if mode == "gzip" else 200,
        )


def _listings(fake_hub):
    return [r for r in fake_hub.requests if r.method == "GET" and r.path == "/api/models"]


def test_a_repo_id_the_hub_does_not_know_suggests_the_author_s_close_names(hub_trio, fake_hub):
    fake_hub.clear_requests()
    with pytest.raises(NotFoundError) as e, open_sources(HubFactory(), base="org/Bsae"):
        pass
    assert str(e.value) == (
        "org/Bsae@main: repository not found (or private, and the token cannot see it);"
        " did you mean org/base?"
    )
    assert [r.query.get("author") for r in _listings(fake_hub)] == ["org"]  # one listing


def test_no_listing_without_a_404_nor_a_guess_without_a_close_name(hub_trio, fake_hub):
    fake_hub.clear_requests()
    with open_sources(HubFactory(), base="org/base"):
        pass
    assert _listings(fake_hub) == []
    with pytest.raises(NotFoundError) as e, open_sources(HubFactory(), base="org/zzzzzz"):
        pass
    assert str(e.value).endswith("(or private, and the token cannot see it)")
    assert len(_listings(fake_hub)) == 1
