"""Tokens: where they come from, and keeping them out of everything we print or publish.

Tokens come only from the environment, a token file, or huggingface_hub's
saved login; never from a command-line value (that would land in shell
history and process lists). Every token we load is registered so `redact`
can scrub it from everything the bot prints, writes or commits (errors, JSON
output, result files, step outputs, job summaries, issues, cards, lineage).
Redaction comes before any truncation (`shorten`): a token cut in two by a
length limit would no longer match, and its first part would leak.
"""

from __future__ import annotations

import os
from pathlib import Path

from paramdelta.errors import UsageError

TOKEN_ENV_VARS = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "GITHUB_TOKEN",
    "GH_TOKEN",
    # What a job with `id-token: write` holds to mint OIDC tokens (trusted publishing).
    "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
    "ACTIONS_RUNTIME_TOKEN",
)
_MIN_SECRET = 6  # shorter values would redact ordinary words
_registered: set[str] = set()


def register(secret: str | None) -> str | None:
    if secret and len(secret) >= _MIN_SECRET:
        _registered.add(secret)
    return secret


def redact(text: str) -> str:
    secrets = set(_registered)
    secrets.update(
        v for name in TOKEN_ENV_VARS if len(v := os.environ.get(name, "")) >= _MIN_SECRET
    )
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def shorten(text: str, limit: int, *, keep: str = "start") -> str:
    """``text`` redacted, then cut to ``limit`` characters (its start, or its end), marked by …."""
    text = redact(text)
    if len(text) <= limit:
        return text
    return text[: limit - 1] + "…" if keep == "start" else "…" + text[-(limit - 1) :]


def read_token_file(path: str | os.PathLike[str]) -> str:
    try:
        token = Path(path).read_text().strip()
    except OSError as e:
        raise UsageError(f"--token-file {path}: {e.strerror}") from None
    if not token:
        raise UsageError(f"--token-file {path}: file is empty")
    return register(token) or token


def github_token() -> str | None:
    """The GitHub token (GITHUB_TOKEN, else GH_TOKEN), registered; None if neither is set."""
    return register(os.environ.get("GITHUB_TOKEN") or os.environ.get("GH_TOKEN") or None)


def oidc_resource() -> str | None:
    """HF_OIDC_RESOURCE: the Hub resource a CI's OIDC id token is exchanged for, if any."""
    return os.environ.get("HF_OIDC_RESOURCE") or None


def hub_token(token_file: str | None = None) -> str | bool | None:
    """The Hub token: --token-file, else trusted publishing, else HF_TOKEN or the saved login.

    With HF_OIDC_RESOURCE (trusted publishing) the answer is True: huggingface_hub then
    fetches the token per request, exchanging the CI's OIDC id token for one that lasts an
    hour and exchanging again before it expires, so a run longer than that still commits.
    (A string handed over once would expire with its hour.) The tokens are registered for
    redaction as they are sent.
    """
    if token_file:
        return read_token_file(token_file)
    if oidc_resource():
        return True
    from huggingface_hub import get_token  # reads HF_TOKEN, then the token file

    return register(get_token())
