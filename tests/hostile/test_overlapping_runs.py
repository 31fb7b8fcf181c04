"""Attack (or accident): two runs of the same target overlap.

A manual dispatch beside the schedule, or a second runner: both published, because the
commit's parent was read when publishing started, after the hours of downloading and
merging, not when the target was planned. With `publish: pr`, two identical PRs
(tests/hostile/test_pull_requests.py).
"""

import pytest

from paramdelta.engine.recipe import Runtime
from paramdelta.hub.client import Hub
from paramdelta.pipeline.plan import plan_watchlist
from paramdelta.pipeline.run_target import RunOptions, run_target
from paramdelta.pipeline.watchlist import load

from .helpers import target, write_watchlist


@pytest.mark.parametrize("existing", [True, False], ids=["repo-exists", "new-repo"])
def test_of_two_overlapping_runs_one_publishes_and_the_other_exits_5(
    hub_trio, fake_hub, hub_token, tmp_path, monkeypatch, existing
):
    if existing:
        fake_hub.create_repo("me/good")
    watchlist = load(write_watchlist(tmp_path, target("good", "me/good")))
    hub = Hub(token=hub_token)
    # Both runs plan before either has published (the schedule, and a manual dispatch).
    [first] = plan_watchlist(hub, watchlist)
    [second] = plan_watchlist(hub, watchlist)
    options = RunOptions(Runtime(progress=False))

    monkeypatch.setenv("GITHUB_SERVER_URL", "https://github.test")
    monkeypatch.setenv("GITHUB_REPOSITORY", "o/r")
    monkeypatch.setenv("GITHUB_RUN_ID", "2")  # two workflow runs: their records differ
    assert run_target(hub, second, options).status == "published"
    head = fake_hub.head("me/good")
    monkeypatch.setenv("GITHUB_RUN_ID", "1")
    late = run_target(hub, first, options)

    assert (late.status, late.exit_code) == ("failed", 5)
    assert late.error.endswith("nothing was committed; re-run to re-plan")
    assert fake_hub.head("me/good") == head
    assert len(fake_hub.commits("me/good")) == 2  # the repo's first commit, and one merge
