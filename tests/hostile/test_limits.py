"""Attacks on memory: oversized and over-nested upstream metadata.

A disk-full error, or an upstream config.json nested 200,000 deep (RecursionError),
aborted `run` as "unexpected ... (a bug)". A 300 MB config.json raised peak memory by
~570 MB; a listing that claims a petabyte-sized small file ended in MemoryError. There
was no cap on shard count or total header bytes.
"""

import json

import pytest

from paramdelta.cli import main
from paramdelta.engine import checkpoint, limits
from paramdelta.reporting.results import load_results

from .helpers import file_gets, model_info_json, target, variant, write_watchlist

PETABYTE = 10**15


def _run(watchlist, tmp_path):
    results = tmp_path / "result.json"
    code = main(["run", "--watchlist", str(watchlist), "--result-file", str(results)])
    return code, {r.target: r for r in load_results([results])}


@pytest.mark.parametrize(
    ("repo", "name", "where", "limit"),
    [
        (
            "org/new-base",
            "config.json",
            "new_base: org/new-base@{sha}",
            "1048576 (the limit for config.json)",
        ),
        (
            "org/post",
            "tokenizer_config.json",
            "post: org/post@{sha}",
            "134217728 (the limit for a copied file)",
        ),
    ],
)
def test_a_listing_claiming_a_petabyte_file_is_refused_before_reading(
    hub_trio, fake_hub, hub_token, tmp_path, repo, name, where, limit
):
    info = model_info_json(fake_hub, hub_token, repo)
    for sibling in info["siblings"]:
        if sibling["rfilename"] == name:
            sibling["size"] = PETABYTE
    fake_hub.faults.add(
        method="GET",
        path=f"^/api/models/{repo}/revision/main$",
        status=200,
        headers={"Content-Type": "application/json"},
        body=json.dumps(info),
    )
    watchlist = write_watchlist(tmp_path, target("huge", "me/huge"))
    code, results = _run(watchlist, tmp_path)
    assert code == 3
    sha = info["sha"][:7]
    assert (
        results["huge"].error
        == f"{where.format(sha=sha)}/{name}: {PETABYTE} bytes, more than {limit}"
    )
    assert file_gets(fake_hub, repo, name) == []
    assert not fake_hub.repo_exists("me/huge")


BIG = json.dumps({"model_type": "llama", "padding": "x" * limits.MAX_CONFIG_BYTES}).encode()
DEEP = b'{"model_type": "llama", "x": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        (BIG, f"{len(BIG)} bytes, more than 1048576 (the limit for config.json)"),
        (DEEP, "nested more than 64 levels deep"),  # was a RecursionError: "a bug", exit 1
    ],
    ids=["oversized", "200000-deep"],
)
def test_a_hostile_config_fails_its_target_alone(hub_trio, fake_hub, tmp_path, config, problem):
    sha = variant(fake_hub, hub_trio, tmp_path, "org/hostile", {"config.json": config})
    watchlist = write_watchlist(
        tmp_path, target("hostile", "me/hostile", new_base="org/hostile"), target("good", "me/good")
    )
    code, results = _run(watchlist, tmp_path)
    assert code == 3
    assert results["hostile"].error == f"new_base: org/hostile@{sha[:7]}/config.json: {problem}"
    assert results["good"].status == "published"  # the next target ran
    if config is BIG:
        assert file_gets(fake_hub, "org/hostile", "config.json") == []  # refused unread


def test_an_index_naming_too_many_shards_is_refused(hub_trio, fake_hub, tmp_path):
    index = {"weight_map": {f"t{i}": f"model-{i:05d}.safetensors" for i in range(5000)}}
    files = {"model.safetensors.index.json": json.dumps(index).encode()}
    sha = variant(fake_hub, hub_trio, tmp_path, "org/many", files)
    watchlist = write_watchlist(tmp_path, target("many", "me/many", new_base="org/many"))
    code, results = _run(watchlist, tmp_path)
    assert code == 3
    assert results["many"].error == (
        f"new_base: org/many@{sha[:7]}/model.safetensors.index.json: 5000 shards, more than 4096"
    )


def test_the_headers_of_a_checkpoint_have_a_total_cap(hub_trio, fake_hub, tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "MAX_TOTAL_HEADER_BYTES", 1000)  # the trio's: 1-2 KB
    watchlist = write_watchlist(tmp_path, target("good", "me/good"))
    code, results = _run(watchlist, tmp_path)
    assert code == 3
    base = f"org/base@{hub_trio.shas['base'][:7]}"
    assert (
        results["good"].error == f"base: {base}: its safetensors headers hold more than 1000 bytes"
    )
