"""A fan-out: one target merged by N legs on N runners, published by one finish job in one commit.

    plan     N matrix entries for a target with `legs: N` (leg K of N)
    leg K    merges only the shards `paramdelta.engine.legs.assign_legs` gives it (reading
             only the input bytes they need), uploads each through Xet and commits them,
             with its part of the delta report, to the output repo's staging branch
             paramdelta-staging/<target>-<plan id>, made from the planned parent
    finish   checks that the branch holds every shard as its leg recorded it, then makes
             one commit on the output branch with the planned parent: the shards copied
             by reference (no byte uploaded again), the index, config and donated files,
             the card with the whole delta report, the lineage record and the chart;
             then deletes the staging branch

Legs commit to the branch concurrently: a commit that another leg's beat is
retried on the new head (`Publisher.commit_beside`). A leg whose shards are on
the branch already, with the content ids its record names, does nothing, so a
re-run redoes only what is missing. A finish that misses a leg publishes
nothing and fails with `MissingLegsError` naming the legs. A staging branch of
another plan of the target (a dead run's) is deleted by the next leg or finish.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from paramdelta.engine.checkpoint import Source
from paramdelta.engine.legs import (
    Leg,
    assign_legs,
    combined_stats,
    files_read,
    stats_from_dict,
    stats_to_dict,
)
from paramdelta.engine.merge_plan import MergePlan
from paramdelta.engine.stages import Staged, preflight, stage
from paramdelta.engine.workers import MergeStats
from paramdelta.engine.writer import ShardPlan, plan_shards
from paramdelta.errors import MissingLegsError, UsageError
from paramdelta.hub.client import Hub, RepoFiles
from paramdelta.hub.publisher import Publisher
from paramdelta.hub.sources import download_inputs
from paramdelta.pipeline import check as pre_publish
from paramdelta.pipeline.check_rules import model_bytes
from paramdelta.pipeline.plan import STAGING_PREFIX, TargetPlan
from paramdelta.pipeline.proposals import close_superseded
from paramdelta.pipeline.publish import result_files, scratch_dir, upload_while_writing
from paramdelta.pipeline.run_target import (
    RunOptions,
    already_proposed,
    card_settings,
    check_staged,
    failure,
    input_sources,
    nothing_to_merge,
    output_publisher,
)
from paramdelta.reporting.results import Status, TargetResult

log = logging.getLogger(__name__)

LEG_FOLDER = "paramdelta-legs"  # on the staging branch: what each leg staged
PLAN_ID = re.compile(r"[0-9a-f]{12}")


@dataclass(frozen=True)
class LegPart:
    """What a leg left on the staging branch: its shards' content ids and its merge stats."""

    leg: Leg
    shards: dict[str, str]  # filename -> content id ("sha256:...")
    stats: MergeStats

    def encode(self) -> bytes:
        doc = {
            "leg": self.leg.number,
            "legs": self.leg.of,
            "shards": self.shards,
            "stats": stats_to_dict(self.stats),
        }
        return (json.dumps(doc, indent=1) + "\n").encode()

    @classmethod
    def decode(cls, data: bytes, leg: Leg) -> LegPart | None:
        """The part of ``leg``; None for anything else (another layout, a damaged file)."""
        try:
            doc = json.loads(data)
            if (doc["leg"], doc["legs"]) != tuple(leg):
                return None
            shards = {str(k): str(v) for k, v in doc["shards"].items()}
            return cls(leg, shards, stats_from_dict(doc["stats"]))
        except (ValueError, KeyError, TypeError, AttributeError):
            return None

    def staged(self, names: list[str], branch: RepoFiles | None) -> bool:
        """Whether the branch holds exactly the shards ``names``, with the ids recorded."""
        return (
            branch is not None
            and sorted(self.shards) == sorted(names)
            and all(branch.content.get(name) == cid for name, cid in self.shards.items())
        )


def leg_file(leg: Leg) -> str:
    return f"{LEG_FOLDER}/leg-{leg.number}-of-{leg.of}.json"


class Layout:
    """The merge every leg and the finish job compute alike, from the inputs' headers."""

    def __init__(self, plan: TargetPlan, sources: dict[str, Source]) -> None:
        self.merge: MergePlan = preflight(sources, plan.target.recipe)
        self.shards: list[ShardPlan] = plan_shards(self.merge.items, plan.target.recipe.shard_size)
        self.legs = assign_legs(self.merge, self.shards, plan.target.legs)

    def names(self, leg: Leg) -> list[str]:
        return [self.shards[s].filename for s in self.legs[leg.number - 1]]


def run_leg(hub: Hub, plan: TargetPlan, leg: Leg, options: RunOptions) -> TargetResult:
    """Merge leg ``leg`` of a pending target into its staging branch; raises nothing but an
    interruption."""
    started = time.perf_counter()

    def result(status: Status, **fields: object) -> TargetResult:
        return plan.result(status, seconds=time.perf_counter() - started, **fields)

    if (settled := nothing_to_merge(plan)) is not None:
        return settled
    try:
        check_leg(plan, leg)
        sources = input_sources(hub, plan)
        layout = Layout(plan, sources)
        if options.dry_run:
            return result("dry-run")
        repo, branch = open_staging(hub, plan), plan.staging_branch
        on_branch = hub.find_repo_files(repo, branch)
        if (part := read_part(hub, repo, on_branch, leg)) and part.staged(
            layout.names(leg), on_branch
        ):
            log.info(f"{plan.target.name}: leg {leg} is staged already: nothing to do")
            return result("staged", url=branch_url(hub, repo, branch))
        mine = layout.legs[leg.number - 1]
        if not options.stream:
            sources = download_inputs(
                layout.merge, sources, files_read(layout.merge, layout.shards, mine)
            )
        message = f"ParamΔ fan-out: leg {leg} of {plan.target.name}"
        with (
            scratch_dir() as scratch,
            Publisher(hub, repo, message=message, revision=branch) as up,
            stage(layout.merge, sources, scratch / "leg", options.runtime, only=mine) as staged,
        ):
            upload_while_writing(staged, up, keep=False)
            stats = staged.result().stats
            ids = {name: cids[0] for name, cids in up.uploaded_ids().items()}
            up.commit_beside({leg_file(leg): LegPart(leg, ids, stats).encode()})
    except Exception as e:  # this target's failure, not the run's
        return failure(plan.target.name, plan, e, time.perf_counter() - started)
    return result("staged", url=branch_url(hub, repo, branch))


def finish(hub: Hub, plan: TargetPlan, options: RunOptions) -> TargetResult:
    """Publish what the legs staged in one commit, or fail naming the legs that are missing;
    raises nothing but an interruption."""
    started = time.perf_counter()

    def result(status: Status, **fields: object) -> TargetResult:
        return plan.result(status, seconds=time.perf_counter() - started, **fields)

    if (settled := nothing_to_merge(plan)) is not None:
        if plan.output_repo is not None and plan.error is None:
            delete_stale(hub, plan, keep=None)  # published already: no branch is needed
        return settled
    try:
        sources = input_sources(hub, plan)
        layout = Layout(plan, sources)
        skipped = pre_publish.decide(
            options.check or plan.target.check, model_bytes(layout.merge), options.runtime.device
        )
        if options.dry_run:  # the legs' dry runs staged nothing
            return result("dry-run")
        assert plan.output_repo is not None
        repo, branch = plan.output_repo, plan.staging_branch
        on_branch = hub.find_repo_files(repo, branch)
        parts = staged_parts(hub, plan, layout, on_branch)
        assert on_branch is not None  # every leg is staged
        if skipped is None and not options.stream:
            sources = download_inputs(layout.merge, sources)
        stats = combined_stats(layout.merge, [p.stats for p in parts])
        shard_ids = {name: [cid] for p in parts for name, cid in p.shards.items()}
        copies = dict.fromkeys(shard_ids, on_branch.sha)
        publisher = output_publisher(hub, plan)
        with (
            scratch_dir() as scratch,
            publisher,
            stage(layout.merge, sources, scratch / "merged", options.runtime, only=()) as st,
        ):
            st.write_files(stats)
            if skipped is None:  # the check loads the whole output: fetch the shards
                linked = link_shards(hub, repo, on_branch.sha, list(shard_ids), st)
            report = check_staged(st, plan, options, skipped)
            if skipped is None:
                for path in linked:
                    path.unlink()  # they are committed by reference, not from here
            files = result_files(
                st.result(),
                card_settings(plan),
                publisher=publisher,
                check=report,
                shard_ids=shard_ids,
            )
            st.add_files(files)
            published = already_proposed(hub, plan, publisher) or publisher.commit(
                st.directory, copies=copies
            )
        hub.delete_branch(repo, branch)
        if published.pr_number is not None:
            close_superseded(hub, publisher.repo_id, plan.target.name, published)
    except Exception as e:  # this target's failure, not the run's
        return failure(plan.target.name, plan, e, time.perf_counter() - started)
    if published.in_review:
        return result("in-review", url=published.url, check=report.to_dict())
    status: Status = "pr-opened" if published.pr_url else "published"
    return result(status, url=published.url, check=report.to_dict())


def check_leg(plan: TargetPlan, leg: Leg) -> None:
    legs = plan.target.legs
    if leg.of != legs:
        raise UsageError(
            f"--leg {leg}: target {plan.target.name!r} has legs: {legs} in the watchlist,"
            f" not {leg.of}"
        )


def staged_parts(
    hub: Hub, plan: TargetPlan, layout: Layout, on_branch: RepoFiles | None
) -> list[LegPart]:
    """Every leg's part, checked against the branch; MissingLegsError naming those that
    are not (all) there."""
    assert plan.output_repo is not None
    parts, missing = [], []
    for number in range(1, plan.target.legs + 1):
        leg = Leg(number, plan.target.legs)
        part = read_part(hub, plan.output_repo, on_branch, leg)
        if part is None or not part.staged(layout.names(leg), on_branch):
            missing.append(number)
        else:
            parts.append(part)
    if missing:
        which = ", ".join(map(str, missing))
        raise MissingLegsError(
            f"target {plan.target.name}: leg(s) {which} of {plan.target.legs} missing from"
            f" staging branch {plan.staging_branch} of {plan.output_repo} (never ran, failed or"
            " were killed); nothing was published; re-run those legs, then --finish",
            missing,
        )
    return parts


def read_part(hub: Hub, repo: str, on_branch: RepoFiles | None, leg: Leg) -> LegPart | None:
    if on_branch is None or leg_file(leg) not in on_branch.sizes:
        return None
    data = hub.read_small_file(repo, leg_file(leg), on_branch.sha)
    return None if data is None else LegPart.decode(data, leg)


def open_staging(hub: Hub, plan: TargetPlan) -> str:
    """The output repo (created if need be) with this plan's staging branch, made from the
    planned parent; other plans' staging branches of the target are deleted first."""
    assert plan.output_repo is not None
    hub.create_repo(plan.output_repo, private=plan.target.private)
    branches = delete_stale(hub, plan, keep=plan.staging_branch)
    if plan.staging_branch not in branches:
        hub.create_branch(plan.output_repo, plan.staging_branch, plan.output_head or "main")
    return plan.output_repo


def delete_stale(hub: Hub, plan: TargetPlan, *, keep: str | None) -> dict[str, str]:
    """Delete the target's staging branches but ``keep``; the branches left."""
    assert plan.output_repo is not None
    if hub.find_repo_files(plan.output_repo, "main") is None:
        return {}
    branches = hub.branches(plan.output_repo)
    prefix = f"{STAGING_PREFIX}{plan.target.name}-"
    for name in list(branches):
        own = name.startswith(prefix) and PLAN_ID.fullmatch(name.removeprefix(prefix))
        if own and name != keep:
            log.info(f"{plan.target.name}: deleting the staging branch {name} of an older run")
            hub.delete_branch(plan.output_repo, name)
            del branches[name]
    return branches


def link_shards(hub: Hub, repo: str, sha: str, names: list[str], staged: Staged) -> list[Path]:
    """The staged shards, fetched into the HF cache and linked into the staged output."""
    snapshot = hub.download(repo, sha, names)
    linked = []
    for name in names:
        link = staged.directory / name
        link.symlink_to((snapshot / name).resolve())
        linked.append(link)
    return linked


def branch_url(hub: Hub, repo: str, branch: str) -> str:
    return f"{hub.endpoint}/{repo}/tree/{quote(branch, safe='')}"
