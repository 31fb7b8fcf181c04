"""The fake Hub's discussions and pull requests as the Hub's discussions API shows them.

Stdlib only. A pull request's commits live in the repo store (refs/pr/N); what
the discussions API adds, and keeps here, is who opened it, whether it is open,
and its comments and status changes, in the JSON that huggingface_hub 2.4 reads
(`get_repo_discussions`, `change_discussion_status`, `comment_discussion`:
`hf_api.py`, `community.py: deserialize_event`).
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from paramdelta.testing._hub_store import HubError

STATUSES = ("open", "closed")


@dataclass
class Event:
    """A comment or a status change."""

    id: str
    type: str  # "comment" | "status-change"
    author: str
    created_at: datetime
    data: dict[str, Any]


@dataclass
class Discussion:
    repo_id: str
    num: int
    title: str
    author: str
    is_pull_request: bool
    created_at: datetime
    status: str = "open"
    events: list[Event] = field(default_factory=list)


class Discussions:
    """Every repo's discussions, by (repo id, number); thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[tuple[str, int], Discussion] = {}

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def opened(
        self, repo_id: str, num: int, title: str, author: str, *, pull_request: bool
    ) -> None:
        """Record a discussion (a pull request: its number is the store's refs/pr/N)."""
        with self._lock:
            self._items[repo_id, num] = Discussion(
                repo_id, num, title, author, pull_request, datetime.now(timezone.utc)
            )

    def list(
        self,
        repo_id: str,
        *,
        author: str | None = None,
        kind: str | None = None,
        status: str | None = None,
    ) -> list[Discussion]:
        """Newest first, filtered as the Hub's `author`, `type` and `status` parameters do."""
        with self._lock:
            found = [d for (repo, _), d in self._items.items() if repo == repo_id]
        return sorted(
            (
                d
                for d in found
                if author in (None, d.author)
                and kind in (None, "all", "pull_request" if d.is_pull_request else "discussion")
                and status in (None, "all", d.status)
            ),
            key=lambda d: d.num,
            reverse=True,
        )

    def get(self, repo_id: str, num: int) -> Discussion:
        with self._lock:
            found = self._items.get((repo_id, num))
        if found is None:
            raise HubError(404, None, f"Discussion {num} not found in {repo_id}")
        return found

    def comment(self, repo_id: str, num: int, author: str, text: str) -> Event:
        if not text.strip():
            raise HubError(400, None, "A comment cannot be empty")
        data = {"edited": False, "hidden": False, "latest": {"raw": text, "html": text}}
        return self._add(self.get(repo_id, num), "comment", author, data)

    def change_status(self, repo_id: str, num: int, author: str, status: str) -> Event:
        if status not in STATUSES:
            raise HubError(400, None, f"Invalid status {status!r}")
        discussion = self.get(repo_id, num)
        with self._lock:
            discussion.status = status
        return self._add(discussion, "status-change", author, {"status": status})

    def _add(self, discussion: Discussion, kind: str, author: str, data: dict[str, Any]) -> Event:
        event = Event(secrets.token_hex(12), kind, author, datetime.now(timezone.utc), data)
        with self._lock:
            discussion.events.append(event)
        return event


def discussion_json(d: Discussion, timestamp: str) -> dict[str, Any]:
    """One item of `GET /api/models/{repo}/discussions`."""
    return {
        "num": d.num,
        "title": d.title,
        "author": {"name": d.author},
        "createdAt": timestamp,
        "status": d.status,
        "repo": {"name": d.repo_id, "type": "model"},
        "isPullRequest": d.is_pull_request,
        "numComments": sum(e.type == "comment" for e in d.events),
        "pinned": False,
    }


def event_json(e: Event, timestamp: str) -> dict[str, Any]:
    return {
        "id": e.id,
        "type": e.type,
        "createdAt": timestamp,
        "author": {"name": e.author},
        "data": e.data,
    }
