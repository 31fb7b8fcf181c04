import itertools

import pytest
import torch

from merging import merge
from paramdelta.engine.checkpoint import LocalSource
from paramdelta.engine.recipe import Recipe
from paramdelta.engine.stages import preflight
from paramdelta.engine.workers import chunk_elements, plan_units
from paramdelta.engine.writer import OutputWriter, plan_shards
from paramdelta.testing.checkpoints import (
    llama_config,
    load_tensors,
    make_trio,
    mismatched_tensors,
    perturbed,
    random_state_dict,
    reference_merge,
    save_checkpoint,
)


def _sources(trio):
    return {role: LocalSource(path) for role, path in trio.items()}


def _merge(trio, out, **options):
    options.setdefault("progress", False)
    return merge(_sources(trio), out, **options)


def _expected(trio, **kwargs):
    return reference_merge(*(load_tensors(trio[r]) for r in ("base", "post", "new_base")), **kwargs)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("shard_size", [None, 30_000], ids=["single-file", "sharded"])
def test_bit_exact_with_the_formula(tmp_path, dtype, shard_size):
    trio = make_trio(tmp_path / "in", dtype=dtype, max_shard_size=shard_size)
    result = _merge(trio, tmp_path / "out", shard_size=shard_size or 5 * 10**9)
    merged = load_tensors(tmp_path / "out")
    expected = _expected(trio)
    assert mismatched_tensors(merged, expected) == []
    assert {t.dtype for t in merged.values()} == {dtype}
    assert result.stats.tensors == len(expected)
    # The merge really changed something: it is neither input.
    new_base = load_tensors(trio["new_base"])
    assert not torch.equal(merged["lm_head.weight"], new_base["lm_head.weight"])


def test_chunked_merge_is_exact(tmp_path):
    config = llama_config(hidden_size=128, intermediate_size=384, vocab_size=512)
    trio = make_trio(tmp_path / "in", config=config)
    # 100 KB of buffers: every large tensor is cut into several chunks.
    result = _merge(trio, tmp_path / "out", max_memory=100_000)
    assert result.stats.chunk_elements == 4096
    assert result.stats.workers >= 2
    assert mismatched_tensors(load_tensors(tmp_path / "out"), _expected(trio)) == []


def test_alpha_scales_the_delta(tmp_path):
    trio = make_trio(tmp_path / "in")
    _merge(trio, tmp_path / "out", alpha=0.5)
    assert mismatched_tensors(load_tensors(tmp_path / "out"), _expected(trio, alpha=0.5)) == []
    _merge(trio, tmp_path / "zero", alpha=0.0)
    new_base = load_tensors(trio["new_base"])
    assert mismatched_tensors(load_tensors(tmp_path / "zero"), new_base) == []


def test_tied_embeddings(tmp_path):
    trio = make_trio(tmp_path / "in", config=llama_config(tie_word_embeddings=True))
    _merge(trio, tmp_path / "out")
    merged = load_tensors(tmp_path / "out")
    assert "lm_head.weight" not in merged
    assert mismatched_tensors(merged, _expected(trio)) == []


@pytest.mark.parametrize(
    ("choice", "dtype"), [("float32", torch.float32), ("float16", torch.float16)]
)
def test_output_dtype_is_one_rounding_from_float32(tmp_path, choice, dtype):
    trio = make_trio(tmp_path / "in")
    _merge(trio, tmp_path / "out", dtype=choice)
    assert mismatched_tensors(load_tensors(tmp_path / "out"), _expected(trio, dtype=dtype)) == []


def test_mixed_input_dtypes(tmp_path):
    config = llama_config()
    base = random_state_dict(config, seed=3, dtype=torch.float32)
    states = {
        "base": base,
        "post": {k: v.to(torch.bfloat16) for k, v in perturbed(base, seed=4).items()},
        "new_base": {k: v.to(torch.float16) for k, v in perturbed(base, seed=5).items()},
    }
    trio = {r: save_checkpoint(tmp_path / r, s, config) for r, s in states.items()}
    _merge(trio, tmp_path / "out")
    merged = load_tensors(tmp_path / "out")
    assert mismatched_tensors(merged, _expected(trio)) == []
    assert merged["model.norm.weight"].dtype == torch.float16


def test_integer_buffers_are_copied_from_the_new_base(tmp_path):
    config = llama_config()
    trio = {}
    for i, role in enumerate(("base", "post", "new_base")):
        state = random_state_dict(config, seed=i)
        state["model.rotary.position_ids"] = torch.arange(16, dtype=torch.int64) * (i + 1)
        trio[role] = save_checkpoint(tmp_path / role, state, config)
    _merge(trio, tmp_path / "out")
    merged = load_tensors(tmp_path / "out")
    assert torch.equal(merged["model.rotary.position_ids"], torch.arange(16) * 3)
    assert mismatched_tensors(merged, _expected(trio)) == []


def test_vocab_policy_shared_merges_shared_rows_and_keeps_post_rows(tmp_path):
    config = llama_config(vocab_size=256)
    base = random_state_dict(config, seed=0)
    post = perturbed(base, seed=1)
    new_base = perturbed(base, seed=2)
    post_config = dict(config, vocab_size=260)  # post added 4 chat tokens
    extra = torch.randn(4, 64).to(torch.bfloat16)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        post[name] = torch.cat([post[name], extra])
    trio = {
        "base": save_checkpoint(tmp_path / "base", base, config),
        "post": save_checkpoint(tmp_path / "post", post, post_config),
        "new_base": save_checkpoint(tmp_path / "new_base", new_base, config),
    }
    result = _merge(trio, tmp_path / "out", vocab_policy="shared")
    merged = load_tensors(tmp_path / "out")
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert merged[name].shape == (260, 64)
        want = (post[name][:256].float() - base[name].float() + new_base[name].float()).bfloat16()
        assert torch.equal(merged[name][:256].view(torch.int16), want.view(torch.int16))
        assert torch.equal(merged[name][256:], extra)
    assert result.plan.config["vocab_size"] == 260
    assert '"vocab_size": 260' in (tmp_path / "out" / "config.json").read_text()


def test_units_cover_every_output_byte_once(tmp_path):
    trio = make_trio(tmp_path / "in", config=llama_config(hidden_size=128, vocab_size=512))
    sources = _sources(trio)
    plan = preflight(sources, Recipe())
    shards = plan_shards(plan.items, 100_000)
    units = plan_units(plan, shards, sources, elements=5000)
    for index, shard in enumerate(shards):
        spans = sorted(
            (u.out_offset, u.out_offset + u.out_nbytes) for u in units if u.shard == index
        )
        assert spans[0][0] == len(shard.prefix)
        assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
        assert spans[-1][1] == shard.size
    assert [u.shard for u in units] == sorted(u.shard for u in units)


def test_chunk_size_follows_the_source_and_the_memory_budget(tmp_path):
    trio = make_trio(tmp_path / "in")
    sources = _sources(trio)
    plan = preflight(sources, Recipe())
    local = list(sources.values())
    # Local reads: 1 MiB of bf16 per input, what keeps a chunk in cache.
    assert chunk_elements(plan, local, 2, 2**30, on_cuda=False) == 2**19
    # bf16 in and out: 2 workers x (3 inputs x 2 B + 2 B) = 16 B/element.
    assert chunk_elements(plan, local, 2, 16 * 4096 * 10, on_cuda=False) == 4096 * 10
    assert chunk_elements(plan, local, 2, 2**30, on_cuda=True) == 2**23


class _CountingSource(LocalSource):
    """Counts the bulk reads: a batch of back-to-back experts must be one read per input."""

    def __init__(self, root):
        super().__init__(root)
        self.reads = []

    def read_into(self, path, offset, view):
        self.reads.append((path, offset, len(view)))
        super().read_into(path, offset, view)


def test_a_batch_of_back_to_back_experts_is_read_and_written_in_one_piece(tmp_path, monkeypatch):
    names = [f"model.layers.0.mlp.experts.{e}.up_proj.weight" for e in range(8)]
    config = llama_config()
    trio = {}
    for seed, role in enumerate(("base", "post", "new_base")):
        torch.manual_seed(seed)
        state = {name: torch.randn(16, 32, dtype=torch.bfloat16) for name in names}
        trio[role] = save_checkpoint(tmp_path / role, state, config)
    sources = {role: _CountingSource(path) for role, path in trio.items()}
    writes = []
    write = OutputWriter.write
    monkeypatch.setattr(
        OutputWriter, "write", lambda w, *a: (writes.append(len(a[2])), write(w, *a))[1]
    )
    merge(sources, tmp_path / "out", progress=False)
    assert writes == [8 * 16 * 32 * 2]
    prefix = (trio["base"] / "model.safetensors").read_bytes()[:8]
    start = 8 + int.from_bytes(prefix, "little")  # the data section, past the header
    data = [r for s in sources.values() for r in s.reads if r[1] >= start]
    assert data == [("model.safetensors", start, 8 * 16 * 32 * 2)] * 3  # not one per expert
    assert mismatched_tensors(load_tensors(tmp_path / "out"), _expected(trio)) == []
