"""The staged merge, one stage at a time (preflight, stage, write, add files, finish),
and all of them in a row (`merge_to_dir`)."""

import json
import threading

import pytest
import torch

from merging import merge
from paramdelta.engine.checkpoint import LocalSource
from paramdelta.engine.recipe import Recipe, Runtime
from paramdelta.engine.stages import preflight, stage
from paramdelta.errors import CheckpointError
from paramdelta.testing.checkpoints import llama_config, load_tensors, make_trio, reference_merge

QUIET = Runtime(progress=False)


@pytest.fixture
def trio(tmp_path):
    return make_trio(tmp_path / "in", max_shard_size=60_000)


def _sources(trio):
    return {role: LocalSource(path) for role, path in trio.items()}


def _hidden(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_write_hands_over_one_shard_at_a_time(tmp_path, trio):
    sources = _sources(trio)
    plan = preflight(sources, Recipe(shard_size=60_000))
    seen = []
    with stage(plan, sources, tmp_path / "out", QUIET) as staged:
        for shard in staged.write():
            number = [s.filename for s in staged.shards].index(shard.plan.filename)
            on_disk = sorted(p.name for p in staged.directory.glob("*.safetensors*"))
            # This shard is complete and named; the next is not started until asked for.
            assert on_disk == [s.filename for s in staged.shards[: number + 1]]
            assert shard.path.stat().st_size == shard.plan.size
            seen.append(shard.plan.filename)
        assert seen == [s.filename for s in staged.shards] and len(seen) >= 3
        # Written, not yet in place: the staging directory holds the whole output.
        assert not (tmp_path / "out").exists()
        assert {"config.json", "model.safetensors.index.json"} <= {
            p.name for p in staged.directory.iterdir()
        }
        staged.add_files({"README.md": b"card\n"})
        result = staged.finish()
    assert result.out_dir == (tmp_path / "out").absolute()
    assert result.files["README.md"] == "result" and result.files["config.json"] == "new_base"
    assert (result.out_dir / "README.md").read_bytes() == b"card\n"
    assert _hidden(tmp_path) == []  # the staging directory became the output


def test_leaving_the_stage_early_leaves_nothing(tmp_path, trio):
    sources = _sources(trio)
    plan = preflight(sources, Recipe(shard_size=60_000))
    with (
        pytest.raises(CheckpointError, match="the check said no"),
        stage(plan, sources, tmp_path / "out", QUIET) as staged,
    ):
        for _ in staged.write():
            raise CheckpointError("the check said no")  # after the first shard
    assert not (tmp_path / "out").exists()
    assert _hidden(tmp_path) == []
    # The workers waiting for the next shard to be asked for were stopped, not left behind.
    assert not [t for t in threading.enumerate() if t.name.startswith("paramdelta-merge")]


def test_a_merge_is_in_place_only_after_finish(tmp_path, trio):
    sources = _sources(trio)
    plan = preflight(sources, Recipe())
    with stage(plan, sources, tmp_path / "out", QUIET) as staged:
        staged.write_all()
        assert staged.result().out_dir == staged.directory
        assert not (tmp_path / "out").exists()
    assert not (tmp_path / "out").exists()  # never finished: removed on the way out
    assert _hidden(tmp_path) == []


@pytest.mark.parametrize("dtype", ["auto", "float16", "float32"])
def test_the_engine_sums_any_number_of_weighted_deltas(tmp_path, trio, dtype):
    """new_base + 0.5 (post - base) - 0.25 (post[1] - base[1]), bit for bit, per tensor."""
    other = make_trio(tmp_path / "other", seed=7)
    sources = _sources(trio) | {
        "post[1]": LocalSource(other["post"]),
        "base[1]": LocalSource(other["base"]),
    }
    plan = preflight(sources, Recipe(weights=(0.5, -0.25), dtype=dtype))
    assert plan.operands == 5 and plan.deltas == 2
    assert plan.roles == ("base", "post", "base[1]", "post[1]", "new_base")
    with stage(plan, sources, tmp_path / "out", QUIET) as staged:
        staged.write_all()
        result = staged.finish()
    inputs = {role: load_tensors(trio[role]) for role in trio} | {
        "post[1]": load_tensors(other["post"]),
        "base[1]": load_tensors(other["base"]),
    }
    merged = load_tensors(result.out_dir)
    exact = 0
    for name, tensor in merged.items():
        acc = inputs["new_base"][name].float()
        for post, base, weight in (("post", "base", 0.5), ("post[1]", "base[1]", -0.25)):
            acc = acc + weight * (inputs[post][name].float() - inputs[base][name].float())
        exact += torch.equal(tensor, acc.to(tensor.dtype))
    assert (exact, len(merged)) == (len(inputs["new_base"]), len(inputs["new_base"]))
    assert result.stats.delta.summary()["overall"]["nonfinite"] == dict.fromkeys(
        ("post", "base", "new_base", "output", "post[1]", "base[1]"), 0
    )


def test_sources_must_be_the_recipes_checkpoints(tmp_path, trio):
    with pytest.raises(
        ValueError, match=r"a merge of 2 deltas reads \('base', 'post', 'base\[1\]'"
    ):
        preflight(_sources(trio), Recipe(weights=(0.5, 0.5)))


# -- every stage in a row ------------------------------------------------------------


def _merge(trio, out, **options):
    sources = {role: LocalSource(path) for role, path in trio.items()}
    return merge(sources, out, **options)


def test_output_files_and_their_donors(tmp_path):
    trio = make_trio(tmp_path / "in")
    result = _merge(trio, tmp_path / "out")
    out = tmp_path / "out"
    # Besides the files: the marker that lets --overwrite replace this output later.
    assert sorted(p.name for p in out.iterdir()) == sorted([*result.files, ".paramdelta-output"])
    assert json.loads((out / ".paramdelta-output").read_text())["tool"] == "paramdelta-bot"
    assert result.files["model.safetensors"] == "merge"
    assert (out / "config.json").read_bytes() == (trio["new_base"] / "config.json").read_bytes()
    for name in ("tokenizer_config.json", "generation_config.json", "chat_template.jinja"):
        assert (out / name).read_bytes() == (trio["post"] / name).read_bytes()
    assert (out / "LICENSE").read_text() == "licence of the new_base model\n"


@pytest.mark.slow  # transformers
def test_transformers_loads_the_merged_model(tmp_path):
    from transformers import LlamaForCausalLM

    config = llama_config(tie_word_embeddings=False)
    trio = make_trio(tmp_path / "in", config=config, max_shard_size=50_000)
    _merge(trio, tmp_path / "out", shard_size=60_000)
    assert (tmp_path / "out" / "model.safetensors.index.json").exists()

    model = LlamaForCausalLM.from_pretrained(tmp_path / "out")
    expected = reference_merge(*(load_tensors(trio[r]) for r in ("base", "post", "new_base")))
    loaded = model.state_dict()
    assert set(expected) <= set(loaded)
    for name, tensor in expected.items():
        assert torch.equal(loaded[name], tensor), name

    ids = torch.tensor([[1, 5, 9, 42, 7]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, 5, config["vocab_size"])
    assert torch.isfinite(logits).all()
    assert json.loads((tmp_path / "out" / "config.json").read_text())["torch_dtype"] == "bfloat16"
