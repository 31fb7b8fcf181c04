"""Attack: a stale paramdelta.json beside weights the bot did not make.

After `merge --push-to` (or `publish`) of a different trio onto an output repo, the repo
kept its old paramdelta.json, and `plan` then called the target up to date.
"""

import json

from paramdelta.cli import main

from .helpers import target, write_watchlist


def _plan(watchlist, capsys):
    capsys.readouterr()
    assert main(["plan", "--watchlist", str(watchlist)]) == 0
    return capsys.readouterr().out.splitlines()[0]


def test_pushing_other_weights_replaces_the_record_with_one_that_describes_them(
    hub_trio, fake_hub, tmp_path, capsys
):
    watchlist = write_watchlist(tmp_path, target("good", "me/good"))
    assert main(["run", "--watchlist", str(watchlist)]) == 0
    assert _plan(watchlist, capsys).startswith("good: up-to-date")

    # A different trio pushed by hand onto the same repo: its commit carries its own record.
    args = ["--base", "org/base", "--post", "org/post", "--new-base", "org/base"]
    assert main(["merge", *args, "--push-to", "me/good", "--alpha", "0.5"]) == 0
    record = json.loads(fake_hub.read_file("me/good", "paramdelta.json"))
    assert (record["target"], record["recipe"]["alpha"]) == (None, 0.5)
    assert [c["repo"] for c in record["checkpoints"]] == ["org/base", "org/post", "org/base"]
    assert _plan(watchlist, capsys).endswith(
        ": new base is now org/new-base (was org/base); recipe alpha changed: 0.5 -> 1.0"
    )


def test_a_record_kept_beside_other_weights_does_not_make_the_target_current(
    hub_trio, fake_hub, tmp_path, capsys
):
    watchlist = write_watchlist(tmp_path, target("good", "me/good"))
    assert main(["run", "--watchlist", str(watchlist)]) == 0
    record = fake_hub.read_file("me/good", "paramdelta.json")
    shard = sorted(f for f in fake_hub.list_files("me/good") if f.endswith(".safetensors"))[0]

    # Other weights under the same name, the genuine record left as it was (or put back).
    other = (
        fake_hub.read_file("org/base", shard) if shard in fake_hub.list_files("org/base") else b"x"
    )
    fake_hub.commit("me/good", {shard: other, "paramdelta.json": record})
    assert fake_hub.read_file("me/good", "paramdelta.json") == record
    assert _plan(watchlist, capsys).endswith(
        f": {shard} in the output is not the file its lineage record names"
    )

    # So do extra weight files.
    assert main(["run", "--watchlist", str(watchlist)]) == 0
    fake_hub.commit("me/good", {"extra.safetensors": b"junk"})
    assert _plan(watchlist, capsys).endswith(
        ": the output's weight files are not the ones its lineage record names"
    )
    assert main(["run", "--watchlist", str(watchlist)]) == 0
    assert "extra.safetensors" not in fake_hub.list_files("me/good")  # removed by the new commit
    assert _plan(watchlist, capsys).startswith("good: up-to-date")
