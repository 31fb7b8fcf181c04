"""The preflight of a DeepSeek-V3-sized trio over the Hub: ~480 shard headers, within a free
account's rate-limit window (docs/formats.md states the budget)."""

from collections import Counter

from paramdelta.engine.recipe import Recipe
from paramdelta.engine.stages import preflight
from paramdelta.hub.sources import HubFactory, open_sources
from paramdelta.testing.fp8_checkpoints import deepseek_config, deepseek_tensors, write_generated
from paramdelta.testing.seed import publish_folder

SHARDS = 160  # DeepSeek-V3 ships 163
# A free account's quotas per 5-minute window (HUB-PROTOCOL.md section 11).
FREE = {"api": 1000, "resolvers": 5000}


def test_a_160_shard_trio_preflights_within_a_free_accounts_window(
    fake_hub, hub_token, tmp_path, monkeypatch
):
    monkeypatch.setenv("HF_TOKEN", hub_token)
    config = deepseek_config(experts=4)  # the shard count is what costs requests, not tensors
    tensors = deepseek_tensors(config)
    repos = {"base": "org/ds-base", "post": "org/ds-post", "new_base": "org/ds-new"}
    for seed, (role, repo) in enumerate(repos.items()):
        folder = write_generated(tmp_path / role, tensors, config, shards=SHARDS, seed=seed)
        publish_folder(fake_hub, repo, folder)
    fake_hub.rate_limits.configure(**FREE)
    fake_hub.clear_requests()

    with open_sources(HubFactory(), **repos) as sources:
        plan = preflight(sources, Recipe())

    assert len(plan.items) == len(tensors)  # FP8 weights and their scales, as the new base
    buckets = Counter(
        "resolvers" if "/resolve/" in r.path else "api"
        for r in fake_hub.requests
        if r.server == "hub"
    )
    headers = [r for r in fake_hub.requests if r.server == "hub" and r.path.endswith("safetensors")]
    assert len(headers) == 3 * SHARDS  # one request per shard header
    # One resolver request per file read (config, index, each header), a few api calls per repo.
    assert buckets["resolvers"] <= 3 * (SHARDS + 2)
    assert buckets["api"] <= 3 * 5
    assert buckets["resolvers"] < FREE["resolvers"] / 10 and buckets["api"] < FREE["api"] / 10
    assert fake_hub.rate_limits.refused == 0
    print("preflight requests per bucket:", dict(buckets))
