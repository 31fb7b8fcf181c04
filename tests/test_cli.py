"""The command line as a whole: its help says where to start, and every option says what it is."""

import argparse
import re

import pytest

from paramdelta import PROJECT_URL
from paramdelta.cli import build_parser, main
from paramdelta.errors import exit_codes


def _options(parser: argparse.ArgumentParser, path: tuple[str, ...] = ("paramdelta",)):
    """Every (command path, action) of the parser and its subcommands."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                yield (*path, choice.dest), choice
            for name, sub in action.choices.items():
                yield from _options(sub, (*path, name))
        else:
            yield path, action


def test_every_option_and_command_has_help_text():
    missing = [
        f"{' '.join(path)} {'/'.join(action.option_strings) or action.dest}"
        for path, action in _options(build_parser())
        if not action.help
        or action.help == argparse.SUPPRESS
        or action.help.startswith("default")  # a default is not a description
    ]
    assert missing == []
    assert len(list(_options(build_parser()))) > 80  # the walk reached every command


def test_help_points_to_demo_and_init(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    start = out[out.index("start here:") :]
    assert "paramdelta demo " in start and "paramdelta init BASE POST NEW_BASE" in start
    assert out.index("demo      the whole cycle") < out.index("merge     merge three")


def _help(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def test_the_top_level_help_names_the_environment_the_exit_codes_and_the_docs(capsys):
    out = _help([], capsys)
    environment = out[out.index("environment:") : out.index("exit codes:")]
    assert re.search(r"^  HF_TOKEN +the Hub token", environment, re.M)
    assert re.search(r"^  HF_ENDPOINT +another Hub", environment, re.M)
    codes = out[out.index("exit codes:") : out.index("docs:")]
    listed = re.findall(r"^  (\d+(?:, \d+)*) +\S", codes, re.M)
    assert listed == ["0", *(str(code) for code in exit_codes()), "130, 143"]
    assert listed[1:-1] == [str(code) for code in range(1, 11)]
    assert "  2        bad arguments, settings or configuration" in codes
    assert f"docs: README.md and docs/ at {PROJECT_URL}\n" in out


def test_merge_help_says_what_a_src_is(capsys):
    out = " ".join(_help(["merge"], capsys).split())
    assert "SRC is a local folder (a path: ./base, /models/base, ~/base) or a Hub repo," in out
    assert "org/name[@revision]: a branch, tag or commit of it (default main)." in out


@pytest.mark.parametrize("command", ["merge", "publish"])
def test_the_output_branch_has_a_clear_name_and_keeps_its_old_one(command, capsys):
    required = {
        "merge": ["--base", "b", "--post", "p", "--new-base", "n"],
        "publish": ["dir", "--repo", "me/out"],
    }
    parse = build_parser().parse_args
    assert parse([command, *required[command]]).revision == "main"
    assert parse([command, *required[command], "--output-branch", "v2"]).revision == "v2"
    assert parse([command, *required[command], "--revision", "v2"]).revision == "v2"
    assert "--output-branch BRANCH, --revision BRANCH" in _help([command], capsys)


def test_watchlist_validate_describes_itself(capsys):
    out = " ".join(_help(["watchlist", "validate"], capsys).split())
    assert "Check a watchlist without touching the Hub: its YAML, its schema" in out
    assert "exit 0 when it is valid (warnings allowed), 2 when not." in out
