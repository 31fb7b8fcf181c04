"""How commands print results: `--format human` (text) or `--format json` (one object)."""

from __future__ import annotations

import json
import sys
from typing import Any

from paramdelta.tokens import redact


def emit(fmt: str, data: Any, human: str) -> None:
    """Print ``data`` as JSON or ``human`` as text; either way with tokens scrubbed."""
    text = json.dumps(data, indent=2, sort_keys=False) if fmt == "json" else human
    sys.stdout.write(redact(text).rstrip("\n") + "\n")
    sys.stdout.flush()
