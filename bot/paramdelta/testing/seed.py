"""Put tiny checkpoints on a FakeHub, as the Hub would hold them (tests and the demo)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from paramdelta.engine.roles import ROLES
from paramdelta.testing.checkpoints import make_trio
from paramdelta.testing.hub import FakeHub


def model_readme(license_id: str | None, title: str) -> bytes:
    front = f"---\nlicense: {license_id}\n---\n" if license_id else ""
    return f"{front}# {title}\n".encode()


def publish_folder(
    hub: FakeHub,
    repo_id: str,
    folder: Path,
    *,
    license_id: str | None = None,
    created_at: datetime | None = None,
    message: str = "Upload model",
) -> str:
    """Create ``repo_id`` (if needed) and commit every file of ``folder``; the commit sha."""
    if not hub.repo_exists(repo_id):
        hub.create_repo(repo_id, created_at=created_at)
    files: dict[str, bytes | Path] = {
        p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()
    }
    files["README.md"] = model_readme(license_id, repo_id)
    return hub.commit(repo_id, files, message=message)


def seed_trio(
    hub: FakeHub,
    root: Path,
    repos: Mapping[str, str],
    *,
    licenses: Mapping[str, str] | None = None,
    **trio_options: Any,
) -> dict[str, str]:
    """Generate a related base/post/new_base trio and publish each to its repo; role -> sha."""
    local = make_trio(root, **trio_options)
    return {
        role: publish_folder(hub, repos[role], local[role], license_id=(licenses or {}).get(role))
        for role in ROLES
    }
