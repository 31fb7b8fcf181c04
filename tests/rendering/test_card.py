import jinja2
import pytest
from huggingface_hub import ModelCard

from paramdelta.engine.recipe import Recipe
from paramdelta.pipeline.lineage import build_record, checkpoint_entry, sample_record
from paramdelta.rendering.card import check_template, render_card

SHA = {"base": "a" * 40, "post": "b" * 40, "new_base": "c" * 40}


def _record(card_data=None, **repos):
    repos = {"base": "org/base", "post": "org/post", "new_base": "org/new"} | repos
    card_data = card_data or {}
    return build_record(
        target="t",
        checkpoints={
            r: checkpoint_entry(r, repos[r], "main", SHA[r], card_data=card_data.get(r))
            for r in SHA
        },
        recipe=Recipe(alpha=0.5, dtype="bfloat16"),
        files={"config.json": "new_base", "tokenizer.json": "post"},
        output={"repo": "me/merged", "tensors": 3, "bytes": 10, "shards": ["model.safetensors"]},
    )


def test_front_matter_parses_with_model_card():
    text = render_card(_record({"new_base": {"license": "apache-2.0"}}), tags=["chat", "merge"])
    card = ModelCard(text)
    assert card.data.base_model == ["org/new", "org/post", "org/base"]
    assert card.data.base_model_relation == "merge"
    assert card.data.tags == ["merge", "paramdelta", "chat"]
    assert card.data.library_name == "transformers"
    assert card.data.license == "apache-2.0"
    body = card.text
    assert "| base | [org/base](https://huggingface.co/org/base) | `main` |" in body
    assert f"[`{'c' * 12}`](https://huggingface.co/org/new/commit/{'c' * 40})" in body
    assert "--base org/base@" + "a" * 40 in body
    assert "--alpha 0.5" in body and "--dtype bfloat16" in body
    assert "| `tokenizer.json` | post |" in body
    assert "arXiv:2504.21023" in body
    assert "Built with Llama" not in body


def test_licence_falls_back_to_post_and_notes_a_disagreement():
    fallback = ModelCard(render_card(_record({"post": {"license": "mit"}})))
    assert fallback.data.license == "mit"
    assert "(none declared; taken from the post-trained model)" in fallback.text
    both = ModelCard(
        render_card(_record({"new_base": {"license": "llama3.1"}, "post": {"license": "llama3"}}))
    )
    assert both.data.license == "llama3.1"
    assert "the new base is licensed `llama3.1` and the post-trained model `llama3`" in both.text
    assert both.text.rstrip().endswith("Built with Llama.")
    none = ModelCard(render_card(_record()))
    assert none.data.license is None
    assert "No licence was declared" in none.text


def test_custom_licence_keeps_its_name_and_link():
    data = {"license": "other", "license_name": "acme", "license_link": "https://acme.test/l"}
    card = ModelCard(render_card(_record({"new_base": data})))
    assert (card.data.license, card.data.license_name, card.data.license_link) == (
        "other",
        "acme",
        "https://acme.test/l",
    )


@pytest.mark.parametrize(
    ("name", "link"),
    [("Acme Licence", "javascript:alert(1)"), ("acme`\n# x", "https://acme.test/a b"), (3, "../x")],
)
def test_a_custom_licence_name_and_link_must_follow_the_hub_grammar(name, link):
    data = {"license": "other", "license_name": name, "license_link": link}
    card = ModelCard(render_card(_record({"new_base": data})))
    assert card.data.license == "other"
    assert card.data.license_name is None and card.data.license_link is None


def test_values_are_text_not_template_or_html():
    name = "org/{{ 7*7 }}<script>x</script>"
    card = ModelCard(render_card(_record(post=name)))
    assert "org/{{ 7*7 }}" in card.text and "org/49" not in card.text
    assert "<script>" not in card.text and "&lt;script&gt;" in card.text
    assert card.data.base_model[1] == name  # front matter is data, kept exactly


def test_upstream_file_names_stay_inline_code_whatever_they_hold():
    record = _record()
    hostile = "x` ![img](https://evil.test/i.png) `y"
    record["recipe"]["skipped_files"] = {hostile: "no rule for this file: not copied"}
    record["recipe"]["file_donors"]["NOTICE|a`b"] = "new_base"
    record["recipe"]["config_changes"] = {"eos_token_id": "`<|end|>`"}
    body = ModelCard(render_card(record)).text
    # A fence longer than any run of backticks inside: the span ends where it should.
    assert f"\n- ``{hostile}``: no rule for this file: not copied\n" in body
    assert "\n| ``NOTICE\\|a`b`` | new base |\n" in body  # one cell, one code span
    assert "`eos_token_id` = ``&#34;`&lt;|end|&gt;`&#34;``:" in body


def test_custom_template(tmp_path):
    template = tmp_path / "card.md.j2"
    template.write_text(
        "# {{ card.model_name }} from {{ card.post.repo }} ({{ lineage.recipe.alpha }})\n"
    )
    card = ModelCard(render_card(_record(), template=template))
    assert card.text.strip() == "# me/merged from org/post (0.5)"
    assert card.data.base_model_relation == "merge"


def test_hostile_template_is_refused_by_the_sandbox(tmp_path):
    template = tmp_path / "evil.j2"
    template.write_text("{{ ''.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(jinja2.exceptions.SecurityError):
        render_card(_record(), template=template)
    assert check_template(template, sample_record()) == (
        f"{template}: template error: access to attribute '__class__' of 'str' object is unsafe."
    )


def test_undefined_names_are_errors_not_blanks(tmp_path):
    template = tmp_path / "typo.j2"
    template.write_text("{{ card.modle_name }}")
    assert (
        check_template(template, sample_record())
        == f"{template}: template error: 'dict object' has no attribute 'modle_name'"
    )


def test_a_record_without_check_or_delta_still_renders():
    from paramdelta.rendering.card import render_card

    record = sample_record()
    del record["check"], record["delta"]
    text = render_card(record)
    assert "## Pre-publish check\n\nNo pre-publish check was recorded for this merge.\n" in text
    assert "## Delta report" not in text and "paramdelta-delta.png" not in text


def _record_of(architecture):
    record = _record()
    record["output"]["architecture"] = architecture
    return record


GEMMA3 = {
    "model_type": "gemma3",
    "architectures": ["Gemma3ForConditionalGeneration"],
    "vision_config": True,
}
LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vision_config": False}

VLM_SNIPPET = """```python
from transformers import AutoModelForImageTextToText, AutoProcessor

processor = AutoProcessor.from_pretrained("me/merged")
model = AutoModelForImageTextToText.from_pretrained("me/merged", dtype="auto")
image = "https://huggingface.co/datasets/huggingface/documentation-images/resolve/main/bee.jpg"
messages = [
    {
        "role": "user",
        "content": [{"type": "image", "url": image}, {"type": "text", "text": "Describe this image."}],
    }
]
inputs = processor.apply_chat_template(
    messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
).to(model.device)
outputs = model.generate(**inputs, max_new_tokens=64)
print(processor.decode(outputs[0][inputs["input_ids"].shape[-1] :], skip_special_tokens=True))
```
"""


def test_a_vision_language_model_gets_its_pipeline_tag_and_processor_snippet():
    pytest.importorskip("transformers")
    card = ModelCard(render_card(_record_of(GEMMA3)))
    assert card.data.pipeline_tag == "image-text-to-text"
    assert VLM_SNIPPET in card.text
    assert "AutoModelForCausalLM" not in card.text and "AutoTokenizer" not in card.text


@pytest.mark.parametrize("architecture", [LLAMA, None])
def test_a_text_model_and_an_older_record_get_text_generation(architecture):
    record = _record_of(architecture)
    if architecture is None:
        del record["output"]["architecture"]
    card = ModelCard(render_card(record))
    assert card.data.pipeline_tag == "text-generation"
    assert "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n" in card.text
    assert '    messages, add_generation_prompt=True, return_dict=True, return_tensors="pt"' in (
        card.text
    )
    assert "AutoProcessor" not in card.text
