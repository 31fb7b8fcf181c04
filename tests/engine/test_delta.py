"""The delta report measured in the merge pass, and NaN/Inf stopping the merge."""

import math

import pytest
import torch

from merging import merge, two_deltas
from paramdelta.engine.checkpoint import LocalSource
from paramdelta.engine.delta import EMBEDDINGS, HEAD, OTHER, PROJECTOR, VISION, group_of
from paramdelta.errors import CheckpointError
from paramdelta.testing.checkpoints import (
    llama_config,
    load_tensors,
    make_trio,
    perturbed,
    random_state_dict,
    save_checkpoint,
)

ROLES = ("base", "post", "new_base")


def _merge(trio, out, **options):
    sources = {role: LocalSource(path) for role, path in trio.items()}
    return merge(sources, out, **options)


def _expected(tensors):
    """Norms and cosine of post - base and new_base - base, in float64 (the definition)."""
    base, post, new = (torch.cat([t[n].double().flatten() for n in tensors[0]]) for t in tensors)
    delta, update = post - base, new - base
    cosine = float(delta @ update / (delta.norm() * update.norm()))
    return float(delta.norm()), float(update.norm()), cosine


def test_the_report_holds_the_norms_and_cosine_of_the_two_deltas(tmp_path):
    trio = make_trio(tmp_path / "in", max_shard_size=30_000)
    # 16 KB of buffers: the large tensors are summed over several chunks.
    result = _merge(trio, tmp_path / "out", max_memory=16_000 * 8)
    summary = result.stats.delta.summary()
    inputs = [load_tensors(trio[role]) for role in ROLES]

    overall = summary["overall"]
    post_norm, update_norm, cosine = _expected(inputs)
    assert overall["tensors"] == 21
    assert overall["elements"] == sum(t.numel() for t in inputs[0].values())
    assert overall["post_delta_norm"] == pytest.approx(post_norm, rel=1e-5)
    assert overall["base_update_norm"] == pytest.approx(update_norm, rel=1e-5)
    assert overall["cosine"] == pytest.approx(cosine, abs=1e-6)
    assert overall["nonfinite"] == {"post": 0, "base": 0, "new_base": 0, "output": 0}

    groups = [g["layer"] for g in summary["layers"]]
    assert groups == [EMBEDDINGS, 0, 1, OTHER, HEAD]
    layer_1 = summary["layers"][2]
    names = [n for n in inputs[0] if n.startswith("model.layers.1.")]
    post_norm, update_norm, cosine = _expected([{n: t[n] for n in names} for t in inputs])
    assert layer_1["tensors"] == 9
    assert layer_1["post_delta_norm"] == pytest.approx(post_norm, rel=1e-5)
    assert layer_1["base_update_norm"] == pytest.approx(update_norm, rel=1e-5)
    assert layer_1["cosine"] == pytest.approx(cosine, abs=1e-6)
    assert summary["nonfinite_tensors"] == []


def test_alpha_scales_the_output_not_the_measured_delta(tmp_path):
    trio = make_trio(tmp_path / "in")
    plain = _merge(trio, tmp_path / "a").stats.delta.summary()["overall"]
    scaled = _merge(trio, tmp_path / "b", alpha=0.25).stats.delta.summary()["overall"]
    assert scaled == plain


def test_a_post_model_identical_to_its_base_has_no_cosine(tmp_path):
    config = llama_config()
    base = random_state_dict(config, seed=0)
    trio = {
        "base": save_checkpoint(tmp_path / "base", base, config),
        "post": save_checkpoint(tmp_path / "post", base, config),
        "new_base": save_checkpoint(tmp_path / "new", perturbed(base, seed=1), config),
    }
    overall = _merge(trio, tmp_path / "out").stats.delta.summary()["overall"]
    assert overall["post_delta_norm"] == 0.0
    assert overall["base_update_norm"] > 0
    assert overall["cosine"] is None


def _trio_with(tmp_path, role, name, index, value, config=None):
    config = config or llama_config()
    base = random_state_dict(config, seed=0)
    states = {"base": base, "post": perturbed(base, seed=1), "new_base": perturbed(base, seed=2)}
    states[role][name].view(-1)[index] = value
    return {r: save_checkpoint(tmp_path / r, s, config) for r, s in states.items()}


@pytest.mark.parametrize(
    ("role", "value", "message"),
    [
        (
            "post",
            math.nan,
            "merged tensor 'model.layers.1.mlp.up_proj.weight' is not finite: 1 NaN and 0 Inf"
            " values in a chunk of 8192 elements (the inputs hold them there: post 1 NaN/0 Inf)",
        ),
        (
            "new_base",
            math.inf,
            "merged tensor 'model.layers.1.mlp.up_proj.weight' is not finite: 0 NaN and 1 Inf"
            " values in a chunk of 8192 elements (the inputs hold them there: new base 0 NaN/1 Inf)",
        ),
        (
            "base",
            -math.inf,
            "merged tensor 'model.layers.1.mlp.up_proj.weight' is not finite: 0 NaN and 1 Inf"
            " values in a chunk of 8192 elements (the inputs hold them there: base 0 NaN/1 Inf)",
        ),
    ],
)
def test_a_non_finite_input_fails_the_merge_naming_the_tensor(tmp_path, role, value, message):
    trio = _trio_with(tmp_path, role, "model.layers.1.mlp.up_proj.weight", 5, value)
    with pytest.raises(CheckpointError) as failure:
        _merge(trio, tmp_path / "out")
    assert str(failure.value) == message
    assert failure.value.exit_code == 3
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_an_output_that_overflows_its_dtype_fails_the_merge(tmp_path):
    config = llama_config()
    base = random_state_dict(config, seed=0, dtype=torch.float16)
    post = dict(base)
    post["model.norm.weight"] = base["model.norm.weight"] + 1.0  # a delta of 1 per element
    trio = {
        "base": save_checkpoint(tmp_path / "base", base, config),
        "post": save_checkpoint(tmp_path / "post", post, config),
        "new_base": save_checkpoint(tmp_path / "new", base, config),
    }
    with pytest.raises(CheckpointError) as failure:
        _merge(trio, tmp_path / "out", alpha=1e5)  # 1 + 1e5 * 1 > 65504
    assert str(failure.value) == (
        "merged tensor 'model.norm.weight' is not finite: 0 NaN and 64 Inf values in a chunk"
        " of 64 elements (the inputs are finite there: the result overflows float16)"
    )


def test_a_non_finite_row_copied_from_the_post_model_fails_the_merge(tmp_path):
    config = llama_config(vocab_size=256)
    base = random_state_dict(config, seed=0)
    post = perturbed(base, seed=1)
    extra = torch.zeros(4, 64, dtype=torch.bfloat16)
    extra[2, 3] = math.nan
    post["lm_head.weight"] = torch.cat([post["lm_head.weight"], extra])
    post["model.embed_tokens.weight"] = torch.cat(
        [post["model.embed_tokens.weight"], torch.zeros_like(extra)]
    )  # extra * 0 keeps the NaN
    trio = {
        "base": save_checkpoint(tmp_path / "base", base, config),
        "post": save_checkpoint(tmp_path / "post", post, dict(config, vocab_size=260)),
        "new_base": save_checkpoint(tmp_path / "new", perturbed(base, seed=2), config),
    }
    with pytest.raises(CheckpointError) as failure:
        _merge(trio, tmp_path / "out", vocab_policy="shared")
    assert str(failure.value) == (
        "tensor 'lm_head.weight': 1 NaN and 0 Inf values in the elements copied from the post"
        " checkpoint"
    )


@pytest.mark.parametrize(
    ("name", "group"),
    [
        ("model.embed_tokens.weight", EMBEDDINGS),
        ("model.layers.12.self_attn.q_proj.weight", 12),
        ("transformer.h.3.attn.c_attn.weight", 3),
        ("model.language_model.layers.0.mlp.up_proj.weight", 0),
        ("model.norm.weight", OTHER),
        ("lm_head.weight", HEAD),
        ("transformer.wte.weight", EMBEDDINGS),
        # Vision-language models, as transformers saves Gemma 3, Llava and Qwen2-VL: the
        # vision tower's layers and embeddings are not the language model's.
        ("language_model.model.layers.0.mlp.up_proj.weight", 0),
        ("language_model.model.embed_tokens.weight", EMBEDDINGS),
        ("vision_tower.encoder.layers.0.mlp.fc1.weight", VISION),
        ("vision_tower.embeddings.patch_embedding.weight", VISION),
        ("vision_tower.vision_model.encoder.layers.3.self_attn.q_proj.weight", VISION),
        ("multi_modal_projector.mm_input_projection_weight", PROJECTOR),
        ("model.multi_modal_projector.linear_1.weight", PROJECTOR),
        ("visual.blocks.1.attn.qkv.weight", VISION),
        ("model.visual.patch_embed.proj.weight", VISION),
        ("visual.merger.mlp.0.weight", PROJECTOR),
        ("model.vision_model.encoder.layers.0.mlp.fc1.weight", VISION),
        ("model.connector.modality_projection.proj.weight", PROJECTOR),
    ],
)
def test_tensors_are_grouped_by_layer(name, group):
    assert group_of(name) == group


def _flat(tensors, a, b):
    """``a - b`` over every tensor, in float64 (the definition)."""
    return torch.cat(
        [(tensors[a][n].double() - tensors[b][n].double()).flatten() for n in tensors[a]]
    )


def _cos(x, y):
    return float(x @ y / (x.norm() * y.norm()))


def test_several_deltas_report_each_norm_its_base_update_and_every_pair(tmp_path):
    five = two_deltas(tmp_path / "in")
    # The third delta is the first again, scaled: the pair cosines are 1.
    five["post[2]"], five["base[2]"] = five["post"], five["base"]
    sources = {role: LocalSource(path) for role, path in five.items()}
    result = merge(sources, tmp_path / "out", weights=(0.5, 2.0, -1.0), max_memory=16_000 * 8)
    summary = result.stats.delta.summary()
    overall = summary["overall"]
    inputs = {role: load_tensors(path) for role, path in five.items()}
    deltas = [_flat(inputs, f"post{s}", f"base{s}") for s in ("", "[1]", "[2]")]
    updates = [_flat(inputs, "new_base", f"base{s}") for s in ("", "[1]", "[2]")]
    for got, delta, update in zip(overall["deltas"], deltas, updates, strict=True):
        assert got["post_delta_norm"] == pytest.approx(float(delta.norm()), rel=1e-5)
        assert got["base_update_norm"] == pytest.approx(float(update.norm()), rel=1e-5)
        assert got["cosine"] == pytest.approx(_cos(delta, update), abs=1e-6)
    cosines = overall["delta_cosines"]
    assert cosines[0][1] == cosines[1][0] == pytest.approx(_cos(deltas[0], deltas[1]), abs=1e-6)
    assert cosines[0][2] == cosines[2][0] == 1.0  # unscaled: the weights do not enter
    assert [cosines[i][i] for i in range(3)] == [1.0, 1.0, 1.0]
    # The top level is the first delta's, as for one delta; layers have every delta too.
    first = overall["deltas"][0]
    assert (overall["post_delta_norm"], overall["cosine"]) == (
        first["post_delta_norm"],
        first["cosine"],
    )
    assert all(len(layer["deltas"]) == 3 for layer in summary["layers"])
    assert set(overall["nonfinite"]) == {
        "post", "base", "new_base", "output", "post[1]", "base[1]", "post[2]", "base[2]",
    }  # fmt: skip


def test_a_nan_in_a_later_delta_names_that_delta(tmp_path):
    five = two_deltas(tmp_path / "in")
    config = llama_config()
    state = load_tensors(five["post[1]"])
    state["model.layers.1.mlp.up_proj.weight"].view(-1)[5] = math.nan
    five["post[1]"] = save_checkpoint(tmp_path / "nan", state, config)
    sources = {role: LocalSource(path) for role, path in five.items()}
    with pytest.raises(CheckpointError) as failure:
        merge(sources, tmp_path / "out", weights=(1.0, 1.0))
    assert str(failure.value) == (
        "merged tensor 'model.layers.1.mlp.up_proj.weight' is not finite: 1 NaN and 0 Inf"
        " values in a chunk of 8192 elements (the inputs hold them there: post[1] 1 NaN/0 Inf)"
    )
