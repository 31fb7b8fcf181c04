"""The bot's own pull requests on an output repo (targets with `publish: pr`).

Anyone can open a pull request on a public repo, carrying whatever paramdelta.json
they like beside junk weights: only the open pull requests of the bot's own account
(whoami) are its work in review. Before opening one, `run` looks again (the Hub
opens a pull request from a stale parent without complaint, so two overlapping runs
would open two); once it has opened one, or committed directly (a target switched
from `publish: pr` to `commit`), it closes those of its own for the same target that
the new merge supersedes, with a comment linking it.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

from paramdelta.errors import HubError
from paramdelta.hub.client import Hub, RepoFiles
from paramdelta.hub.publisher import PublishResult
from paramdelta.pipeline import lineage

log = logging.getLogger(__name__)


class Proposal(NamedTuple):
    """One of the bot's open pull requests, and the repo as it would be once merged."""

    number: int
    files: RepoFiles | None  # None if its ref is gone

    @property
    def ref(self) -> str:
        return f"refs/pr/{self.number}"

    def url(self, hub: Hub, repo_id: str) -> str:
        return f"{hub.endpoint}/{repo_id}/discussions/{self.number}"


def own_proposals(hub: Hub, repo_id: str, limit: int | None = None) -> list[Proposal]:
    """The bot's open pull requests on ``repo_id``, newest first (at most ``limit``)."""
    numbers = hub.own_open_prs(repo_id)[:limit]
    return [Proposal(n, hub.find_repo_files(repo_id, f"refs/pr/{n}")) for n in numbers]


def superseded_by(new: PublishResult) -> str:
    """The comment that closes a pull request ``new`` supersedes: it links ``new``."""
    if new.pr_number is not None:
        return f"Superseded by #{new.pr_number} ({new.pr_url}), a merge of newer inputs."
    sha = (new.commit_sha or "")[:7]
    return f"Superseded by commit {sha} ({new.commit_url}), committed directly to {new.revision}."


def close_superseded(hub: Hub, repo_id: str, target: str, new: PublishResult) -> list[int]:
    """Close the bot's other open pull requests for ``target`` once ``new`` (a pull request
    or a commit) is made; their numbers.

    A failure to close one is a warning: the new merge is published all the same.
    """
    comment = superseded_by(new)
    closed = []
    for proposal in own_proposals(hub, repo_id):
        if proposal.number == new.pr_number or proposal.files is None:
            continue
        data = hub.read_small_file(repo_id, lineage.FILENAME, proposal.files.sha)
        record = lineage.decode(data)
        if record is None or record.get("target") != target:
            continue  # not a merge of this target: not ours to judge
        try:
            hub.close_pr(repo_id, proposal.number, comment)
        except HubError as e:
            log.warning("could not close %s: %s", proposal.ref, e)
            continue
        closed.append(proposal.number)
    return closed
