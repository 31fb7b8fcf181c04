"""The merge's progress: a bar on a terminal, a plain line every PERIOD seconds in a log."""

import io

from paramdelta.cli import configure_logging
from paramdelta.engine.progress import MergeProgress

GIB = 2**30


class Terminal(io.StringIO):
    def isatty(self):
        return True


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_off_a_terminal_a_line_is_logged_each_period_and_no_bar_drawn(capsys):
    configure_logging()
    log, clock = io.StringIO(), Clock()
    progress = MergeProgress(4 * GIB, enabled=True, stream=log, clock=clock, period=30)
    progress.update(GIB)  # no period has passed yet
    clock.now += 30
    progress.update(GIB // 2)
    clock.now += 10
    progress.update(GIB // 2)  # 10 s after the last line: none
    clock.now += 20
    progress.update(2 * GIB)  # done: the command's summary says so, not a "100%" line
    progress.close()
    assert capsys.readouterr().err == "merge: 37% (1.50 GiB of 4.00 GiB, 51.20 MiB/s)\n"
    assert log.getvalue() == ""


def test_on_a_terminal_one_bar_and_no_lines(capsys, progress_bars_unset):
    configure_logging()
    terminal, clock = Terminal(), Clock()
    progress = MergeProgress(4 * GIB, enabled=True, stream=terminal, clock=clock, period=30)
    clock.now += 60
    progress.update(4 * GIB)
    progress.close()
    assert "merge: 100%" in terminal.getvalue()
    assert capsys.readouterr().err == ""


def test_disabled_it_says_nothing_anywhere(capsys, progress_bars_unset):
    configure_logging()
    terminal, clock = Terminal(), Clock()
    progress = MergeProgress(GIB, enabled=False, stream=terminal, clock=clock, period=30)
    clock.now += 60
    progress.update(GIB // 2)
    progress.close()
    assert terminal.getvalue() == "" and capsys.readouterr().err == ""
