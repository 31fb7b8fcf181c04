"""Turn a command-line checkpoint spec into a `Source`: a local directory or a Hub repo."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from paramdelta.checkpoint import LocalSource, Source
from paramdelta.errors import UsageError


def open_source(spec: str, role: str) -> Source:
    path = Path(spec).expanduser()
    if path.is_dir():
        return LocalSource(path, str(path))
    raise UsageError(f"--{role.replace('_', '-')} {spec}: not a directory")


@contextmanager
def open_sources(**specs: str) -> Iterator[dict[str, Source]]:
    sources: dict[str, Source] = {}
    try:
        for role, spec in specs.items():
            sources[role] = open_source(spec, role)
        yield sources
    finally:
        for source in sources.values():
            source.close()
