"""What a config.json describes for its users: a text model or a vision-language model.

The card's ``pipeline_tag`` and Use snippet and the pre-publish check's classes
follow from it. transformers decides where it is installed: a config is a
vision-language model when its ``model_type`` is in transformers' image-text-to-text
mapping and its architecture is the class mapped there (Gemma 3, Qwen2-VL, Llava and
the other ``*ForConditionalGeneration`` VLMs; ``gemma3_text``, a text-only Gemma 3,
is not). Without transformers (it is the optional ``check`` extra), the config's own
words decide: an architecture named ``*ForConditionalGeneration`` with a
``vision_config`` (T5's and Whisper's have none).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any, NamedTuple


class ModelKind(NamedTuple):
    pipeline_tag: str  # the Hub's task
    model_class: str  # the transformers auto class that loads the model
    processor_class: str  # and the one that loads what turns inputs into ids

    @property
    def vision(self) -> bool:
        return self.processor_class == "AutoProcessor"


TEXT = ModelKind("text-generation", "AutoModelForCausalLM", "AutoTokenizer")
VISION_LANGUAGE = ModelKind("image-text-to-text", "AutoModelForImageTextToText", "AutoProcessor")


def architecture(config: Mapping[str, Any]) -> dict[str, Any]:
    """What the lineage record keeps of an output's config.json to tell its kind later."""
    names = config.get("architectures")
    return {
        "model_type": config.get("model_type"),
        "architectures": [n for n in names if isinstance(n, str)]
        if isinstance(names, list)
        else [],
        "vision_config": isinstance(config.get("vision_config"), dict),
    }


@cache
def _image_text_to_text() -> Mapping[str, str] | None:
    """transformers' model_type -> image-text-to-text class name; None without transformers."""
    try:
        from transformers.models.auto.modeling_auto import (
            MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
        )
    except ImportError:
        return None
    return dict(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)


def kind_of(described: Mapping[str, Any] | None) -> ModelKind:
    """The kind of a model from `architecture`'s fields (or a config.json: it has them)."""
    if not described:  # a record made before outputs named their architecture
        return TEXT
    model_type = described.get("model_type")
    names: Sequence[Any] = described.get("architectures") or []
    mapping = _image_text_to_text()
    if mapping is not None:
        mapped = mapping.get(model_type) if isinstance(model_type, str) else None
        vision = mapped is not None and (not names or mapped in names)
    else:
        has_vision = described.get("vision_config")
        vision = (has_vision is True or isinstance(has_vision, dict)) and any(
            isinstance(n, str) and n.endswith("ForConditionalGeneration") for n in names
        )
    return VISION_LANGUAGE if vision else TEXT
