"""The pre-publish check on tiny transformers models made here, deterministically."""

import math

import pytest
import torch
from safetensors.torch import save_file

from merging import merge
from paramdelta.engine.checkpoint import LocalSource
from paramdelta.pipeline.check import run_check
from paramdelta.testing.checkpoints import (
    donor_files,
    llama_config,
    load_tensors,
    make_trio,
    random_state_dict,
    save_checkpoint,
)

pytest.importorskip("transformers")

pytestmark = pytest.mark.slow  # transformers: the pre-publish check


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    return make_trio(tmp_path_factory.mktemp("trio"))


def _references(trio):
    return {role: LocalSource(trio[role]) for role in ("post", "new_base")}


def _merged(trio, out, **options):
    sources = {role: LocalSource(path) for role, path in trio.items()}
    return merge(sources, out, **options).out_dir


def _steps(report):
    return {s.step: s.passed for s in report.steps}


def test_a_proper_merge_passes_with_its_numbers(trio, tmp_path):
    report = run_check(_merged(trio, tmp_path / "out"), _references(trio), device="cpu")
    assert report.status == "passed" and report.reason is None
    assert _steps(report) == {
        "tokenizer": True,
        "chat_template": True,
        "load": True,
        "logits": True,
        "generation": True,
        "perplexity": True,
    }
    assert report.device == "cpu" and report.seconds > 0
    ppl = report.perplexity
    # Random tiny models: every perplexity is near the vocabulary's 256, and close together.
    assert 200 < ppl["merged"] < 300 and 200 < ppl["post"] < 300 and 200 < ppl["new_base"] < 300
    assert ppl["better"] == min(ppl["post"], ppl["new_base"])
    assert ppl["ratio"] == pytest.approx(ppl["merged"] / ppl["better"], rel=1e-4)
    assert ppl["factor"] == 3.0 and ppl["passed"] is True
    assert ppl["texts"] == 7 and ppl["tokens"] > 2000
    assert [g["problem"] for g in report.generation] == [None] * 4
    # The tiny models step through the vocabulary: after '>' (33) come 40, 47, 54, ...
    assert report.generation[0]["text"].startswith("ELSZaho")
    assert report.generation[0]["tokens"] == 16


def test_a_huge_alpha_fails_on_perplexity(trio, tmp_path):
    report = run_check(
        _merged(trio, tmp_path / "out", alpha=100.0), _references(trio), device="cpu"
    )
    assert report.status == "failed"
    assert report.perplexity["ratio"] > 3.0 and report.perplexity["passed"] is False
    assert report.reason.startswith("perplexity: merged ")
    assert " is over 3 x " in report.reason
    assert _steps(report)["load"] and _steps(report)["chat_template"]


def _rewrite_weights(directory, change):
    tensors = load_tensors(directory)
    change(tensors)
    save_file(tensors, directory / "model.safetensors", {"format": "pt"})


def test_a_checkpoint_holding_nan_fails_on_its_logits(trio, tmp_path):
    out = _merged(trio, tmp_path / "out")

    def poison(tensors):
        tensors["model.layers.0.self_attn.q_proj.weight"][0, 0] = math.nan

    _rewrite_weights(out, poison)
    report = run_check(out, _references(trio), device="cpu")
    assert report.status == "failed"
    assert report.reason == "logits are finite: NaN or Inf in the logits of the fixed texts"
    assert report.perplexity["merged"] is None  # NaN, which JSON cannot hold
    assert report.perplexity["passed"] is False
    assert [s.detail for s in report.steps if s.step == "perplexity"] == [
        f"merged nan is over 3 x {report.perplexity['better']:.4g}, the better of"
        f" post {report.perplexity['post']:.4g}, new base {report.perplexity['new_base']:.4g}"
    ]


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        (
            "{{ raise_exception('this template refuses') }}",
            "chat template renders: does not render: TemplateError: this template refuses",
        ),
        (
            "{% for m in messages %}{{ m['content'] }",
            "chat template renders: does not render: TemplateSyntaxError:",
        ),
        (
            "{% for m in messages %}{{ m['role'] }}{% endfor %}",
            "chat template renders: the rendered text does not hold the last message",
        ),
    ],
)
def test_a_chat_template_that_does_not_render_fails(trio, tmp_path, template, reason):
    out = _merged(trio, tmp_path / "out")
    (out / "chat_template.jinja").write_text(template)
    report = run_check(out, _references(trio), device="cpu")
    assert report.status == "failed"
    assert report.reason.startswith(reason)
    assert _steps(report)["chat_template"] is False
    assert _steps(report)["perplexity"] is True  # the other steps still ran, on plain prompts


def test_a_model_that_repeats_one_token_fails_on_generation(tmp_path):
    config = llama_config()
    state = random_state_dict(config, seed=0)
    # A random LM head (not the factory's shifted one): the next token is then mostly a
    # fixed function of the last one, and with this seed it settles on token 33 at once.
    generator = torch.Generator().manual_seed(0)
    state["lm_head.weight"] = (0.02 * torch.randn(256, 64, generator=generator)).bfloat16()
    model = save_checkpoint(tmp_path / "model", state, config, extra_files=donor_files("post"))
    report = run_check(model, {}, device="cpu")
    assert report.status == "failed"
    assert report.reason.startswith("greedy generation gives text: 0 of 4 prompts; ")
    assert "gives one token repeated (16 of 16 are token" in report.reason
    # Without references the perplexity is measured, not compared.
    assert report.perplexity["better"] is None
    assert _steps(report)["perplexity"] is True


def test_a_tokenizer_that_does_not_load_stops_the_check(trio, tmp_path):
    out = _merged(trio, tmp_path / "out")
    (out / "tokenizer.json").write_text("{not json")
    report = run_check(out, _references(trio), device="cpu")
    assert report.status == "failed"
    assert report.reason.startswith("tokenizer loads: does not load: ")
    assert [s.step for s in report.steps] == ["tokenizer"]


def test_a_reference_that_does_not_load_leaves_the_other(trio, tmp_path):
    out = _merged(trio, tmp_path / "out")
    broken = tmp_path / "broken-post"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    references = {"post": LocalSource(broken), "new_base": LocalSource(trio["new_base"])}
    report = run_check(out, references, device="cpu")
    assert report.status == "passed"
    assert report.perplexity["post"] is None
    assert report.perplexity["better"] == report.perplexity["new_base"]


def _adapter_references(trio, adapter):
    return {
        "post": LocalSource(adapter),
        "new_base": LocalSource(trio["new_base"]),
        "base": LocalSource(trio["base"]),
    }


def test_an_adapter_post_is_measured_as_the_adapter_on_its_base(trio, tmp_path):
    from paramdelta.testing.adapters import peft_adapter

    adapter = peft_adapter(tmp_path / "ad", trio["base"])
    sources = {"base": LocalSource(trio["base"]), "post": LocalSource(adapter)}
    out = merge({**sources, "new_base": LocalSource(trio["new_base"])}, tmp_path / "out").out_dir
    # The adapter merged onto its own base is the post model, up to bfloat16 rounding.
    on_base = merge({**sources, "new_base": LocalSource(trio["base"])}, tmp_path / "on-base")
    expected = run_check(on_base.out_dir, {}, device="cpu").perplexity["merged"]
    report = run_check(out, _adapter_references(trio, adapter), device="cpu")
    assert report.status == "passed"
    assert report.perplexity["post"] == pytest.approx(expected, rel=1e-3)


def test_without_peft_an_adapter_post_is_not_measured_and_the_log_says_so(
    trio, tmp_path, monkeypatch, caplog
):
    import importlib.util

    from paramdelta.testing.adapters import adapter_config, lora_tensors, write_adapter

    shapes = {n: t.shape for n, t in load_tensors(trio["base"]).items()}
    adapter = write_adapter(tmp_path / "ad", lora_tensors(shapes), adapter_config(4, 8))
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "peft" else find_spec(name, *a),
    )
    report = run_check(
        _merged(trio, tmp_path / "out"), _adapter_references(trio, adapter), device="cpu"
    )
    assert report.perplexity["post"] is None
    assert report.perplexity["better"] == report.perplexity["new_base"]
    assert "peft is not installed: the post model (an adapter on its base) is not measured" in (
        caplog.messages
    )
