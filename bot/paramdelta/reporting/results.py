"""Run results: one record per target, and the result files that carry them between jobs.

`paramdelta run` (and `plan`, for up-to-date targets) writes a result file;
`paramdelta report` reads them back from a matrix's downloaded artifacts. The
format is defined once, by the shipped JSON Schema (schemas/results.schema.json);
a bad file is refused with one line naming the file, the record and the field.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_args
from uuid import uuid4

import jsonschema

from paramdelta.errors import LocalFileError, UsageError
from paramdelta.tokens import redact

SCHEMA_RESOURCE = "schemas/results.schema.json"
# "in-review": the bot's own pull request with this merge is open. "planned": written by
# `plan` for a target its merge job will report on (see `report`). "staged": a fan-out leg
# committed its shards to the staging branch; the finish job reports on the target.
Status = Literal[
    "published",
    "pr-opened",
    "in-review",
    "up-to-date",
    "dry-run",
    "failed",
    "check-failed",
    "planned",
    "staged",
]
STATUSES: tuple[Status, ...] = get_args(Status)
SUCCEEDED = frozenset({"published", "pr-opened"})
# check-failed: merged, but the pre-publish check blocked the publish (`check` has its numbers)
FAILED = frozenset({"failed", "check-failed"})


@dataclass(frozen=True, kw_only=True)
class TargetResult:
    """What one watchlist target's run did."""

    target: str
    status: Status
    output_repo: str | None = None
    new_base_repo: str | None = None
    new_base_sha: str | None = None
    url: str | None = None  # the published commit, or the pull request
    error: str | None = None
    exit_code: int
    duration_s: float
    check: dict[str, Any] | None = None  # the pre-publish check's report, when it was decided

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def new_base_ref(self, *, short: bool) -> str:
        """``repo@sha`` of the new base merged onto ('' when unknown)."""
        if not self.new_base_repo:
            return ""
        if not self.new_base_sha:
            return self.new_base_repo
        return f"{self.new_base_repo}@{self.new_base_sha[:7] if short else self.new_base_sha}"


def write_results(path: str | os.PathLike[str], results: Iterable[TargetResult]) -> None:
    """Write a result file atomically; tokens are scrubbed, as it may become a public artifact."""
    path = Path(path)
    text = json.dumps({"results": [r.to_dict() for r in results]}, indent=2) + "\n"
    tmp = path.with_name(f".{path.name}.{uuid4().hex}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(redact(text), encoding="utf-8")
        tmp.replace(path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise LocalFileError.from_os_error(e, path) from None


def load_results(paths: Iterable[str | os.PathLike[str]]) -> list[TargetResult]:
    """Read result files, one result per target; a directory stands for every *.json below it.

    A target may be in several files: `plan` records it up to date and a later
    `run` records what it did, or one file is passed twice. What a merge job did
    wins over what the plan said (`outranks`); otherwise the last file read wins.
    """
    by_target: dict[str, TargetResult] = {}
    for result in read_records(paths):
        if outranks(result, by_target.get(result.target)):
            by_target[result.target] = result
    return list(by_target.values())


# What a plan says of a target, below what a merge job did (a result file read after another
# does not take it back); planned, below what the leg itself said.
_PLAN_RANKS = {"planned": 0, "up-to-date": 1, "in-review": 1}


def outranks(result: TargetResult, kept: TargetResult | None) -> bool:
    """Whether ``result`` replaces ``kept``, a result for the same target read earlier."""
    if kept is None:
        return True
    return _PLAN_RANKS.get(result.status, 2) >= _PLAN_RANKS.get(kept.status, 2)


def read_records(paths: Iterable[str | os.PathLike[str]]) -> list[TargetResult]:
    """Every record of the files, in file order, none merged (`load_results` merges them)."""
    results: list[TargetResult] = []
    for path in map(Path, paths):
        if path.is_dir():
            # download-artifact puts each artifact in its own subdirectory
            files = sorted(path.rglob("*.json"))
        elif path.exists():
            files = [path]
        else:
            raise UsageError(f"{path}: no such file or directory")
        for file in files:
            results.extend(_load_file(file))
    return results


def _load_file(path: Path) -> list[TargetResult]:
    try:
        data = json.loads(path.read_bytes())
    except OSError as e:
        raise UsageError(f"{path}: {e.strerror}") from None
    except ValueError as e:  # bad JSON, or not UTF-8
        raise UsageError(f"{path}: not valid JSON: {e}") from None
    if (error := jsonschema.exceptions.best_match(_validator().iter_errors(data))) is not None:
        raise UsageError(f"{path}: {_explain(error)}")
    return [
        TargetResult(**{**item, "duration_s": float(item["duration_s"])})
        for item in data["results"]
    ]


@cache
def _validator() -> jsonschema.protocols.Validator:
    text = resources.files("paramdelta").joinpath(SCHEMA_RESOURCE).read_text(encoding="utf-8")
    schema = json.loads(text)
    return jsonschema.validators.validator_for(schema)(schema)


def _explain(error: jsonschema.ValidationError) -> str:
    """One line for the error jsonschema ranks most relevant: where, then what."""
    path = list(error.absolute_path)  # [], ["results"], ["results", i] or ["results", i, field]
    if len(path) < 2:
        unknown = error.validator == "additionalProperties"
        extra = sorted(set(error.instance) - {"results"}) if unknown else []
        return f"unknown field {extra[0]!r}" if extra else 'expected an object {"results": [...]}'
    where = f"results[{path[1]}]"
    if len(path) == 2:
        if error.validator == "additionalProperties":
            unknown = sorted(set(error.instance) - set(error.schema["properties"]))
            return f"{where}: unknown field {unknown[0]!r}"
        if error.validator == "required":
            missing = [name for name in error.validator_value if name not in error.instance]
            return f"{where}: missing field {missing[0]!r}"
        return f"{where}: expected an object, not {type(error.instance).__name__}"
    field = f"{where}: field {path[2]!r} must be {error.schema['description']}"
    if "then" in error.absolute_schema_path:  # a rule that holds for some statuses only
        return field
    return f"{field}, not {error.instance!r}"
