"""The Markdown summary of a run: a table of targets, the failures' errors, a line of counts."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from paramdelta.rendering import markdown
from paramdelta.reporting.results import FAILED, STATUSES, TargetResult

_STATUS_WORDS = {
    "published": "published",
    "pr-opened": "PR opened",
    "in-review": "in review",
    "up-to-date": "up to date",
    "dry-run": "dry run",
    "failed": "failed",
    "check-failed": "check failed",
    "planned": "planned",
    "staged": "staged (fan-out leg)",
}
_LINK_WORDS = {"published": "commit", "pr-opened": "pull request", "in-review": "pull request"}


def summary_markdown(results: Sequence[TargetResult], run_url: str | None = None) -> str:
    """The job summary: a table of targets, the failures' errors, and a line of counts."""
    lines = ["### ParamΔ merges", ""]
    if results:
        lines += [
            "| target | new base | status | link | duration |",
            "| --- | --- | --- | --- | --- |",
        ]
        lines += ["| " + " | ".join(_row(r)) + " |" for r in results]
        lines.append("")
    failures = [
        f"- **{markdown.text(r.target)}**: {markdown.text(r.error)}"
        for r in results
        if r.status in FAILED
    ]
    if failures:
        lines += ["Errors:", "", *failures, ""]
    run_link = f" {markdown.link('Workflow run', run_url)}" if run_url else ""
    lines.append(_counts(results) + run_link)
    return "\n".join(lines) + "\n"


def _row(r: TargetResult) -> tuple[str, ...]:
    """The table cells of one result, every one of them escaped."""
    status = _STATUS_WORDS[r.status]
    if r.status in FAILED:
        status += f" (exit {r.exit_code})"
    return (
        markdown.text(r.target),
        markdown.text(r.new_base_ref(short=True)),
        status,
        markdown.link(_LINK_WORDS.get(r.status, "link"), r.url),
        _duration(r.duration_s),
    )


def _counts(results: Sequence[TargetResult]) -> str:
    by_status = Counter(r.status for r in results)
    parts = [f"{by_status[s]} {_STATUS_WORDS[s]}" for s in STATUSES if by_status[s]]
    noun = "target" if len(results) == 1 else "targets"
    return f"{len(results)} {noun}" + (": " + ", ".join(parts) if parts else "") + "."


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"
