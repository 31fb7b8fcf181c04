"""The model card (README.md): ModelCardData front matter plus a sandboxed Jinja body.

The body template is user-editable, so it is rendered in Jinja's
SandboxedEnvironment: a template cannot reach Python internals, and every
value is HTML-escaped, so a repo name holding ``{{ }}`` or markup shows as
text. huggingface_hub's own `ModelCard.from_template` renders unsandboxed,
which is why only the front matter goes through it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from huggingface_hub import ModelCard, ModelCardData
from jinja2.sandbox import SandboxedEnvironment

from paramdelta import PROJECT_URL
from paramdelta.bot import chart
from paramdelta.bot.check_rules import STEP_TITLES
from paramdelta.bot.lineage import build_record
from paramdelta.engine.layout import ROLE_TITLES, ROLES

DEFAULT_TEMPLATE = "templates/model_card.md.j2"
BASE_TAGS = ("merge", "paramdelta")
HF_URL = "https://huggingface.co"


def _environment() -> SandboxedEnvironment:
    return SandboxedEnvironment(
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=False,
    )


def load_template(path: Path | None) -> str:
    if path is None:
        return resources.files("paramdelta").joinpath(DEFAULT_TEMPLATE).read_text()
    return path.read_text()


def licence(
    card_data: Mapping[str, Mapping[str, Any]],
) -> tuple[str | None, str | None, str | None]:
    """(licence id, the role it came from, a note if new base and post disagree)."""
    new = card_data.get("new_base", {}).get("license")
    post = card_data.get("post", {}).get("license")
    note = None
    if new and post and new != post:
        note = (
            f"the new base is licensed `{new}` and the post-trained model `{post}`;"
            " this merge is derived from both, so both sets of terms may apply."
        )
    if new:
        return str(new), "new_base", note
    if post:
        return str(post), "post", note
    return None, None, note


def is_llama_licence(licence_id: str | None) -> bool:
    return bool(licence_id) and str(licence_id).lower().startswith("llama")


def reproduce_command(record: Mapping[str, Any], output: str) -> str:
    by_role = {c["role"]: c for c in record["checkpoints"]}
    recipe = record["recipe"]
    parts = ["paramdelta merge"]
    for role in ROLES:
        c = by_role[role]
        parts.append(f"--{role.replace('_', '-')} {c['repo']}@{c['sha']}")
    if recipe["alpha"] != 1.0:
        parts.append(f"--alpha {recipe['alpha']}")
    if recipe["dtype"] != "auto":
        parts.append(f"--dtype {recipe['dtype']}")
    if recipe["vocab_policy"] != "error":
        parts.append(f"--vocab-policy {recipe['vocab_policy']}")
    parts.append(f"--output {output.partition('/')[2] or output}")
    return " \\\n  ".join(parts)


def card_context(
    record: Mapping[str, Any], card_data: Mapping[str, Mapping[str, Any]], hub_url: str
) -> dict[str, Any]:
    output = record["output"].get("repo") or "merged-model"
    lic, lic_from, note = licence(card_data)
    checkpoints = []
    for c in record["checkpoints"]:
        url = f"{hub_url}/{c['repo']}"
        checkpoints.append(
            {
                **c,
                "title": ROLE_TITLES[c["role"]],
                "url": url,
                "commit_url": f"{url}/commit/{c['sha']}",
            }
        )
    by_role = {c["role"]: c for c in checkpoints}
    repos = " ".join(c["repo"] for c in checkpoints) + " " + output
    return {
        "model_name": output,
        "checkpoints": checkpoints,
        "base": by_role["base"],
        "post": by_role["post"],
        "new_base": by_role["new_base"],
        "license": lic,
        "license_from": lic_from,
        "license_note": note,
        "llama": is_llama_licence(lic) or "llama" in repos.lower(),
        "reproduce": reproduce_command(record, output),
        "files": sorted(
            (path, ROLE_TITLES.get(role, role))
            for path, role in record["recipe"]["file_donors"].items()
        ),
        "delta": delta_rows(record.get("delta")),
        "chart": chart.FILENAME if record.get("delta") else None,
        "check": check_rows(record.get("check")),
    }


def _number(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value != value:  # NaN
        return "NaN"
    return f"{value:.{digits}g}"


def _delta_row(title: str, group: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "layer": title,
        "tensors": group["tensors"],
        "post_delta": _number(group["post_delta_norm"]),
        "base_update": _number(group["base_update_norm"]),
        "cosine": _number(group["cosine"], 3),
        "nonfinite": sum(group["nonfinite"].values()),
    }


def delta_rows(delta: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The delta report as the card's table shows it: an overall row, then one per layer."""
    if not delta:
        return None
    layers = [
        _delta_row(f"layer {g['layer']}" if isinstance(g["layer"], int) else g["layer"], g)
        for g in delta["layers"]
    ]
    return {"overall": _delta_row("all", delta["overall"]), "layers": layers}


def check_rows(check: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The pre-publish check as the card shows it: its status, steps and numbers."""
    if not check:
        return None
    steps = [
        {"title": STEP_TITLES.get(s["step"], s["step"]), "passed": s["passed"], **s}
        for s in check.get("steps", [])
    ]
    return {**check, "steps": steps}


def front_matter(
    record: Mapping[str, Any], card_data: Mapping[str, Mapping[str, Any]], tags: Sequence[str]
) -> ModelCardData:
    by_role = {c["role"]: c["repo"] for c in record["checkpoints"]}
    lic, lic_from, _ = licence(card_data)
    extra: dict[str, Any] = {}
    donor = card_data.get(lic_from or "", {})
    if lic == "other":  # a custom licence is named and linked, not identified
        extra = {k: donor[k] for k in ("license_name", "license_link") if donor.get(k)}
    return ModelCardData(
        base_model=[by_role["new_base"], by_role["post"], by_role["base"]],
        base_model_relation="merge",
        library_name="transformers",
        pipeline_tag="text-generation",
        license=lic,
        tags=[*BASE_TAGS, *(t for t in tags if t not in BASE_TAGS)],
        **extra,
    )


def render_card(
    record: Mapping[str, Any],
    *,
    card_data: Mapping[str, Mapping[str, Any]] | None = None,
    template: Path | None = None,
    tags: Sequence[str] = (),
    hub_url: str = HF_URL,
) -> str:
    """README.md for a merge: YAML front matter, then the rendered template."""
    card_data = card_data or {}
    body = (
        _environment()
        .from_string(load_template(template))
        .render(
            lineage=record,
            card=card_context(record, card_data, hub_url),
            hub_url=hub_url,
            project_url=PROJECT_URL,
        )
    )
    meta = front_matter(record, card_data, tags)
    return str(ModelCard(f"---\n{meta.to_yaml()}\n---\n\n{body.lstrip()}"))


def sample_record() -> dict[str, Any]:
    """A plausible record to try a template against before any merge happens."""
    sha = "0123456789abcdef0123456789abcdef01234567"
    group = {
        "tensors": 1,
        "elements": 2,
        "post_delta_norm": 0.5,
        "base_update_norm": 0.25,
        "cosine": 0.01,
        "nonfinite": {"post": 0, "base": 0, "new_base": 0, "output": 0},
    }
    perplexity = {"merged": 9.5, "post": 9.0, "new_base": 8.0, "better": 8.0, "ratio": 1.19}
    check = {
        "status": "passed",
        "reason": None,
        "device": "cpu",
        "seconds": 1.0,
        "steps": [{"step": "perplexity", "passed": True, "detail": "merged 9.5 is within 3 x 8"}],
        "generation": [{"prompt": "Hi", "text": "Hello!", "tokens": 3, "problem": None}],
        "perplexity": perplexity | {"factor": 3.0, "passed": True, "texts": 1, "tokens": 9},
    }
    record = build_record(
        target="example",
        checkpoints={
            role: {"repo": f"example-org/{role}-model", "revision": "main", "sha": sha}
            for role in ROLES
        },
        recipe={"alpha": 1.0, "dtype": "auto", "vocab_policy": "error"},
        files={"config.json": "new_base", "tokenizer.json": "post"},
        output={
            "repo": "example-org/merged",
            "tensors": 1,
            "bytes": 2,
            "shards": ["model.safetensors"],
        },
    )
    record["delta"] = {
        "overall": group,
        "layers": [{"layer": 0, **group}],
        "nonfinite_tensors": [],
    }
    record["check"] = check
    return record


def check_template(path: Path) -> str | None:
    """None if the template renders against a sample record, else the one-line reason."""
    try:
        render_card(sample_record(), template=path)
    except OSError as e:
        return f"cannot read {path}: {e.strerror}"
    except jinja2.TemplateSyntaxError as e:
        return f"{path}:{e.lineno}: template syntax error: {e.message}"
    except jinja2.TemplateError as e:
        return f"{path}: template error: {e}"
    return None
