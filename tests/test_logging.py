"""One channel for what the bot says: `logging`, given one stderr handler by `main`."""

import io
import logging
import sys

import pytest

from paramdelta import tokens
from paramdelta.cli import main
from paramdelta.commands import plan
from paramdelta.hub import cache
from paramdelta.pipeline import proposals

LLAMA = ["meta-llama/Meta-Llama-3-8B", "meta-llama/Meta-Llama-3-8B-Instruct"]


def _init(tmp_path, name: str) -> list[str]:
    """`init --offline` for a target whose name breaks the Llama licence: one warning."""
    argv = ["init", *LLAMA, "meta-llama/Llama-3.1-8B", "--output", "me/Chat", "--offline"]
    return [*argv, "--dir", str(tmp_path / name)]


def _ours(logger: logging.Logger) -> list[logging.Handler]:
    return [h for h in logger.handlers if h.get_name() == "paramdelta.cli"]


@pytest.fixture
def configured(tmp_path, capsys):
    """The logging `main` leaves behind (two calls), and nothing printed yet."""
    assert main(_init(tmp_path, "one")) == 0
    assert main(_init(tmp_path, "two")) == 0
    capsys.readouterr()
    return logging.getLogger("paramdelta")


def test_two_main_calls_leave_one_handler_at_info_not_propagating(configured):
    assert len(_ours(configured)) == 1
    assert configured.level == logging.INFO
    assert configured.propagate is False


def test_a_warning_from_a_module_prints_with_the_bot_s_prefix(configured, capsys):
    cache.log.warning("%s in the cache: %s", "org/m@abc1234/x", "too short")
    proposals.log.warning("could not close %s", "refs/pr/3")
    assert capsys.readouterr().err == (
        "paramdelta: warning: org/m@abc1234/x in the cache: too short\n"
        "paramdelta: warning: could not close refs/pr/3\n"
    )


def test_an_info_note_prints_as_the_bare_line_and_debug_not_at_all(configured, capsys):
    log = logging.getLogger("paramdelta.pipeline.run_target")
    log.info("%s: %s", "qwen", "merged in 3 s")
    log.debug("not shown")
    assert capsys.readouterr() == ("", "qwen: merged in 3 s\n")


def test_a_watchlist_warning_prints_as_it_reads(tmp_path, capsys):
    assert main(_init(tmp_path, "one")) == 0
    assert capsys.readouterr().err == (
        "watchlist.yaml:10: warning: targets[0].output: Llama licence: the name of a model"
        " built with Llama must begin with 'Llama'; 'Chat' does not\n"
    )
    plan.log.warning("%s", "w.yaml:1: warning: x", extra={"located": True})
    assert capsys.readouterr().err == "w.yaml:1: warning: x\n"


def test_each_line_goes_to_the_stderr_of_its_time(configured, capsys, monkeypatch):
    """pytest swaps sys.stderr per test: the handler writes to the one there is now."""
    cache.log.warning("first")
    elsewhere = io.StringIO()
    monkeypatch.setattr(sys, "stderr", elsewhere)
    cache.log.warning("second")
    monkeypatch.undo()
    assert elsewhere.getvalue() == "paramdelta: warning: second\n"
    assert capsys.readouterr().err == "paramdelta: warning: first\n"


def test_a_token_in_a_line_is_redacted(configured, capsys, monkeypatch):
    monkeypatch.setattr(tokens, "_registered", set())
    tokens.register("hf_secret_in_an_error")
    proposals.log.warning("could not close refs/pr/1: 401 for hf_secret_in_an_error")
    assert (
        capsys.readouterr().err == "paramdelta: warning: could not close refs/pr/1: 401 for ***\n"
    )


def test_the_root_logger_is_untouched(tmp_path, capsys):
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    seen: list[logging.LogRecord] = []
    listener = logging.Handler()
    listener.emit = seen.append  # type: ignore[method-assign]
    root.addHandler(listener)
    try:
        assert main(_init(tmp_path, "one")) == 0
        cache.log.warning("for the bot's handler only")
    finally:
        root.removeHandler(listener)
    assert (root.handlers, root.level) == (handlers, level)
    assert seen == []  # an application embedding main() does not get our lines
    assert capsys.readouterr().err.endswith("paramdelta: warning: for the bot's handler only\n")


def test_off_a_terminal_the_hub_s_progress_bars_are_off(tmp_path, progress_bars_unset):
    """hf_xet's and huggingface_hub's nested bars write cursor moves into CI logs."""
    from huggingface_hub.utils import are_progress_bars_disabled

    assert not sys.stderr.isatty() and not are_progress_bars_disabled()  # pytest's capture
    assert main(_init(tmp_path, "t")) == 0
    assert are_progress_bars_disabled()
