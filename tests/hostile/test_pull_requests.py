"""Attacks on `publish: pr`: pull requests that are not the bot's, and overlapping runs.

Any Hub user could open a PR carrying the expected paramdelta.json and junk weights:
`plan` counted it as in review (recorded as `up-to-date`), `run` did nothing, and a
reviewer might merge the stranger's PR believing it the bot's. Two overlapping runs
opened two identical PRs (the Hub opens a PR from a stale parent without complaint).
"""

from paramdelta.cli import main
from paramdelta.engine.recipe import Runtime
from paramdelta.hub.client import Hub
from paramdelta.pipeline.plan import plan_watchlist
from paramdelta.pipeline.run_target import RunOptions, run_target
from paramdelta.pipeline.watchlist import load
from paramdelta.reporting.results import load_results
from paramdelta.testing.checkpoints import chat_template
from paramdelta.testing.hub import AUTHOR

from .helpers import target, write_watchlist


def _open_prs(fake_hub, repo):
    return [d.num for d in fake_hub.discussions.list(repo, status="open")]


def test_a_strangers_pull_request_never_counts_as_in_review(hub_trio, fake_hub, tmp_path, capsys):
    watchlist = write_watchlist(tmp_path, target("good", "me/good", publish="pr"))
    results = tmp_path / "plan.json"
    assert main(["run", "--watchlist", str(watchlist)]) == 0
    ours = fake_hub.pull_requests("me/good")[0]
    # A stranger copies the bot's proposal, record and all, beside weights of their own ...
    files = {
        name: fake_hub.read_file("me/good", name, ours.ref)
        for name in fake_hub.list_files("me/good", ours.ref)
    }
    files["model.safetensors"] = b"junk"
    theirs = fake_hub.open_pull_request("me/good", files, author="mallory", title=ours.title)
    # ... or even with the genuine weights: only the bot's own account counts.
    genuine = {
        **files,
        "model.safetensors": fake_hub.read_file("me/good", "model.safetensors", ours.ref),
    }
    copy = fake_hub.open_pull_request("me/good", genuine, author="mallory", title=ours.title)
    fake_hub.discussions.change_status("me/good", ours.num, AUTHOR, "closed")  # the bot's is gone
    capsys.readouterr()

    assert main(["plan", "--watchlist", str(watchlist), "--result-file", str(results)]) == 0
    assert capsys.readouterr().out.startswith("good: pending")
    assert [r.status for r in load_results([results])] == ["planned"]
    assert main(["run", "--watchlist", str(watchlist)]) == 0
    opened = fake_hub.pull_requests("me/good")[-1].num
    assert fake_hub.discussion("me/good", opened).author == AUTHOR
    assert sorted(_open_prs(fake_hub, "me/good")) == sorted([theirs, copy, opened])  # not ours


def test_in_review_is_a_status_of_its_own(hub_trio, fake_hub, tmp_path, capsys):
    watchlist = write_watchlist(tmp_path, target("good", "me/good", publish="pr"))
    assert main(["run", "--watchlist", str(watchlist)]) == 0
    capsys.readouterr()
    results = tmp_path / "plan.json"
    assert main(["plan", "--watchlist", str(watchlist), "--result-file", str(results)]) == 0
    assert capsys.readouterr().out.startswith("good: in-review (new base org/new-base@")
    [result] = load_results([results])
    assert (result.status, result.url) == ("in-review", f"{fake_hub.url}/me/good/discussions/1")
    assert main(["run", "--watchlist", str(watchlist), "--result-file", str(results)]) == 0
    assert [r.status for r in load_results([results])] == ["in-review"]


def test_two_overlapping_runs_open_one_pull_request(hub_trio, fake_hub, hub_token, tmp_path):
    watchlist = load(write_watchlist(tmp_path, target("good", "me/good", publish="pr")))
    hub = Hub(token=hub_token)
    [first] = plan_watchlist(hub, watchlist)
    [second] = plan_watchlist(hub, watchlist)
    options = RunOptions(Runtime(progress=False))

    opened = run_target(hub, second, options)
    late = run_target(hub, first, options)
    assert opened.status == "pr-opened"
    assert (late.status, late.url) == ("in-review", opened.url)
    assert len(fake_hub.pull_requests("me/good")) == 1


def test_a_new_proposal_closes_the_ones_it_supersedes(hub_trio, fake_hub, tmp_path):
    watchlist = write_watchlist(tmp_path, target("good", "me/good", publish="pr"))
    assert main(["run", "--watchlist", str(watchlist)]) == 0
    stranger = fake_hub.open_pull_request("me/good", {"x.txt": b"x"}, author="mallory")
    # a change (one that renders: the pre-publish check renders it)
    fake_hub.commit("org/post", {"chat_template.jinja": chat_template("new post").encode()})

    assert main(["run", "--watchlist", str(watchlist)]) == 0
    old, _, new = fake_hub.pull_requests("me/good")
    assert _open_prs(fake_hub, "me/good") == [new.num, stranger]
    closed = fake_hub.discussion("me/good", old.num)
    url = f"{fake_hub.url}/me/good/discussions/{new.num}"
    assert [(e.type, e.author) for e in closed.events] == [
        ("comment", AUTHOR),
        ("status-change", AUTHOR),
    ]
    assert closed.events[0].data["latest"]["raw"] == (
        f"Superseded by #{new.num} ({url}), a merge of newer inputs."
    )
