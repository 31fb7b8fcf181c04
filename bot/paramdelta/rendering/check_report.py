"""The pre-publish check's report as people read it: step titles, the Markdown table."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from paramdelta.rendering import markdown

STEP_TITLES = {
    "tokenizer": "tokenizer loads",
    "processor": "processor loads",
    "chat_template": "chat template renders",
    "load": "model loads",
    "logits": "logits are finite",
    "generation": "greedy generation gives text",
    "image_generation": "greedy generation from an image gives text",
    "perplexity": "perplexity",
}


def check_table(check: Mapping[str, Any]) -> str:
    """A report's steps and perplexity numbers as a Markdown table (for issues)."""
    lines = ["| check | result | detail |", "| --- | --- | --- |"]
    for step in check.get("steps", []):
        result = "pass" if step["passed"] else "**fail**"
        detail = markdown.text(str(step["detail"]))  # may quote what the model wrote
        lines.append(f"| {STEP_TITLES.get(step['step'], step['step'])} | {result} | {detail} |")
    perplexity = check.get("perplexity")
    if perplexity:
        numbers = ", ".join(
            f"{key} {perplexity.get(key)}"
            for key in ("merged", "post", "new_base", "better", "ratio", "factor")
        )
        lines += ["", f"Perplexity: {numbers}."]
    return "\n".join(lines) + "\n"
