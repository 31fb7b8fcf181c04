"""The command line as a whole: its help says where to start, and every option says what it is."""

import argparse

import pytest

from paramdelta.cli import build_parser, main


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
