"""The model card (README.md): ModelCardData front matter plus a sandboxed Jinja body.

The body template is user-editable, so it is rendered in Jinja's
SandboxedEnvironment: a template cannot reach Python internals, and every
value is HTML-escaped, so a repo name holding ``{{ }}`` or markup shows as
text. huggingface_hub's own `ModelCard.from_template` renders unsandboxed,
which is why only the front matter goes through it.

Upstream card data is untrusted: a licence is inherited only if it is a Hub
licence id (lowercase letters and digits joined by '-' or '.'), so a licence
string holding backticks and newlines cannot write Markdown into the card. A
template is a regular file of at most MAX_TEMPLATE_BYTES, read without
following a symlink (the watchlist checks that it lies inside its folder).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import stat
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from huggingface_hub import ModelCard, ModelCardData
from jinja2.sandbox import SandboxedEnvironment

from paramdelta import PROJECT_URL
from paramdelta.engine.files import has_tokenizer
from paramdelta.engine.merge_plan import Vocabulary
from paramdelta.engine.recipe import Recipe, recorded_fields
from paramdelta.engine.roles import ROLES, delta_roles, title
from paramdelta.errors import UsageError
from paramdelta.rendering import chart, markdown
from paramdelta.rendering.check_report import STEP_TITLES
from paramdelta.rendering.model_kind import kind_of
from paramdelta.units import human_bytes, plural

DEFAULT_TEMPLATE = "templates/model_card.md.j2"
BASE_TAGS = ("merge", "paramdelta")
HF_URL = "https://huggingface.co"
MAX_TEMPLATE_BYTES = 64 * 1024  # the default card is 3 KB
# The Hub's licence ids (apache-2.0, llama3.1, cc-by-nc-4.0, other) and custom licence names.
LICENCE_ID = re.compile(r"[a-z0-9]+(?:[.-][a-z0-9]+)*")
MAX_LICENCE_CHARS = 64
# What a custom licence may link to: a web page, or a file of the repo (LICENSE.md).
LICENCE_LINK = re.compile(r"https://[\w.-]+(?::\d+)?(?:/[\w.~%/+-]*)?|[\w-]+(?:\.[\w-]+)*")


def _environment() -> SandboxedEnvironment:
    environment = SandboxedEnvironment(
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=False,
    )
    environment.filters.update(size=human_bytes, plural=plural)  # amounts with their units
    return environment


def load_template(path: Path | None) -> str:
    """A card template's text: the default one, or a regular UTF-8 file under the size cap."""
    if path is None:
        return resources.files("paramdelta").joinpath(DEFAULT_TEMPLATE).read_text()
    # O_NOFOLLOW: a symlink swapped in after the watchlist was checked is not followed;
    # O_NONBLOCK: a FIFO does not hang the run.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UsageError(f"card template {path}: not a regular file")
        data = f.read(MAX_TEMPLATE_BYTES + 1)
    if len(data) > MAX_TEMPLATE_BYTES:
        raise UsageError(f"card template {path}: larger than {MAX_TEMPLATE_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"card template {path}: not UTF-8 text") from None


def is_licence_id(value: object) -> bool:
    """Whether ``value`` follows the Hub's licence id grammar."""
    return (
        isinstance(value, str)
        and len(value) <= MAX_LICENCE_CHARS
        and LICENCE_ID.fullmatch(value) is not None
    )


def _by_role(record: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {c["role"]: c for c in record["checkpoints"]}


def licence(record: Mapping[str, Any]) -> tuple[str | None, str | None, str | None]:
    """(licence id, the role it came from, a note on disagreeing or unusable licences).

    The lineage record keeps each checkpoint's declared licence at its pinned
    commit, so `publish DIR` renders the same card as the merge would have.
    """
    by_role = _by_role(record)
    declared = {role: by_role[role].get("license") for role in ("new_base", "post")}
    valid = {role: str(value) for role, value in declared.items() if is_licence_id(value)}
    notes = [
        f"the card of the {title(role)} declares a licence that is not a Hub licence id,"
        " so it is not inherited: check its terms before use."
        for role, value in declared.items()
        if value is not None and role not in valid
    ]
    new, post = valid.get("new_base"), valid.get("post")
    if new and post and new != post:
        notes.insert(
            0,
            f"the new base is licensed `{new}` and the post-trained model `{post}`;"
            " this merge is derived from both, so both sets of terms may apply.",
        )
    note = " Also, ".join(notes) or None
    if new:
        return new, "new_base", note
    if post:
        return post, "post", note
    return None, None, note


def is_llama_licence(licence_id: str | None) -> bool:
    return bool(licence_id) and str(licence_id).lower().startswith("llama")


def checkpoint_name(checkpoint: Mapping[str, Any]) -> str:
    """How the card names a checkpoint of the record: its repo id, or a local folder's name
    (its path says where it lies on one machine, which a published card must not)."""
    if checkpoint.get("repo") is not None:
        return str(checkpoint["repo"])
    return Path(str(checkpoint.get("path"))).name


def _spec(checkpoint: Mapping[str, Any]) -> str:
    """How a command line names a checkpoint: repo@sha, or the local folder it was read from."""
    if checkpoint.get("repo") is None:
        return checkpoint_name(checkpoint)
    return f"{checkpoint['repo']}@{checkpoint['sha']}"


def _weights(record: Mapping[str, Any]) -> tuple[float, ...]:
    """The weight of each delta the record's recipe sums (one delta: its alpha)."""
    given = recorded_fields(record["recipe"])
    return given["weights"] or (given["alpha"],)


def reproduce_command(record: Mapping[str, Any], output: str) -> str:
    by_role = _by_role(record)
    recipe = record["recipe"]
    parts = ["paramdelta merge"]
    weights = _weights(record)
    if len(weights) == 1:
        for role in ROLES:
            parts.append(f"--{role.replace('_', '-')} {shlex.quote(_spec(by_role[role]))}")
    else:
        for i, weight in enumerate(weights):
            post, base = (shlex.quote(_spec(by_role[role])) for role in delta_roles(i))
            parts.append(f"--delta {post} {base} {weight}")
        parts.append(f"--new-base {shlex.quote(_spec(by_role['new_base']))}")
    given = recorded_fields(recipe)
    for key, default in Recipe().merged_fields().items():  # the options not at their default
        if key != "weights" and given[key] != default:
            parts.append(f"--{key.replace('_', '-')} {given[key]}")
    parts.append(f"--output {output.partition('/')[2] or output}")
    return " \\\n  ".join(parts)


def output_name(record: Mapping[str, Any]) -> str:
    """What the output is loaded by: its repo id once published, else its folder's name."""
    output = record["output"]
    return str(output.get("repo") or output.get("directory") or "merged-model")


def card_context(record: Mapping[str, Any], hub_url: str) -> dict[str, Any]:
    output = output_name(record)
    lic, lic_from, note = licence(record)
    checkpoints = []
    for c in record["checkpoints"]:
        local = c.get("repo") is None  # merged from a local directory: no links
        url = None if local else f"{hub_url}/{c['repo']}"
        checkpoints.append(
            {
                **c,
                "repo": checkpoint_name(c),
                "revision": c.get("revision") or "local",
                "sha": c.get("sha") or "",
                "title": title(c["role"]),
                "url": url,
                "commit_url": None if local else f"{url}/commit/{c['sha']}",
            }
        )
    by_role = {c["role"]: c for c in checkpoints}
    repos = " ".join(c["repo"] for c in checkpoints) + " " + output
    kind = kind_of(record["output"].get("architecture"))
    terms = [
        {"weight": weight, "post": by_role[post], "base": by_role[base]}
        for weight, (post, base) in zip(
            _weights(record), map(delta_roles, itertools.count()), strict=False
        )
    ]
    return {
        "model_name": output,
        "checkpoints": checkpoints,
        "base": by_role["base"],
        "post": by_role["post"],
        "new_base": by_role["new_base"],
        "terms": terms,
        "formula": written_formula(terms),
        "license": lic,
        "license_from": lic_from,
        "license_note": note,
        "llama": is_llama_licence(lic) or "llama" in repos.lower(),
        # The Use snippet loads a tokenizer only if the output ships one.
        "tokenizer": has_tokenizer(record["recipe"]["file_donors"]),
        "reproduce": reproduce_command(record, output),
        # Upstream's file names and values, as inline code whatever backticks they hold
        # (and, in a table cell, whatever pipes).
        "files": [
            (markdown.code(path).replace("|", "\\|"), title(role))
            for path, role in sorted(record["recipe"]["file_donors"].items())
        ],
        "skipped": [
            (markdown.code(path), why)
            for path, why in sorted(record["recipe"].get("skipped_files", {}).items())
        ],
        "config_changes": [
            (markdown.code(key), markdown.code(json.dumps(value)))
            for key, value in sorted(record["recipe"].get("config_changes", {}).items())
        ],
        "vocabulary": _vocabulary_line(record),
        "delta": delta_rows(record.get("delta")),
        "chart": chart.FILENAME if record.get("delta") else None,
        "check": check_rows(record.get("check")),
        # The Use snippet's classes: a vision-language model's processor and auto class.
        "use": {**kind._asdict(), "vision": kind.vision},
    }


def written_formula(terms: Sequence[Mapping[str, Any]]) -> str:
    """The sum written out with its weights: "new base + 0.7·(post − base) − 0.3·(…)"."""
    text = "new base"
    for term in terms:
        weight = float(term["weight"])
        sign = "−" if weight < 0 else "+"
        scale = "" if abs(weight) == 1 else f"{abs(weight):g}·"
        text += f" {sign} {scale}({term['post']['title']} − {term['base']['title']})"
    return text


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
        "experts": group.get("experts", "-"),
        "requant": _number(group.get("requant_error"), 3),
    }


def delta_rows(delta: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The delta report as the card's table shows it: an overall row, then one per layer
    (the first delta's); with several deltas, a row per delta and the cosine of each pair."""
    if not delta:
        return None
    layers = [
        _delta_row(f"layer {g['layer']}" if isinstance(g["layer"], int) else g["layer"], g)
        for g in delta["layers"]
    ]
    overall = delta["overall"]
    each = overall.get("deltas", [])
    rows = [
        {
            "delta": f"{title(post)} − {title(base)}",
            "post_delta": _number(d["post_delta_norm"]),
            "base_update": _number(d["base_update_norm"]),
            "against": f"new base − {title(base)}",
            "cosine": _number(d["cosine"], 3),
        }
        for d, (post, base) in zip(each, map(delta_roles, itertools.count()), strict=False)
    ]
    cosines = overall.get("delta_cosines", [])
    pairs = [
        (rows[i]["delta"], rows[j]["delta"], _number(cosines[i][j], 3))
        for i in range(len(rows))
        for j in range(i + 1, len(rows))
    ]
    return {
        "overall": _delta_row("all", overall),
        "layers": layers,
        "deltas": rows,
        "pairs": pairs,
        # Columns a dense or unquantized model has no use for are left out.
        "experts": any("experts" in g for g in delta["layers"]),
        "requant": "requant_error" in overall,
    }


def check_rows(check: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The pre-publish check as the card shows it: its status, steps and numbers."""
    if not check:
        return None
    steps = [
        {"title": STEP_TITLES.get(s["step"], s["step"]), "passed": s["passed"], **s}
        for s in check.get("steps", [])
    ]
    return {**check, "steps": steps}


def _vocabulary_line(record: Mapping[str, Any]) -> str | None:
    """The record's vocabulary as the log states it; None if it has none."""
    try:
        return Vocabulary(**record["vocabulary"]).describe()
    except (TypeError, KeyError):  # no vocabulary (or a record of another version)
        return None


def front_matter(record: Mapping[str, Any], tags: Sequence[str]) -> ModelCardData:
    by_role = _by_role(record)
    lic, lic_from, _ = licence(record)
    extra: dict[str, Any] = {}
    donor = by_role.get(lic_from or "", {})
    if lic == "other":  # a custom licence is named and linked, not identified
        name, link = donor.get("license_name"), donor.get("license_link")
        if is_licence_id(name):
            extra["license_name"] = name
        if isinstance(link, str) and ".." not in link and LICENCE_LINK.fullmatch(link):
            extra["license_link"] = link
    # The new base, then each delta's post and base: every model the merge is made of, once.
    roles = ("new_base", *(r for i in range(len(_weights(record))) for r in delta_roles(i)))
    hub_models = list(dict.fromkeys(by_role[r]["repo"] for r in roles if by_role[r]["repo"]))
    return ModelCardData(
        base_model=hub_models or None,
        base_model_relation="merge",
        library_name="transformers",
        pipeline_tag=kind_of(record["output"].get("architecture")).pipeline_tag,
        license=lic,
        tags=[*BASE_TAGS, *(t for t in tags if t not in BASE_TAGS)],
        **extra,
    )


def render_card(
    record: Mapping[str, Any],
    *,
    template: Path | None = None,
    tags: Sequence[str] = (),
    hub_url: str = HF_URL,
) -> str:
    """README.md for a merge: YAML front matter, then the rendered template."""
    body = (
        _environment()
        .from_string(load_template(template))
        .render(
            lineage=record,
            card=card_context(record, hub_url),
            hub_url=hub_url,
            project_url=PROJECT_URL,
        )
    )
    meta = front_matter(record, tags)
    return str(ModelCard(f"---\n{meta.to_yaml()}\n---\n\n{body.lstrip()}"))


def check_template(path: Path, record: Mapping[str, Any]) -> str | None:
    """None if the template renders against ``record`` (a sample), else the one-line reason."""
    try:
        render_card(record, template=path)
    except OSError as e:
        return f"cannot read {path}: {e.strerror}"
    except UsageError as e:
        return str(e)
    except jinja2.TemplateSyntaxError as e:
        return f"{path}:{e.lineno}: template syntax error: {e.message}"
    except jinja2.TemplateError as e:
        return f"{path}: template error: {e}"
    return None
