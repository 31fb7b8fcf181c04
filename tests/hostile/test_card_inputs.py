"""Attacks on the model card: a template from outside the repository, Markdown in a licence.

A watchlist `card_template` pointing outside the repository (`../../...`,
`/proc/self/environ`, a symlink leading out) validated, and `run` published the
file's content as the model card: with `/proc/self/environ`, the Hub token. An
upstream licence string with backticks and newlines injected a heading, a link
and an image into the card body.
"""

import os

import pytest
import yaml
from huggingface_hub import ModelCard

from paramdelta.cli import main
from paramdelta.rendering.card import MAX_TEMPLATE_BYTES

from .helpers import target, write_watchlist


def _watchlist(folder, template):
    folder.mkdir(exist_ok=True)
    return write_watchlist(folder, target("good", "me/good", card_template=str(template)))


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("../../secret.txt", "'../../secret.txt' must not leave the watchlist's folder ('..')"),
        (
            "/proc/self/environ",
            "'/proc/self/environ' must be a path relative to the watchlist, not absolute",
        ),
        ("card.md.j2", "'card.md.j2' leads out of the watchlist's folder (through a symlink)"),
    ],
)
def test_a_card_template_outside_the_repository_is_refused(
    hub_trio, fake_hub, tmp_path, capsys, template, problem
):
    (tmp_path / "secret.txt").write_text("{{ card.model_name }} hf_secret_on_the_runner")
    repo = tmp_path / "checkout"
    repo.mkdir()
    (repo / "card.md.j2").symlink_to("/proc/self/environ")
    watchlist = _watchlist(repo, template)

    assert main(["watchlist", "validate", str(watchlist)]) == 2
    assert capsys.readouterr().err == f"{watchlist}:7: targets[0].card_template: {problem}\n"
    assert main(["run", "--watchlist", str(watchlist)]) == 2
    assert f"targets[0].card_template: {problem}" in capsys.readouterr().err
    assert not fake_hub.repo_exists("me/good")


def test_a_card_template_must_be_a_small_regular_file(tmp_path, capsys):
    (tmp_path / "huge.j2").write_text("x" * (MAX_TEMPLATE_BYTES + 1))
    os.mkfifo(tmp_path / "fifo.j2")  # a FIFO would block the read forever
    for name, problem in (
        ("huge.j2", f"larger than {MAX_TEMPLATE_BYTES} bytes"),
        ("fifo.j2", "not a regular file"),
    ):
        watchlist = _watchlist(tmp_path, name)
        assert main(["watchlist", "validate", str(watchlist)]) == 2
        err = capsys.readouterr().err
        assert (
            err
            == f"{watchlist}:7: targets[0].card_template: card template {tmp_path / name}: {problem}\n"
        )


HOSTILE_LICENCE = (
    "mit`\n\n# Pwned\n\n[click](https://evil.test/x) ![img](https://evil.test/i.png)\n`"
)


def test_an_upstream_licence_cannot_write_markdown_into_the_card(hub_trio, fake_hub, tmp_path):
    readme = f"---\n{yaml.safe_dump({'license': HOSTILE_LICENCE})}---\n# new base\n"
    fake_hub.commit("org/new-base", {"README.md": readme.encode()})
    fake_hub.commit("org/post", {"README.md": b"---\nlicense: apache-2.0\n---\n# post\n"})
    watchlist = write_watchlist(tmp_path, target("good", "me/good"))
    assert main(["run", "--watchlist", str(watchlist)]) == 0

    card = ModelCard(fake_hub.read_file("me/good", "README.md").decode())
    assert card.data.license == "apache-2.0"  # the post model's, the only usable one
    assert "evil.test" not in card.content and "Pwned" not in card.content
    assert (
        "the card of the new base declares a licence that is not a Hub licence id, so it is not"
        " inherited: check its terms before use." in card.text
    )
