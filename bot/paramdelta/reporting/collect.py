"""What `report` believes of a run: result files checked against the watchlist and each other.

Result files are artifacts that other jobs wrote, on runners that may be shared:
a record is taken only for a target of the watchlist, and, in the example
workflow's artifact layout (one ``paramdelta-result-<name>`` directory per job),
a merge job's artifact speaks for its own target only and the plan's
(``paramdelta-result-plan``) only says what was up to date, in review or planned.
A merge job's result replaces what the plan said of its target; a target the
plan planned and no job reported on (a leg cancelled, timed out or killed before
it could write one) is reported as failed, so its issue is opened all the same.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import NamedTuple

from paramdelta.errors import MissingResultError
from paramdelta.reporting.results import TargetResult, outranks, read_records

ARTIFACT_PREFIX = "paramdelta-result-"
PLAN_ARTIFACT = f"{ARTIFACT_PREFIX}plan"
PLAN_STATUSES = frozenset({"up-to-date", "in-review", "planned"})
NO_RESULT = (
    "planned, but its merge job reported no result (cancelled, timed out, killed, or failed"
    " before paramdelta ran): see the workflow run"
)


class Collected(NamedTuple):
    results: list[TargetResult]
    ignored: list[str]  # one line per record that was not taken, saying why


def collect(paths: Iterable[str | os.PathLike[str]], targets: Collection[str]) -> Collected:
    """The results of ``paths`` (files, or directories of them) for the watchlist's ``targets``."""
    final: dict[str, TargetResult] = {}
    ignored: list[str] = []
    for path in map(Path, paths):
        files = sorted(path.rglob("*.json")) if path.is_dir() else [path]
        for file in files:
            speaker = _artifact(file)
            for index, result in enumerate(read_records([file])):  # numbered as in the file
                why = _refused(result, speaker, targets)
                if why:
                    ignored.append(f"{file}: results[{index}]: {why}; ignored")
                elif outranks(result, final.get(result.target)):
                    final[result.target] = result
    results = [r if r.status != "planned" else _no_result(r) for r in final.values()]
    return Collected(results, ignored)


def _artifact(file: Path) -> str | None:
    """The job whose artifact holds ``file`` (its target, or "plan"), from the nearest folder
    named like the example workflow's artifacts; None for a file outside such a folder."""
    for folder in file.absolute().parents:
        if folder.name.startswith(ARTIFACT_PREFIX):
            return folder.name.removeprefix(ARTIFACT_PREFIX)
    return None


def _refused(result: TargetResult, speaker: str | None, targets: Collection[str]) -> str | None:
    if result.target not in targets:
        return f"target {result.target!r} is not in the watchlist"
    if speaker == "plan" and result.status not in PLAN_STATUSES:
        return f"the plan job's artifact cannot say {result.status!r}"
    if speaker not in (None, "plan") and (result.target, result.status) == (speaker, "planned"):
        return "a merge job's artifact cannot say 'planned'"
    if speaker not in (None, "plan") and result.target != speaker:
        return f"the artifact of target {speaker!r} cannot speak for {result.target!r}"
    return None


def _no_result(planned: TargetResult) -> TargetResult:
    return TargetResult(
        target=planned.target,
        status="failed",
        output_repo=planned.output_repo,
        new_base_repo=planned.new_base_repo,
        new_base_sha=planned.new_base_sha,
        error=NO_RESULT,
        exit_code=MissingResultError.exit_code,
        duration_s=planned.duration_s,
    )
