"""The `paramdelta` command: parse arguments, run one command, turn errors into exit codes.

Commands live in `paramdelta.commands.<name>`; this module only wires them up
and is the one place that prints an error. A `ParamDeltaError` becomes one line
on stderr and its class's exit code; anything else is a bug: exit 1, with the
traceback only when PARAMDELTA_DEBUG is set. SIGINT and SIGTERM exit 130 and
143 once what they interrupted is cleaned up.

What the bot says along the way (warnings, notes) goes through `logging`: each
module logs to ``logging.getLogger(__name__)``, and `main` gives the
"paramdelta" logger one handler, on stderr, at INFO (unless a level is set):

- a warning prints as ``paramdelta: warning: <message>`` (an error record as
  ``paramdelta: error: <message>``);
- a note (INFO) prints as the bare message;
- a record logged with ``extra={"located": True}`` prints as the bare message
  at any level: a watchlist problem, already ``file:line: warning: ...``.

Every line is redacted. The logger does not propagate, so an application that
embeds `main` keeps its own logging as it was. When stderr is not a terminal,
huggingface_hub's and hf_xet's progress bars are turned off (see
`quiet_hub_bars_off_terminal`) and the merge reports progress as plain lines.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import textwrap
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from paramdelta import PROJECT_URL, __version__
from paramdelta.errors import (
    DEBUG,
    Interrupted,
    UnexpectedError,
    as_error,
    exit_codes,
    interruption,
)
from paramdelta.tokens import redact

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("paramdelta.commands.demo", "the whole cycle offline, on a loopback fake Hub"),
    "init": ("paramdelta.commands.init", "write a watchlist and the scheduled workflow"),
    "merge": ("paramdelta.commands.merge", "merge three checkpoints: new_base + (post - base)"),
    "publish": ("paramdelta.commands.publish", "publish a merged directory to the Hub"),
    "watchlist": ("paramdelta.commands.watchlist", "check a watchlist file"),
    "plan": ("paramdelta.commands.plan", "list the watchlist targets that need a new merge"),
    "run": ("paramdelta.commands.run", "plan, then merge and publish every pending target"),
    "check": ("paramdelta.commands.check", "the pre-publish check on a checkpoint dir or Hub repo"),
    "report": ("paramdelta.commands.report", "summarise run results; open or close issues"),
}
FIRST_STEPS = """\
start here:
  paramdelta demo      see the whole cycle (plan, merge, publish) offline, in seconds
  paramdelta init BASE POST NEW_BASE --output ORG/NAME
                       write watchlist.yaml and the GitHub workflow that keeps it current
  paramdelta merge --base B --post P --new-base N --output DIR
                       one merge, from local directories or Hub repos

'paramdelta COMMAND --help' tells more about each command."""
ENVIRONMENT = """\
environment:
  HF_TOKEN             the Hub token (else the saved `hf auth login`; --token-file wins)
  HF_OIDC_RESOURCE     trusted publishing from CI, instead of a token (see the docs)
  HF_ENDPOINT          another Hub than https://huggingface.co (a mirror, a local one)
  PARAMDELTA_DEBUG=1   print the traceback of an unexpected error"""


def _epilog() -> str:
    """Where to start, the environment it reads, its exit codes and where the docs are."""
    codes = [("0", 'success, including "nothing pending"')]
    codes += [
        (str(code), meaning[0].lower() + meaning[1:]) for code, meaning in exit_codes().items()
    ]
    codes.append(("130, 143", "interrupted by SIGINT (Ctrl-C) or SIGTERM; partial output removed"))
    table = "\n".join(
        textwrap.fill(meaning, 92, initial_indent=f"  {code:<9}", subsequent_indent=" " * 11)
        for code, meaning in codes
    )
    docs = f"docs: README.md and docs/ at {PROJECT_URL}"
    return f"{FIRST_STEPS}\n\n{ENVIRONMENT}\n\nexit codes:\n{table}\n\n{docs}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="paramdelta",
        description="Transfer post-training onto a new base model (ParamΔ) and publish it.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"paramdelta {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        sub = commands.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(sub)
        sub.set_defaults(handler=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    configure_logging()
    args = build_parser().parse_args(argv)
    quiet_hub_bars_off_terminal()
    try:
        with _terminate_as_interrupt():
            return args.handler(args)
    except KeyboardInterrupt as e:
        interrupted = interruption(e)
        _print_error(str(interrupted))
        return interrupted.exit_code
    except Exception as e:
        error = as_error(e)
        if isinstance(error, UnexpectedError) and DEBUG:
            raise
        _print_error(str(error))
        return error.exit_code


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (a cancelled job, `docker stop`) unwinds like Ctrl-C: nothing half-written stays."""

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted(signum)

    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread (a caller embedding main())
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Lines(logging.Formatter):
    """One line per record, as the bot has always printed them; redacted."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        if record.levelno >= logging.WARNING and not getattr(record, "located", False):
            message = f"paramdelta: {record.levelname.lower()}: {message}"
        return redact(message)


class _Stderr(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is when a record comes (pytest swaps it per test)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr  # emit runs under the handler's lock
        super().emit(record)


_HANDLER_NAME = "paramdelta.cli"


def configure_logging() -> None:
    """The "paramdelta" logger's one stderr handler; calling it again changes nothing."""
    logger = logging.getLogger("paramdelta")
    logger.propagate = False
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    if any(h.get_name() == _HANDLER_NAME for h in logger.handlers):
        return
    handler = _Stderr()
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(_Lines())
    logger.addHandler(handler)


def quiet_hub_bars_off_terminal() -> None:
    """No huggingface_hub or hf_xet progress bars when stderr is not a terminal: in a CI log
    their nested bars are cursor-movement noise (the merge logs plain lines instead).
    HF_HUB_DISABLE_PROGRESS_BARS, when set, decides (as huggingface_hub lets it)."""
    if sys.stderr.isatty():
        return
    from huggingface_hub import constants
    from huggingface_hub.utils import disable_progress_bars

    if constants.HF_HUB_DISABLE_PROGRESS_BARS is None:
        disable_progress_bars()


def _print_error(message: str) -> None:
    one_line = " ".join(redact(message).split())
    print(f"paramdelta: error: {one_line}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
