"""Untrusted text shown in Markdown (job summaries, issues): always as text, on one line.

Target names, repo ids, URLs and error messages come from result files (artifacts
other jobs wrote) and from upstream repos (tensor names, the Hub's messages): none
may add a link, an image, HTML, emphasis or a table cell to what the bot writes.
"""

from __future__ import annotations

import re

# What can start inline structure: escapes, code, emphasis, links and images (no `[`,
# no link), HTML and entities, strikethrough, table cells.
_SPECIAL = re.compile(r"([\\`*_\[\]<>&~|])")
SAFE_URL = re.compile(r"https?://[^\s<>()\[\]`*|\\]+")


def text(value: str | None, empty: str = "-") -> str:
    """``value`` on one line, every character Markdown would act on escaped."""
    one_line = " ".join((value or "").split())
    return _SPECIAL.sub(r"\\\1", one_line) if one_line else empty


def code(value: str | None) -> str:
    """``value`` as inline code, on one line, whatever backticks it holds."""
    one_line = " ".join((value or "").split())
    fence = "`"
    while fence in one_line:
        fence += "`"
    pad = " " if one_line.startswith("`") or one_line.endswith("`") else ""
    return f"{fence}{pad}{one_line}{pad}{fence}"


def is_safe_url(url: str | None) -> bool:
    """An http(s) URL with nothing that could end a Markdown link early."""
    return url is not None and SAFE_URL.fullmatch(url) is not None


def link(label: str, url: str | None) -> str:
    """A link when ``url`` is a plain http(s) URL; otherwise the label alone (or '-')."""
    if url is None:
        return "-"
    return f"[{text(label)}]({url})" if is_safe_url(url) else text(label)


def url(value: str | None) -> str:
    """A bare URL as GitHub links it, or escaped text when it is not a plain http(s) URL."""
    return value if value is not None and is_safe_url(value) else text(value)
