"""The lineage record, paramdelta.json: what was merged from what, and the bot's only state.

It is committed with the weights, in the same commit, so the output repo
itself says which commits (three for one delta; 2N+1 for N deltas: each
delta's post and base, roles ``post[i]``/``base[i]`` after the first, and the
new base) and which recipe produced it. Beside each
checkpoint's commit it keeps the content id of every file the merge read
(``sha256:`` for LFS/Xet files, ``blob:`` for the rest, as the Hub lists them;
see `paramdelta.hub.content_ids`), so `plan` can tell a new release from a
commit that only touched a README: a target is pending when that content, the
recipe, or which checkpoint gives which file changed. Any runner can therefore
run the bot: there is no local state file.

The output section names the content of every weight file the merge committed
(the ids the Hub may list it under), so that `plan` can tell the record from
the weights beside it: a record left next to weights the bot did not make
(another merge pushed by hand, a stranger's pull request) describes nothing,
and the target is pending.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from huggingface_hub import metadata_load

from paramdelta import __version__
from paramdelta.engine.checkpoint import Provenance
from paramdelta.engine.files import CARD_FILE, LINEAGE_FILE, file_donors
from paramdelta.engine.merge_plan import COMPUTE_DTYPE, FORMULA, SEVERAL_FORMULA
from paramdelta.engine.recipe import Recipe, recorded_fields
from paramdelta.engine.roles import ROLES, delta_roles, merge_roles, title
from paramdelta.engine.safetensors_format import INDEX, is_weights_file
from paramdelta.errors import UsageError
from paramdelta.hub.client import RepoFiles

FILENAME = LINEAGE_FILE  # the publisher deletes a stale one: a file name of engine.files
SCHEMA_VERSION = 1
MAX_BYTES = 1 << 20  # a record is ~3 KB: a bigger paramdelta.json is not one of ours
TOOL = "paramdelta-bot"
LICENCE_KEYS = ("license", "license_name", "license_link")
UNCHANGED = "upstream moved, content unchanged"


def checkpoint_entry(
    role: str,
    repo: str | None,
    revision: str | None,
    sha: str | None,
    *,
    path: str | None = None,
    files: Mapping[str, str] | None = None,
    card_data: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One checkpoint as the record keeps it; a local one has a ``path`` and no commit."""
    entry: dict[str, Any] = {"role": role, "repo": repo, "revision": revision, "sha": sha}
    if path is not None:
        entry["path"] = path
    # Card data is upstream's, untrusted: only licence strings are kept.
    entry |= {k: v for k in LICENCE_KEYS if isinstance(v := (card_data or {}).get(k), str) and v}
    entry["files"] = dict(sorted((files or {}).items()))
    return entry


def source_entry(role: str, provenance: Provenance, read: Sequence[str]) -> dict[str, Any]:
    """A checkpoint's entry from where it came from: a Hub repo at its commit, with the
    content id of each file the merge read, or a local folder by its absolute path (so
    that `check DIR` finds it from anywhere; `published` keeps only its name)."""
    if provenance.repo is None:
        folder = provenance.path
        path = str(folder.absolute()) if folder is not None else None
        return checkpoint_entry(
            role, None, None, None, path=path, card_data=_local_card_data(folder)
        )
    files = {path: provenance.content[path] for path in read if path in provenance.content}
    return checkpoint_entry(
        role,
        provenance.repo,
        provenance.revision,
        provenance.sha,
        files=files,
        card_data=provenance.card_data,
    )


def _local_card_data(folder: Path | None) -> dict[str, Any]:
    """A local checkpoint's README front matter (for its licence); {} if none or unreadable."""
    if folder is None or not (card := folder / CARD_FILE).is_file():
        return {}
    try:
        return metadata_load(card) or {}
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError):
        return {}


def published(record: Mapping[str, Any]) -> dict[str, Any]:
    """The record as it leaves the machine: a local input named by its folder's name, not
    by where it lies here."""
    checkpoints = [
        {**c, "path": Path(c["path"]).name} if isinstance(c.get("path"), str) else c
        for c in record["checkpoints"]
    ]
    return {**record, "checkpoints": checkpoints}


def build_record(
    *,
    target: str | None,
    checkpoints: Mapping[str, Mapping[str, Any]],
    recipe: Recipe,
    files: Mapping[str, str],
    output: Mapping[str, Any],
    written_dtype: str | None = None,
    skipped: Mapping[str, str] | None = None,
    config_changes: Mapping[str, Any] | None = None,
    vocabulary: Mapping[str, Any] | None = None,
    adapter: Mapping[str, Any] | None = None,
    ci_run_url: str | None = None,
    created_at: datetime | None = None,
) -> dict[str, Any]:
    """The record for one merge. ``checkpoints`` maps role -> its entry (`checkpoint_entry`),
    one per role of `merge_roles`; ``adapter``: the (first delta's) post model is a LoRA
    adapter (`paramdelta.engine.adapter`)."""
    when = (created_at or datetime.now(timezone.utc)).astimezone(timezone.utc)
    weights = recipe.delta_weights
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": TOOL, "version": __version__},
        "target": target,
        "created_at": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "ci_run_url": ci_run_url,
        "recipe": {
            "method": "paramdelta",
            "compute_dtype": COMPUTE_DTYPE,
            **_terms(recipe),
            "dtype": written_dtype or recipe.dtype,
            "requested_dtype": recipe.dtype,
            "vocab_policy": recipe.vocab_policy,
            "file_donors": dict(sorted(files.items())),
            "skipped_files": dict(sorted((skipped or {}).items())),
            "config_changes": dict(sorted((config_changes or {}).items())),
            **({"adapter": dict(adapter)} if adapter is not None else {}),
        },
        "vocabulary": dict(vocabulary) if vocabulary is not None else None,
        "checkpoints": [{**checkpoints[role], "role": role} for role in merge_roles(len(weights))],
        "output": dict(output),
    }


def _terms(recipe: Recipe) -> dict[str, Any]:
    """The formula and its weights: one delta as it always was (``alpha``); several as
    ``weights`` and each term written out (``deltas``: the roles of its post and base)."""
    if not recipe.weights:
        return {"formula": FORMULA, "alpha": recipe.alpha}
    terms = [
        {"post": post, "base": base, "weight": weight}
        for (post, base), weight in zip(
            map(delta_roles, range(len(recipe.weights))), recipe.weights, strict=True
        )
    ]
    return {"formula": SEVERAL_FORMULA, "weights": list(recipe.weights), "deltas": terms}


def encode(record: Mapping[str, Any]) -> bytes:
    return (json.dumps(record, indent=2) + "\n").encode()


def read_local(path: Path) -> dict[str, Any] | None:
    """The record in a local ``path`` (see `decode`); a file too big to be one is refused."""
    if path.stat().st_size > MAX_BYTES:
        raise UsageError(f"{path}: larger than {MAX_BYTES} bytes; not a lineage record")
    return decode(path.read_bytes())


def decode(data: bytes | None) -> dict[str, Any] | None:
    """A record read back from a repo, or None if absent or not one we understand."""
    if data is None:
        return None
    try:
        record = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(record, dict) or record.get("schema_version") != SCHEMA_VERSION:
        return None
    return record


class Comparison(NamedTuple):
    """A published record against the upstream repos as they are now."""

    reasons: list[str]  # why a new merge is needed; empty: the output is current
    notes: list[str]  # upstream moves that changed nothing the merge reads


def compare(
    record: Mapping[str, Any] | None,
    repos: Mapping[str, RepoFiles],
    recipe: Recipe,
) -> Comparison:
    """Whether the record still describes a merge of ``repos`` with ``recipe``."""
    if record is None:
        return Comparison(["no lineage record in the output repo"], [])
    reasons, notes = [], []
    published = {c.get("role"): c for c in record.get("checkpoints", []) if isinstance(c, dict)}
    moved = False
    for role in merge_roles(len(recipe.delta_weights)):
        now, then = repos[role], published.get(role, {})
        name = title(role)
        if then.get("repo") != now.repo_id:
            reasons.append(f"{name} is now {now.repo_id} (was {then.get('repo')})")
            continue
        if then.get("sha") == now.sha:
            continue
        moved = True
        move = f"{name} {now.repo_id} moved {str(then.get('sha'))[:7]} -> {now.sha[:7]}"
        changed = _changed_files(then, now)
        if changed is None:
            reasons.append(move)
        elif changed:
            reasons.append(f"{move}: {', '.join(changed[:3])}{' ...' * (len(changed) > 3)} changed")
        else:
            notes.append(f"{UNCHANGED} ({move})")
        if role in ("post", "new_base"):  # the card's licence comes from these two
            reasons.extend(_licence_change(name, then, now))
    old = record.get("recipe", {})
    if moved:
        reasons.extend(_donor_changes(old.get("file_donors"), repos))
    then = recorded_fields(old)
    for key, value in recipe.merged_fields().items():
        if (then_value := then[key]) != value:
            reasons.append(f"recipe {key} changed: {then_value!r} -> {value!r}")
    return Comparison(reasons, notes if not reasons else [])


def _changed_files(then: Mapping[str, Any], now: RepoFiles) -> list[str] | None:
    """The files the merge read whose content differs now; None if the record cannot tell."""
    recorded = then.get("files")
    if not isinstance(recorded, dict) or not recorded or not now.content:
        return None
    changed = sorted(path for path, cid in recorded.items() if now.content.get(path) != cid)
    if INDEX in now.content and INDEX not in recorded:  # from one file to shards
        changed.append(INDEX)
    return changed


def _licence_change(name: str, then: Mapping[str, Any], now: RepoFiles) -> list[str]:
    old, new = then.get("license"), now.card_data.get("license")
    return [f"{name} licence changed: {old} -> {new}"] if old != new else []


def _donor_changes(recorded: Any, repos: Mapping[str, RepoFiles]) -> list[str]:
    """A file that another checkpoint would give now (a licence added, a template removed)."""
    if not isinstance(recorded, dict):
        return []
    now = file_donors({role: repo.sizes for role, repo in repos.items()})
    changes = []
    for path in sorted(set(recorded) | set(now)):
        if recorded.get(path) != now.get(path):
            was = title(str(recorded[path])) if path in recorded else "nowhere"
            becomes = title(str(now[path])) if path in now else "nowhere"
            changes.append(f"{path} would now come from {becomes} (was {was})")
    return changes


def output_differences(record: Mapping[str, Any] | None, listing: RepoFiles) -> list[str]:
    """Why the weights in ``listing`` are not the ones ``record`` names (empty: they are)."""
    if record is None:
        return []  # `compare` already says there is no record
    output = record.get("output")
    named = output.get("files") if isinstance(output, dict) else None
    if not isinstance(named, dict):
        return ["the lineage record does not name the output's weights (an older record?)"]
    present = sorted(f for f in listing.sizes if is_weights_file(f))
    if sorted(named) != present:
        return ["the output's weight files are not the ones its lineage record names"]
    for path in present:
        ids = named[path] if isinstance(named[path], list) else []
        if listing.content.get(path) not in ids:
            return [f"{path} in the output is not the file its lineage record names"]
    return []


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
            role: checkpoint_entry(role, f"example-org/{role}-model", "main", sha) for role in ROLES
        },
        recipe=Recipe(),
        files={"config.json": "new_base", "tokenizer.json": "post"},
        written_dtype="bfloat16",
        skipped={"params.json": "Mistral's native-format config, for weights not produced"},
        vocabulary={
            "policy": "error",
            "rows": {"base": 2, "post": 2, "new_base": 2, "output": 2},
            "merged": 2,
            "kept_from_post": 0,
            "dropped_from_new_base": 0,
            "dropped_from_base": 0,
        },
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
