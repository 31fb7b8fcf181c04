"""The lineage record, paramdelta.json: what was merged from what, and the bot's only state.

It is committed with the weights, in the same commit, so the output repo
itself says which three commits and which recipe produced it. `plan` reads it
back and compares: a target is pending when any commit or the recipe differs.
Any runner can therefore run the bot: there is no local state file.

The output section names the content of every weight file the merge committed
(sha256, and the git blob id of a file small enough to be stored outside LFS),
so that `plan` can tell the record from the weights beside it: a record left
next to weights the bot did not make (another merge pushed by hand, a stranger's
pull request) describes nothing, and the target is pending.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from paramdelta import __version__
from paramdelta.engine.layout import COMPUTE_DTYPE, FORMULA, ROLE_TITLES, ROLES
from paramdelta.engine.safetensors_format import is_weights_file
from paramdelta.hub.publisher import LINEAGE_FILE

if TYPE_CHECKING:
    from paramdelta.hub.client import RepoFiles

FILENAME = LINEAGE_FILE  # the publisher knows the name too: it removes a stale record
SCHEMA_VERSION = 1
MAX_BYTES = 1 << 20  # a record is ~3 KB: a bigger paramdelta.json is not one of ours
TOOL = "paramdelta-bot"
# The recipe fields that change the merged bytes (compared by `plan`).
RECIPE_KEYS = ("alpha", "dtype", "vocab_policy")


def checkpoint_entry(role: str, repo: str, revision: str, sha: str) -> dict[str, str]:
    return {"role": role, "repo": repo, "revision": revision, "sha": sha}


def build_record(
    *,
    target: str | None,
    checkpoints: Mapping[str, Mapping[str, str]],
    recipe: Mapping[str, Any],
    files: Mapping[str, str],
    output: Mapping[str, Any],
    ci_run_url: str | None = None,
    created_at: datetime | None = None,
) -> dict[str, Any]:
    """The record for one merge. ``checkpoints`` maps role -> {repo, revision, sha}."""
    when = (created_at or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": TOOL, "version": __version__},
        "target": target,
        "created_at": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "ci_run_url": ci_run_url,
        "recipe": {
            "method": "paramdelta",
            "formula": FORMULA,
            "compute_dtype": COMPUTE_DTYPE,
            **{key: recipe[key] for key in RECIPE_KEYS},
            "file_donors": dict(sorted(files.items())),
        },
        "checkpoints": [
            checkpoint_entry(
                role,
                checkpoints[role]["repo"],
                checkpoints[role]["revision"],
                checkpoints[role]["sha"],
            )
            for role in ROLES
        ],
        "output": dict(output),
    }


def encode(record: Mapping[str, Any]) -> bytes:
    return (json.dumps(record, indent=2) + "\n").encode()


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


def differences(
    record: Mapping[str, Any] | None,
    checkpoints: Mapping[str, Mapping[str, str]],
    recipe: Mapping[str, Any],
) -> list[str]:
    """Why a new merge is needed (empty: the published output is current)."""
    if record is None:
        return ["no lineage record in the output repo"]
    reasons = []
    published = {c.get("role"): c for c in record.get("checkpoints", []) if isinstance(c, dict)}
    for role in ROLES:
        now, then = checkpoints[role], published.get(role, {})
        title = ROLE_TITLES[role]
        if then.get("repo") != now["repo"]:
            reasons.append(f"{title} is now {now['repo']} (was {then.get('repo')})")
        elif then.get("sha") != now["sha"]:
            reasons.append(
                f"{title} {now['repo']} moved {str(then.get('sha'))[:7]} -> {now['sha'][:7]}"
            )
    old = record.get("recipe", {})
    for key in RECIPE_KEYS:
        if old.get(key) != recipe[key]:
            reasons.append(f"recipe {key} changed: {old.get(key)!r} -> {recipe[key]!r}")
    return reasons


def output_differences(record: Mapping[str, Any] | None, listing: RepoFiles) -> list[str]:
    """Why the weights in ``listing`` are not the ones ``record`` names (empty: they are)."""
    if record is None:
        return []  # `differences` already says there is no record
    output = record.get("output")
    named = output.get("files") if isinstance(output, dict) else None
    if not isinstance(named, dict):
        return ["the lineage record does not name the output's weights (an older record?)"]
    present = sorted(f for f in listing.sizes if is_weights_file(f))
    if sorted(named) != present:
        return ["the output's weight files are not the ones its lineage record names"]
    for path in present:
        ids = named[path] if isinstance(named[path], dict) else {}
        if path in listing.lfs_sha256:
            same = ids.get("sha256") == listing.lfs_sha256[path]
        else:
            same = ids.get("git_oid") is not None and ids.get("git_oid") == listing.blob_ids.get(
                path
            )
        if not same:
            return [f"{path} in the output is not the file its lineage record names"]
    return []
