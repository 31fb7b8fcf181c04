"""Tiny vision-language trios made with transformers, offline: Gemma 3, Qwen2-VL and Llava.

Each model is built from a tiny config (random init; the base from one seed, the
post model and the new base the base plus noise of their own seeds), saved with
`save_pretrained` in bf16, with its processor saved alongside: the character-level
tokenizer of `paramdelta.testing.checkpoints` plus the family's image tokens, the
family's image processor at 28 px, and a chat template that names the checkpoint
it came from (so a test can tell which one the output's is).

Qwen2-VL's processor needs a video processor, which transformers builds only with
torchvision; without it, its trio gets the processor's files written by hand
(preprocessor_config.json, video_preprocessor_config.json, chat_template.json:
the older names), which is all a merge reads, and its check test is skipped.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

from paramdelta.testing.checkpoints import (
    FIRST_PLAIN_TOKEN,
    NEXT_TOKEN_STEP,
    TOKEN_CHARS,
    tokenizer_json,
)

FAMILIES = ("gemma3", "qwen2_vl", "llava")
PLAIN = len(TOKEN_CHARS) + FIRST_PLAIN_TOKEN  # 256: the ids of the character tokenizer
IMAGE_PX = 28
TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "vocab_size": 264,  # the characters, the family's image tokens, a few spare rows
    "max_position_embeddings": 256,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
    "tie_word_embeddings": False,
}
# Each family's image tokens (ids from 256 on) and the tokenizer attributes naming them.
TOKENS = {
    "gemma3": (
        ("<start_of_image>", "<end_of_image>", "<image_soft_token>"),
        {
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
        },
    ),
    "qwen2_vl": (
        ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"),
        {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
    ),
    "llava": (("<image>",), {"image_token": "<image>"}),
}
# How each family's chat template writes an image part.
IMAGE_IN_TEMPLATE = {
    "gemma3": "<start_of_image>",
    "qwen2_vl": "<|vision_start|><|image_pad|><|vision_end|>",
    "llava": "<image>",
}


def chat_template(family: str, role: str) -> str:
    """A processor chat template: typed parts (text, image) or plain content."""
    image = IMAGE_IN_TEMPLATE[family]
    return (
        f"{{#- the {role} model's chat template -#}}\n"
        "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>"
        "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
        "{% for part in m['content'] %}{% if part['type'] == 'image' %}" + image + "{% else %}"
        "{{ part['text'] }}{% endif %}{% endfor %}{% endif %}\n"
        "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )


def _config(family: str):
    import transformers

    if family == "gemma3":
        return transformers.Gemma3Config(
            text_config={**TEXT, "sliding_window": 32},
            vision_config={
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "image_size": IMAGE_PX,
                "patch_size": 7,
            },
            mm_tokens_per_image=4,
            boi_token_index=256,
            eoi_token_index=257,
            image_token_index=258,
            tie_word_embeddings=False,
        )
    if family == "qwen2_vl":
        return transformers.Qwen2VLConfig(
            text_config={**TEXT, "rope_scaling": {"type": "mrope", "mrope_section": [2, 2, 4]}},
            vision_config={
                "depth": 2,
                "embed_dim": 32,
                "hidden_size": 64,
                "num_heads": 2,
                "mlp_ratio": 2,
                "patch_size": 14,
                "spatial_merge_size": 2,
                "temporal_patch_size": 2,
            },
            vision_start_token_id=256,
            vision_end_token_id=257,
            image_token_id=258,
            video_token_id=259,
            tie_word_embeddings=False,
        )
    return transformers.LlavaConfig(
        text_config={**TEXT, "model_type": "llama"},
        vision_config={
            "model_type": "clip_vision_model",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": IMAGE_PX,
            "patch_size": 14,
            "projection_dim": 32,
        },
        image_token_index=256,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        tie_word_embeddings=False,
    )


def _processor(family: str, role: str, directory: Path):
    """The family's processor, or None for Qwen2-VL without torchvision."""
    import transformers

    tokens, named = TOKENS[family]
    (directory / "tokenizer.json").write_text(tokenizer_json(tokens))
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(directory / "tokenizer.json"),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<unk>",
        extra_special_tokens=named,
    )
    template = chat_template(family, role)
    if family == "gemma3":
        from transformers.models.gemma3.image_processing_pil_gemma3 import (
            Gemma3ImageProcessorPil,
        )

        images = Gemma3ImageProcessorPil(size={"height": IMAGE_PX, "width": IMAGE_PX})
        return transformers.Gemma3Processor(images, tokenizer, template, image_seq_length=4)
    if family == "llava":
        from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

        images = LlavaImageProcessorPil(
            size={"shortest_edge": IMAGE_PX}, crop_size={"height": IMAGE_PX, "width": IMAGE_PX}
        )
        return transformers.LlavaProcessor(
            images,
            tokenizer,
            patch_size=14,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
            chat_template=template,
        )
    tokenizer.save_pretrained(directory)
    images = {"min_pixels": IMAGE_PX**2, "max_pixels": IMAGE_PX**2, "patch_size": 14}
    images |= {"merge_size": 2, "temporal_patch_size": 2}
    if importlib.util.find_spec("torchvision") is not None:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
            Qwen2VLImageProcessorPil,
        )

        return transformers.Qwen2VLProcessor(
            Qwen2VLImageProcessorPil(**images), tokenizer, chat_template=template
        )
    # What transformers 4 saved for a Qwen2-VL processor, written by hand.
    kind = {"image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2VLProcessor"}
    (directory / "preprocessor_config.json").write_text(json.dumps(images | kind))
    video = {"video_processor_type": "Qwen2VLVideoProcessor"} | images
    (directory / "video_preprocessor_config.json").write_text(json.dumps(video))
    (directory / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    return None


def _shift_lm_head(model) -> None:
    """Row i + NEXT_TOKEN_STEP of the LM head is embedding i (as the Llama trios' are):
    greedy text moves on through the vocabulary instead of repeating one token."""
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    plain = PLAIN - FIRST_PLAIN_TOKEN
    ids = torch.arange(FIRST_PLAIN_TOKEN, PLAIN)
    after = FIRST_PLAIN_TOKEN + (ids - FIRST_PLAIN_TOKEN + NEXT_TOKEN_STEP) % plain
    head.data[after] = embed.data[ids]


def _quiet_sandwich_norms(model) -> None:
    """Gemma normalises each block's output (weights w scale by 1 + w) to about the size of
    its input embedding's (x sqrt(hidden)); random blocks would then drown the token that
    `_shift_lm_head` relies on. At 1 + w = 0.03 the embedding leads, as in a trained model."""
    for name, parameter in model.named_parameters():
        if name.endswith(("post_attention_layernorm.weight", "post_feedforward_layernorm.weight")):
            parameter.data.fill_(-0.97)


def make_vlm_trio(root: Path, family: str, *, seed: int = 0) -> dict[str, Path]:
    """base, post and new_base of a tiny ``family`` VLM under ``root``; role -> directory."""
    import transformers

    config = _config(family)
    architecture = transformers.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING[type(config)]
    out = {}
    for offset, role in enumerate(("base", "post", "new_base")):
        torch.manual_seed(seed)  # every role starts from the base's weights
        model = architecture(config)
        _shift_lm_head(model)
        if family == "gemma3":
            _quiet_sandwich_norms(model)
        if role != "base":  # then moves by noise of its own seed
            generator = torch.Generator().manual_seed(seed + offset)
            for parameter in model.parameters():
                noise = torch.randn(parameter.shape, generator=generator)
                parameter.data += 0.002 * noise
        directory = root / role
        directory.mkdir(parents=True)
        model.to(torch.bfloat16).save_pretrained(directory)
        processor = _processor(family, role, directory)
        if processor is not None:
            processor.save_pretrained(directory)
        out[role] = directory
    return out
