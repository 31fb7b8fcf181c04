"""The GitHub Actions runner protocol: step outputs, the job summary and the run link.

The only module that knows the runner's environment variables and file
formats; everything else asks it. Outputs always use the heredoc form, so a
value may hold newlines (JSON, Markdown) without breaking the file. Whatever
goes into either file is redacted first: both end up on the run's page.
"""

from __future__ import annotations

import os
from pathlib import Path
from uuid import uuid4

from paramdelta.errors import UsageError
from paramdelta.tokens import redact

OUTPUT_FILE = "GITHUB_OUTPUT"
SUMMARY_FILE = "GITHUB_STEP_SUMMARY"
DEFAULT_API_URL = "https://api.github.com"


def require_runner_files() -> None:
    """Fail before doing any work when `--github` is given outside a runner."""
    for name in (OUTPUT_FILE, SUMMARY_FILE):
        _runner_file(name)


def set_output(name: str, value: str) -> None:
    """Set the step output ``name``; read it as ``steps.<id>.outputs.<name>``."""
    # The runner's own delimiter form (as in @actions/core); a fresh random delimiter
    # cannot be forged by a value, but check anyway, as the toolkit does.
    value = redact(value)
    delimiter = f"ghadelimiter_{uuid4()}"
    if delimiter in name or delimiter in value:
        raise ValueError(f"output {name!r}: value contains the delimiter {delimiter}")
    _append(OUTPUT_FILE, f"{name}<<{delimiter}\n{value}\n{delimiter}\n")


def append_summary(markdown: str) -> None:
    """Add Markdown to the job summary page."""
    markdown = redact(markdown)
    _append(SUMMARY_FILE, markdown if markdown.endswith("\n") else markdown + "\n")


def repository() -> str | None:
    """The repository the workflow runs in (``owner/name``), or None outside Actions."""
    return os.environ.get("GITHUB_REPOSITORY") or None


def api_url() -> str:
    """The GitHub REST API this runner talks to (GitHub Enterprise has its own)."""
    return os.environ.get("GITHUB_API_URL") or DEFAULT_API_URL


def run_url() -> str | None:
    """Link to this workflow run (this attempt, when it is a rerun), or None outside Actions."""
    server = os.environ.get("GITHUB_SERVER_URL")
    repo = repository()
    run_id = os.environ.get("GITHUB_RUN_ID")
    if not (server and repo and run_id):
        return None
    url = f"{server.rstrip('/')}/{repo}/actions/runs/{run_id}"
    attempt = os.environ.get("GITHUB_RUN_ATTEMPT", "")
    if attempt.isdigit() and int(attempt) > 1:
        url += f"/attempts/{attempt}"
    return url


def _runner_file(name: str) -> Path:
    path = os.environ.get(name)
    if not path:
        raise UsageError(f"--github: {name} is not set (not running in GitHub Actions?)")
    return Path(path)


def _append(name: str, text: str) -> None:
    with _runner_file(name).open("a", encoding="utf-8", newline="\n") as f:
        f.write(text)
