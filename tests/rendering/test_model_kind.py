"""Which kind of model a config describes: with transformers' mapping, and without it."""

import pytest

from paramdelta.rendering import model_kind
from paramdelta.rendering.model_kind import TEXT, VISION_LANGUAGE, architecture, kind_of


def _config(model_type, name, vision=True):
    config = {"model_type": model_type, "architectures": [name], "text_config": {}}
    if vision:
        config["vision_config"] = {"hidden_size": 32}
    return config


CASES = [
    (_config("gemma3", "Gemma3ForConditionalGeneration"), VISION_LANGUAGE),
    (_config("qwen2_vl", "Qwen2VLForConditionalGeneration"), VISION_LANGUAGE),
    (_config("llava", "LlavaForConditionalGeneration"), VISION_LANGUAGE),
    (_config("mistral3", "Mistral3ForConditionalGeneration"), VISION_LANGUAGE),
    (_config("llama", "LlamaForCausalLM", vision=False), TEXT),
    (_config("gemma3_text", "Gemma3ForCausalLM", vision=False), TEXT),  # text-only Gemma 3
    (_config("t5", "T5ForConditionalGeneration", vision=False), TEXT),
]


@pytest.mark.parametrize(("config", "kind"), CASES)
def test_transformers_mapping_decides(config, kind):
    pytest.importorskip("transformers")
    assert kind_of(architecture(config)) == kind
    assert kind_of(config) == kind  # a config.json has the same fields


@pytest.mark.parametrize(("config", "kind"), CASES)
def test_without_transformers_the_architecture_name_and_vision_config_decide(
    config, kind, monkeypatch
):
    monkeypatch.setattr(model_kind, "_image_text_to_text", lambda: None)
    assert kind_of(architecture(config)) == kind


def test_transformers_wants_the_mapped_class():
    pytest.importorskip("transformers")
    # A model_type transformers maps to image-text-to-text, but another class: not a VLM.
    assert kind_of(_config("gemma3", "Gemma3ForSequenceClassification")) == TEXT
    assert kind_of({"model_type": "gemma3"}) == VISION_LANGUAGE  # no architectures: the type


def test_the_record_keeps_three_fields_and_an_older_record_is_text():
    assert architecture(_config("llava", "LlavaForConditionalGeneration")) == {
        "model_type": "llava",
        "architectures": ["LlavaForConditionalGeneration"],
        "vision_config": True,
    }
    assert architecture({"architectures": "junk"}) == {
        "model_type": None,
        "architectures": [],
        "vision_config": False,
    }
    assert kind_of(None) == kind_of({}) == TEXT
    assert TEXT.pipeline_tag == "text-generation" and not TEXT.vision
    assert VISION_LANGUAGE == (
        "image-text-to-text",
        "AutoModelForImageTextToText",
        "AutoProcessor",
    )
