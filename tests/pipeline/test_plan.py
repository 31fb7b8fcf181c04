import json
from datetime import datetime, timezone

import pytest

from paramdelta.engine.recipe import Runtime
from paramdelta.hub.client import Hub
from paramdelta.pipeline.plan import plan_watchlist
from paramdelta.pipeline.run_target import RunOptions, run_target
from paramdelta.pipeline.watchlist import load
from paramdelta.testing.checkpoints import load_tensors, perturbed, save_checkpoint
from paramdelta.testing.seed import publish_folder

WATCHLIST = """\
targets:
  - name: branch
    base: org/base
    post: org/post
    new_base: {{repo: org/new-base, revision: main}}
    output: me/{{new_base_name}}-instruct
    publish: {publish}
  - name: family
    base: org/base
    post: org/post
    new_base: {{author: fam, pattern: "Fam-*-7B"}}
    output: me/{{new_base_name}}-instruct
"""


def _day(n):
    return datetime(2026, 1, n, tzinfo=timezone.utc)


@pytest.fixture
def world(hub_trio, fake_hub, hub_token, tmp_path):
    """The trio, plus a family of new bases (fam/Fam-1-7B, then fam/Fam-2-7B)."""
    publish_folder(fake_hub, "fam/Fam-1-7B", hub_trio.local["new_base"], created_at=_day(1))
    publish_folder(fake_hub, "fam/Fam-2-7B", hub_trio.local["new_base"], created_at=_day(2))
    fake_hub.create_repo("fam/Fam-3-70B", created_at=_day(3))  # newest, but not a match

    def watchlist(publish="commit"):
        path = tmp_path / f"watchlist-{publish}.yaml"
        path.write_text(WATCHLIST.format(publish=publish))
        return load(path)

    hub = Hub(token=hub_token)
    return hub, watchlist


def _statuses(plans):
    return {p.target.name: p.status for p in plans}


def _publish_all(hub, plans):
    return [run_target(hub, p, RunOptions(Runtime(progress=False))) for p in plans]


def test_new_targets_are_pending_with_resolved_shas(world, hub_trio, fake_hub):
    hub, watchlist = world
    branch, family = plan_watchlist(hub, watchlist())
    assert (branch.status, family.status) == ("pending", "pending")
    assert branch.reasons == ["no lineage record in the output repo"]
    assert {r: p["sha"] for r, p in branch.pins().items()} == hub_trio.shas
    assert branch.output_repo == "me/new-base-instruct"
    assert family.pins()["new_base"] == {
        "repo": "fam/Fam-2-7B",
        "revision": "main",
        "sha": fake_hub.head("fam/Fam-2-7B"),
    }
    assert family.output_repo == "me/Fam-2-7B-instruct"


def _new_weights(fake_hub, repo, local, tmp_path):
    """Commit a new release of ``local``'s weights (same config) to ``repo``; its sha."""
    config = json.loads((local / "config.json").read_text())
    state = perturbed(load_tensors(local), seed=99)
    folder = save_checkpoint(tmp_path / f"{repo}-v2", state, config, max_shard_size=60_000)
    return publish_folder(fake_hub, repo, folder, message="New weights")


def test_published_targets_are_up_to_date_until_something_moves(
    world, hub_trio, fake_hub, tmp_path
):
    hub, watchlist = world
    results = _publish_all(hub, plan_watchlist(hub, watchlist()))
    assert [r.status for r in results] == ["published", "published"]
    assert _statuses(plan_watchlist(hub, watchlist())) == {
        "branch": "up-to-date",
        "family": "up-to-date",
    }

    # A commit that touches no file the merge read is not a new release.
    readme_sha = fake_hub.commit("org/new-base", {"README.md": b"# typo fixed\n"})
    branch, family = plan_watchlist(hub, watchlist())
    assert (branch.status, family.status) == ("up-to-date", "up-to-date")
    assert branch.reasons == [
        "upstream moved, content unchanged (new base org/new-base moved"
        f" {hub_trio.shas['new_base'][:7]} -> {readme_sha[:7]})"
    ]

    # New weights on the followed branch make exactly that target pending.
    new_sha = _new_weights(fake_hub, "org/new-base", hub_trio.local["new_base"], tmp_path)
    branch, family = plan_watchlist(hub, watchlist())
    assert (branch.status, family.status) == ("pending", "up-to-date")
    assert branch.reasons == [
        f"new base org/new-base moved {hub_trio.shas['new_base'][:7]} -> {new_sha[:7]}:"
        " model-00001-of-00004.safetensors, model-00002-of-00004.safetensors,"
        " model-00003-of-00004.safetensors ... changed"
    ]

    # A new release in the family makes the family target pending, for a new output repo.
    publish_folder(fake_hub, "fam/Fam-4-7B", hub_trio.local["new_base"], created_at=_day(4))
    family = plan_watchlist(hub, watchlist(), "family")[0]
    assert family.status == "pending"
    assert family.output_repo == "me/Fam-4-7B-instruct"

    # So does a donated file of the post model, for every target that uses it.
    fake_hub.commit("org/post", {"chat_template.jinja": b"{{ fixed }}"})
    plans = plan_watchlist(hub, watchlist())
    assert set(_statuses(plans).values()) == {"pending"}
    assert plans[0].reasons[0].endswith(": chat_template.jinja changed")


def test_a_recipe_change_is_pending(world, tmp_path):
    hub, watchlist = world
    _publish_all(hub, plan_watchlist(hub, watchlist(), "branch"))
    changed = tmp_path / "alpha.yaml"
    changed.write_text(
        WATCHLIST.format(publish="commit").replace(
            "publish: commit", "publish: commit\n    alpha: 0.5"
        )
    )
    (branch,) = plan_watchlist(hub, load(changed), "branch")
    assert branch.reasons == ["recipe alpha changed: 1.0 -> 0.5"]


def test_an_open_pull_request_counts_as_in_review(world, hub_trio, fake_hub, tmp_path):
    hub, watchlist = world
    (result,) = _publish_all(hub, plan_watchlist(hub, watchlist("pr"), "branch"))
    assert result.status == "pr-opened", result.error
    (branch,) = plan_watchlist(hub, watchlist("pr"), "branch")
    assert branch.status == "in-review"
    assert branch.reasons == ["already proposed in refs/pr/1"]
    _new_weights(fake_hub, "org/new-base", hub_trio.local["new_base"], tmp_path)
    (branch,) = plan_watchlist(hub, watchlist("pr"), "branch")
    assert branch.status == "pending"


def test_one_unresolvable_target_does_not_stop_the_others(world, fake_hub, tmp_path):
    hub, _ = world
    path = tmp_path / "w.yaml"
    path.write_text(
        WATCHLIST.format(publish="commit").replace(
            "base: org/base\n    post: org/post\n    new_base: {author",
            "base: org/gone\n    post: org/post\n    new_base: {author",
        )
    )
    fake_hub.create_repo("org/gated", gated=True)
    branch, family = plan_watchlist(hub, load(path))
    assert branch.status == "pending"
    assert family.status == "error"
    assert family.reasons == [
        "org/gone@main: repository not found (or private, and the token cannot see it)"
    ]
    assert family.to_dict()["error"] == family.reasons[0]


def test_skipped_when_the_new_base_is_the_base(world, tmp_path):
    hub, _ = world
    path = tmp_path / "same.yaml"
    path.write_text(
        "targets:\n  - {name: s, base: org/base, post: org/post, new_base: org/base, output: me/s}\n"
    )
    (plan,) = plan_watchlist(hub, load(path))
    assert (plan.status, plan.reasons) == ("skipped", ["the new base is the base itself"])


def test_disabled_targets_are_not_resolved(world, fake_hub, tmp_path):
    hub, _ = world
    path = tmp_path / "off.yaml"
    path.write_text(
        "targets:\n  - {name: s, base: x/y, post: x/y, new_base: x/z, output: me/s, enabled: false}\n"
    )
    fake_hub.clear_requests()
    (plan,) = plan_watchlist(hub, load(path))
    assert plan.status == "disabled" and fake_hub.requests == []


def test_plan_is_a_few_requests_per_target_and_no_weights(world, fake_hub):
    hub, watchlist = world
    fake_hub.clear_requests()
    plans = plan_watchlist(hub, watchlist())
    assert [p.status for p in plans] == ["pending", "pending"]
    api = [r for r in fake_hub.requests if r.server == "hub"]
    # branch: 3 model infos + the output repo's; family: a listing, its newest member and the
    # output repo's (base and post were resolved once for both). No output repo exists yet, so
    # there is no lineage record to read.
    assert len(api) == 7
    assert fake_hub.weight_bytes_served() == 0
    # Every model info lists content ids (blobs=true), still one request each: the inputs'
    # for the lineage, the output repos' for their weights, checked against the record.
    infos = [r for r in api if "/revision/" in r.path]
    assert [r.query.get("blobs") for r in infos] == ["true"] * 6
    assert [r.path for r in infos if r.path.startswith("/api/models/me/")] == [
        "/api/models/me/new-base-instruct/revision/main",
        "/api/models/me/Fam-2-7B-instruct/revision/main",
    ]
