"""Which watchlist targets need a new merge: a few API calls per target, no weight bytes.

For each enabled target: resolve the base, post and new base (every delta's
post and base, for a target with several) to commit shas
with their file listings (for a family, find its newest member first), read
the output repo's paramdelta.json, and compare (`lineage.compare`). A target is
pending when the content of a file the merge read, the recipe, or which
checkpoint gives which file differs, or there is no record, or the weights
beside it are not the ones it names; a commit upstream that changed none of
these ("upstream moved, content unchanged", a README edit say) leaves it up to
date. With `publish: pr`, an open pull request of the bot's own account that
already carries the wanted merge counts as done (in review, a status of its
own), so a schedule does not open the same PR every few hours; a stranger's
pull request never counts. A target that fails to resolve is
reported as such and does not stop the others.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from paramdelta.errors import HubError, ParamDeltaError
from paramdelta.hub.client import Hub, RepoFiles
from paramdelta.pipeline import lineage
from paramdelta.pipeline.proposals import Proposal, own_proposals
from paramdelta.pipeline.watchlist import Family, Target, Watchlist
from paramdelta.reporting.results import Status, TargetResult

# What a plan found: merge it, nothing to merge (published, or proposed in a pull request),
# nothing to do by design (the new base is the base; the target is disabled), or an error.
PlanStatus = Literal["pending", "up-to-date", "in-review", "skipped", "disabled", "error"]
PENDING: PlanStatus = "pending"
MAX_REVIEWED_PRS = 3  # newest pull requests whose record is checked
# A fan-out's legs commit their shards here, on the output repo (`paramdelta.pipeline.fan_out`).
STAGING_PREFIX = "paramdelta-staging/"


@dataclass
class TargetPlan:
    target: Target
    status: PlanStatus
    reasons: list[str] = field(default_factory=list)
    checkpoints: dict[str, RepoFiles] = field(default_factory=dict)
    output_repo: str | None = None
    error: ParamDeltaError | None = None
    seconds: float = 0.0
    output_head: str | None = None  # the output branch's commit when planned (None: no repo)
    review_url: str | None = None  # in review: the bot's pull request that carries the merge

    @property
    def pending(self) -> bool:
        return self.status == PENDING

    def pins(self) -> dict[str, dict[str, str]]:
        """role -> {repo, revision, sha}, as the lineage record keeps them."""
        return {
            role: {"repo": f.repo_id, "revision": f.revision, "sha": f.sha}
            for role, f in self.checkpoints.items()
        }

    @property
    def plan_id(self) -> str:
        """Names the merge this plan makes: the inputs' shas, the recipe and the legs. Every
        job that plans the same merge finds the same id (not the output head: the first leg
        may create the output repo that the next one finds)."""
        doc = {
            "pins": self.pins(),
            "recipe": self.target.recipe._asdict(),
            "legs": self.target.legs,
        }
        text = json.dumps(doc, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @property
    def staging_branch(self) -> str:
        """The output repo's branch where a fan-out's legs put their shards."""
        return f"{STAGING_PREFIX}{self.target.name}-{self.plan_id}"

    def result(self, status: Status, *, seconds: float = 0.0, **fields: Any) -> TargetResult:
        """This target's outcome, as `report` reads it back from a result file."""
        new_base = self.checkpoints.get("new_base")
        return TargetResult(
            target=self.target.name,
            status=status,
            output_repo=self.output_repo,
            new_base_repo=new_base.repo_id if new_base else None,
            new_base_sha=new_base.sha if new_base else None,
            duration_s=round(self.seconds + seconds, 3),
            **({"exit_code": 0} | fields),
        )

    def to_dict(self) -> dict[str, Any]:
        """One matrix entry: everything a merge job needs to know about the target."""
        return {
            "target": self.target.name,
            "status": self.status,
            "output_repo": self.output_repo,
            "publish": self.target.publish,
            "reasons": self.reasons,
            **{role: f"{p['repo']}@{p['sha']}" for role, p in self.pins().items()},
            "error": str(self.error) if self.error else None,
        }


Resolved = dict[tuple[str, str], RepoFiles]  # (repo, revision) -> its commit, once per plan


def resolve(hub: Hub, target: Target, *, seen: Resolved | None = None) -> dict[str, RepoFiles]:
    """The target's checkpoints (three; 2N+1 for N deltas) pinned to commit shas, with file
    sizes and content ids.

    ``seen`` shares resolutions between the targets of one plan: a base used by
    ten targets costs one request, and all ten see the same commit.
    """
    seen = {} if seen is None else seen
    new_base = target.new_base
    if isinstance(new_base, Family):
        newest = hub.newest_repo(new_base.author, new_base.pattern)
        if newest is None:
            raise HubError(f"no repo of {new_base.author} matches {new_base.pattern!r}")
        new_base_ref = (newest[0], new_base.revision)
    else:
        new_base_ref = (new_base.repo, new_base.revision)
    refs = {role: (ref.repo, ref.revision) for role, ref in target.delta_refs().items()}
    refs["new_base"] = new_base_ref
    for ref in refs.values():
        if ref not in seen:
            seen[ref] = hub.repo_files(*ref)
    return {role: seen[ref] for role, ref in refs.items()}


def plan_target(hub: Hub, target: Target, *, seen: Resolved | None = None) -> TargetPlan:
    started = time.perf_counter()
    if not target.enabled:
        return TargetPlan(target, "disabled", ["enabled: false"])
    try:
        checkpoints = resolve(hub, target, seen=seen)
        plan = TargetPlan(target, PENDING, checkpoints=checkpoints)
        plan.output_repo = target.output_repo(checkpoints["new_base"].repo_id)
        if checkpoints["new_base"].repo_id == checkpoints["base"].repo_id and (
            checkpoints["new_base"].sha == checkpoints["base"].sha
        ):
            plan.status, plan.reasons = "skipped", ["the new base is the base itself"]
        else:
            _compare(hub, plan)
    except ParamDeltaError as e:
        plan = TargetPlan(target, "error", [str(e)], error=e)
    plan.seconds = time.perf_counter() - started
    return plan


def _compare(hub: Hub, plan: TargetPlan) -> None:
    assert plan.output_repo is not None
    output = hub.find_repo_files(plan.output_repo, "main")
    plan.output_head = output.sha if output else None  # the parent of the commit, if any
    reasons, notes = published_differences(hub, plan, output)
    if not reasons:
        plan.status, plan.reasons = "up-to-date", notes
        return
    if plan.target.publish == "pr" and (proposal := proposal_for(hub, plan)) is not None:
        plan.status, plan.reasons = "in-review", [f"already proposed in {proposal.ref}"]
        plan.review_url = proposal.url(hub, plan.output_repo)
        return
    plan.reasons = reasons


def proposal_for(hub: Hub, plan: TargetPlan) -> Proposal | None:
    """The bot's own open pull request that carries exactly this merge, if there is one."""
    assert plan.output_repo is not None
    for proposal in own_proposals(hub, plan.output_repo, MAX_REVIEWED_PRS):
        if proposal.files is not None and not published_differences(hub, plan, proposal.files)[0]:
            return proposal
    return None


def published_differences(
    hub: Hub, plan: TargetPlan, output: RepoFiles | None
) -> lineage.Comparison:
    """Why ``output`` (the output repo at a commit) is not what the target should publish.

    Its lineage record must describe a merge of the target's checkpoints as they are
    now, with its recipe (`lineage.compare`), and the weights beside it must be the
    ones it names.
    """
    assert plan.output_repo is not None
    record = None
    if output is not None and output.sizes.get(lineage.FILENAME, 0) <= lineage.MAX_BYTES:
        data = hub.read_small_file(plan.output_repo, lineage.FILENAME, output.sha)
        record = lineage.decode(data)
    reasons, notes = lineage.compare(record, plan.checkpoints, plan.target.recipe)
    if output is not None and (mismatch := lineage.output_differences(record, output)):
        return lineage.Comparison([*reasons, *mismatch], [])
    return lineage.Comparison(reasons, notes)


def plan_watchlist(hub: Hub, watchlist: Watchlist, only: str | None = None) -> list[TargetPlan]:
    targets = [watchlist.target(only)] if only else watchlist.targets
    seen: Resolved = {}
    return [plan_target(hub, target, seen=seen) for target in targets]
