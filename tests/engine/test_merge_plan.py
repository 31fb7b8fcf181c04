import json

import pytest
import torch

from paramdelta.engine.checkpoint import LocalSource, open_checkpoint
from paramdelta.engine.merge_plan import Delta, VocabularyError, plan_deltas, plan_merge
from paramdelta.engine.recipe import Recipe
from paramdelta.errors import CheckpointError, UsageError
from paramdelta.testing.checkpoints import (
    donor_files,
    llama_config,
    random_state_dict,
    save_checkpoint,
)


def _trio(tmp_path, *, configs=None, states=None, files=None):
    configs = configs or {}
    states = states or {}
    files = files or {}
    checkpoints = []
    for seed, role in enumerate(("base", "post", "new_base")):
        config = configs.get(role, llama_config())
        state = states.get(role) or random_state_dict(config, seed=seed)
        path = save_checkpoint(
            tmp_path / role, state, config, extra_files=files.get(role, donor_files(role))
        )
        checkpoints.append(open_checkpoint(LocalSource(path), role))
    return checkpoints


def _error(tmp_path, **kwargs) -> str:
    options = kwargs.pop("options", {})
    with pytest.raises(CheckpointError) as e:
        plan_merge(*_trio(tmp_path, **kwargs), Recipe(**options))
    return str(e.value)


def test_plan_pairs_every_tensor_in_new_base_order(tmp_path):
    base, post, new_base = _trio(tmp_path)
    plan = plan_merge(base, post, new_base)
    names = [item.name for item in plan.items]
    assert names == sorted(new_base.tensors, key=lambda n: new_base.tensors[n].entry.offset)
    assert all(s.op == "merge" for item in plan.items for s in item.segments)
    assert plan.nbytes == sum(r.entry.nbytes for r in new_base.tensors.values())


def test_non_weight_files_come_from_the_documented_donor(tmp_path):
    plan = plan_merge(*_trio(tmp_path))
    assert plan.files == {
        "config.json": "new_base",
        "generation_config.json": "post",
        "tokenizer.json": "post",
        "tokenizer_config.json": "post",
        "chat_template.jinja": "post",
        "LICENSE": "new_base",
    }


def test_every_other_file_is_left_out_with_its_reason(tmp_path):
    """Mistral- and Llama-style extras: each file gets a donor or a stated reason."""
    extras = {
        "preprocessor_config.json": "{}",
        "processor_config.json": "{}",
        "tokenizer.model.v3": "spm",
        "tekken.json": "{}",
        "params.json": "{}",
        "consolidated.safetensors": "not read",
        "original/params.json": "{}",
        "README.md": "# card",
        "pytorch_model.bin": "pickle",
        "figure.png": "png",
    }
    files = {role: {**donor_files(role), **extras} for role in ("base", "post", "new_base")}
    plan = plan_merge(*_trio(tmp_path, files=files))
    for name in ("preprocessor_config.json", "processor_config.json", "tokenizer.model.v3"):
        assert plan.files[name] == "post"
    assert plan.files["tekken.json"] == "post"
    assert plan.skipped == {
        "README.md": "replaced by the model card",
        "consolidated.safetensors": "weights the merge does not read (not in the index)",
        "figure.png": "no rule for this file: not copied",
        "original/params.json": "the native-format release, not produced",
        "params.json": "Mistral's native-format config, for weights not produced",
        "pytorch_model.bin": "pickle: never read or copied",
    }
    assert plan.read["base"] == ["config.json", "model.safetensors"]
    assert "tekken.json" in plan.read["post"] and "config.json" in plan.read["new_base"]


def test_a_file_only_the_base_has_is_left_out_saying_so(tmp_path):
    files = {role: donor_files(role) for role in ("base", "post", "new_base")}
    files["base"] = {**files["base"], "tokenizer.model": "spm"}
    plan = plan_merge(*_trio(tmp_path, files=files))
    assert plan.skipped["tokenizer.model"] == (
        "the post model's tokenizer: taken from the post only, which has none"
    )


def test_config_token_ids_follow_the_post_models_generation_config(tmp_path):
    """config.json is the new base's, but its special token ids must be the shipped tokenizer's."""
    files = {role: donor_files(role) for role in ("base", "post", "new_base")}
    files["post"]["generation_config.json"] = json.dumps(
        {"bos_token_id": 1, "eos_token_id": [2, 9]}
    )
    post_config = dict(llama_config(), pad_token_id=5)
    plan = plan_merge(*_trio(tmp_path, files=files, configs={"post": post_config}))
    assert plan.config_changes == {"eos_token_id": [2, 9], "pad_token_id": 5}
    assert (plan.config["bos_token_id"], plan.config["eos_token_id"]) == (1, [2, 9])


def test_the_written_dtype_is_named(tmp_path):
    trio = _trio(tmp_path)
    assert plan_merge(*trio).written_dtype == "bfloat16"
    assert plan_merge(*trio, Recipe(dtype="float16")).written_dtype == "float16"


def test_licence_falls_back_to_the_post_model(tmp_path):
    files = {role: donor_files(role) for role in ("base", "post")}
    files["new_base"] = {}
    plan = plan_merge(*_trio(tmp_path, files=files))
    assert plan.files["LICENSE"] == "post"


@pytest.mark.parametrize(
    ("key", "value", "shown"),
    [
        ("hidden_size", 128, "hidden_size is base 64, post 64, new base 128"),
        ("num_hidden_layers", 3, "num_hidden_layers is base 2, post 2, new base 3"),
        (
            "architectures",
            ["MistralForCausalLM"],
            'architectures is base ["LlamaForCausalLM"], post ["LlamaForCausalLM"],'
            ' new base ["MistralForCausalLM"]',
        ),
        ("num_attention_heads", 8, "num_attention_heads is base 4, post 4, new base 8"),
    ],
)
def test_config_mismatch(tmp_path, key, value, shown):
    config = llama_config()
    states = {
        r: random_state_dict(config, seed=i) for i, r in enumerate(("base", "post", "new_base"))
    }
    configs = {"new_base": dict(config, **{key: value})}
    assert _error(tmp_path, configs=configs, states=states) == f"config.json mismatch: {shown}"


def test_tensor_missing_from_one_checkpoint(tmp_path):
    config = llama_config()
    post = random_state_dict(config, seed=1)
    del post["model.layers.1.mlp.up_proj.weight"]
    assert _error(tmp_path, states={"post": post}) == (
        "tensor 'model.layers.1.mlp.up_proj.weight' is in base and new base but not in post"
    )


def test_shape_mismatch(tmp_path):
    config = llama_config()
    base = random_state_dict(config, seed=0)
    base["model.norm.weight"] = torch.ones(65, dtype=torch.bfloat16)
    assert _error(tmp_path, states={"base": base}) == (
        "shape mismatch for tensor 'model.norm.weight': base [65], post [64], new base [64]"
    )


def test_vocab_mismatch_is_an_error_by_default(tmp_path):
    big = llama_config(vocab_size=260)
    assert _error(tmp_path, configs={"post": big}) == (
        "vocabulary size differs in tensor 'lm_head.weight' (base 256, post 260,"
        " new base 256 rows); pass --vocab-policy shared to merge the 256 rows all three"
        " share and keep the post model's 4 extra rows"
    )


def test_a_grown_new_base_vocabulary_names_the_rows_it_would_drop(tmp_path):
    """Mistral 32000 -> 32768: the post model has no extra rows; the new base's are dropped."""
    grown = {"new_base": llama_config(vocab_size=260)}
    message = _error(tmp_path / "error", configs=grown)
    assert message == (
        "vocabulary size differs in tensor 'lm_head.weight' (base 256, post 256,"
        " new base 260 rows); pass --vocab-policy shared to merge the 256 rows all three"
        " share and drop the new base's 4 extra rows"
    )
    plan = plan_merge(*_trio(tmp_path / "shared", configs=grown), Recipe(vocab_policy="shared"))
    embed = next(i for i in plan.items if i.name == "model.embed_tokens.weight")
    assert embed.shape == (256, 64)
    assert [(s.op, s.count) for s in embed.segments] == [("merge", 256 * 64)]
    assert plan.vocabulary is not None
    assert plan.vocabulary.to_dict() == {
        "policy": "shared",
        "rows": {"base": 256, "post": 256, "new_base": 260, "output": 256},
        "merged": 256,
        "kept_from_post": 0,
        "dropped_from_new_base": 4,
        "dropped_from_base": 0,
    }
    assert plan.vocabulary.describe() == (
        "base 256, post 256, new base 260 rows; output 256 rows: 256 merged, 0 kept from the post model,"
        " 4 dropped from the new base (vocab policy `shared`: the rows all three share are merged)"
    )
    assert plan.config_changes == {"vocab_size": 256}


def test_the_vocabulary_is_stated_when_nothing_differs(tmp_path):
    plan = plan_merge(*_trio(tmp_path))
    assert plan.vocabulary is not None
    assert plan.vocabulary.describe() == (
        "256 rows in all three: 256 merged, 0 kept from the post model,"
        " 0 dropped from the new base (vocab policy `error`: sizes must match, or the merge stops)"
    )


def test_the_vocabulary_error_speaks_the_callers_terms(tmp_path):
    with pytest.raises(VocabularyError) as e:
        plan_merge(*_trio(tmp_path, configs={"new_base": llama_config(vocab_size=260)}))
    fix = "set `vocab_policy: shared` on the target in the watchlist"
    assert str(e.value.with_fix(fix)).endswith(
        f"new base 260 rows); {fix} to merge the 256 rows all three share and drop the new"
        " base's 4 extra rows"
    )


def test_vocab_policy_shared_plans_merge_then_copy(tmp_path):
    trio = _trio(tmp_path, configs={"post": llama_config(vocab_size=260)})
    plan = plan_merge(*trio, Recipe(vocab_policy="shared"))
    embed = next(i for i in plan.items if i.name == "model.embed_tokens.weight")
    assert embed.shape == (260, 64)
    assert [(s.op, s.out_start, s.count) for s in embed.segments] == [
        ("merge", 0, 256 * 64),
        ("copy", 256 * 64, 4 * 64),
    ]
    assert embed.segments[1].inputs[0][0] == "post"
    assert plan.config_changes == {"vocab_size": 260}
    assert plan.vocabulary is not None
    assert (plan.vocabulary.kept_from_post, plan.vocabulary.dropped_from_new_base) == (4, 0)


def test_quantized_tensors_are_refused(tmp_path):
    config = llama_config()
    post = random_state_dict(config, seed=1)
    post["model.norm.weight"] = post["model.norm.weight"].to(torch.float8_e5m2)
    message = _error(tmp_path, states={"post": post})
    assert message == (
        f"post: {tmp_path / 'post'}: tensor 'model.norm.weight' has dtype F8_E5M2, which cannot"
        " be merged (only float tensors, FP8 block-scaled weights and integer buffers can)"
    )


def test_forced_dtype_updates_config(tmp_path):
    plan = plan_merge(*_trio(tmp_path), Recipe(dtype="float32"))
    assert {item.dtype for item in plan.items} == {"F32"}
    assert plan.config["torch_dtype"] == "float32"
    assert plan.config_changes == {"torch_dtype": "float32"}


def test_unchanged_config_is_copied_verbatim(tmp_path):
    base, post, new_base = _trio(tmp_path)
    plan = plan_merge(base, post, new_base)
    assert (
        plan.config_bytes(new_base.source) == (tmp_path / "new_base" / "config.json").read_bytes()
    )
    assert json.loads(plan.config_bytes(new_base.source)) == new_base.config


def test_bad_choices_are_usage_errors(tmp_path):
    trio = _trio(tmp_path)
    with pytest.raises(UsageError, match="--dtype must be one of auto, bfloat16, float16, float32"):
        plan_merge(*trio, Recipe(dtype="int8"))
    with pytest.raises(UsageError, match="--vocab-policy must be one of error, shared"):
        plan_merge(*trio, Recipe(vocab_policy="pad"))


def _later_delta(tmp_path, vocab_size):
    """A second delta whose post model has ``vocab_size`` rows (its base has 256)."""
    config = llama_config(vocab_size=vocab_size)
    post = save_checkpoint(tmp_path / "post1", random_state_dict(config, seed=5), config)
    config = llama_config()
    base = save_checkpoint(tmp_path / "base1", random_state_dict(config, seed=6), config)
    post_1 = open_checkpoint(LocalSource(post), "post[1]")
    return post_1, open_checkpoint(LocalSource(base), "base[1]")


def test_the_vocabulary_rules_apply_to_every_delta(tmp_path):
    base, post, new_base = _trio(tmp_path / "trio")
    post_1, base_1 = _later_delta(tmp_path, 260)
    recipe = Recipe(weights=(1.0, 0.5))
    deltas = [Delta(post, base, 1.0), Delta(post_1, base_1, 0.5)]
    with pytest.raises(VocabularyError) as e:
        plan_deltas(new_base, deltas, recipe)
    assert str(e.value) == (
        "vocabulary size differs in tensor 'lm_head.weight' (base 256, post 256, base[1] 256,"
        " post[1] 260, new base 256 rows); pass --vocab-policy shared to merge the 256 rows"
        " all checkpoints share and drop the post[1]'s 4 extra rows"
    )
    plan = plan_deltas(new_base, deltas, recipe._replace(vocab_policy="shared"))
    head = next(i for i in plan.items if i.name == "lm_head.weight")
    # The output has the first post model's rows (its tokenizer): every row is merged.
    assert head.shape == (256, 64)
    ((segment),) = head.segments
    assert (segment.op, segment.count, segment.weights) == ("merge", 256 * 64, (1.0, 0.5))
    assert [(o.role, o.first) for o in segment.inputs] == [
        ("new_base", 0), ("post", 0), ("base", 0), ("post[1]", 0), ("base[1]", 0),
    ]  # fmt: skip
    assert plan.vocabulary is not None and plan.vocabulary.describe() == (
        "base 256, post 256, base[1] 256, post[1] 260, new base 256 rows; output 256 rows:"
        " 256 merged, 0 kept from the post model, 0 dropped from the new base,"
        " 4 dropped from the post[1] (vocab policy `shared`: the rows all checkpoints share"
        " are merged)"
    )


def test_weights_other_than_the_recipes_are_refused(tmp_path):
    base, post, new_base = _trio(tmp_path)
    with pytest.raises(ValueError, match=r"delta weights \[0.5\] are not the recipe's"):
        plan_deltas(new_base, [Delta(post, base, 0.5)], Recipe())
