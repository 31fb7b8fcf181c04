"""Scripted failures for the loopback fakes: match a request, answer it wrongly, used up.

Both fake servers (the Hub and GitHub) consult a `Faults` before their normal
handling; each fault serves the next ``times`` matching requests and is gone.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass
class Fault:
    server: str | None
    method: str | None
    path: re.Pattern[str] | None
    status: int | None  # None: only the delay, then the normal answer
    times: int
    headers: dict[str, str]
    body: Any  # the fake decides how to send it (bytes as they are, JSON encoded, ...)
    drop: bool  # close the connection without an answer
    delay: float

    def matches(self, server: str, method: str, path: str) -> bool:
        return (
            self.server in (None, server)
            and self.method in (None, method)
            and (self.path is None or self.path.search(path) is not None)
        )


class Faults:
    """The faults not used up yet (thread-safe)."""

    def __init__(self, servers: tuple[str, ...] = ()) -> None:
        self._servers = servers  # the names `server=` may take, if the fake has several
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def add(
        self,
        *,
        method: str | None = None,
        path: str | None = None,
        server: str | None = None,
        status: int | None = 503,
        times: int = 1,
        headers: Mapping[str, str] | None = None,
        body: Any = None,
        drop: bool = False,
        delay: float = 0.0,
    ) -> None:
        """Fail the next `times` matching requests (`path`: a regex searched in the path).

        `None` matches anything; `drop` closes the connection without an answer;
        `status=None` only adds the delay.
        """
        if server is not None and server not in self._servers:
            raise ValueError(f"server must be one of {self._servers} or None, not {server!r}")
        if times < 1:
            raise ValueError("times must be at least 1")
        fault = Fault(
            server,
            method.upper() if method else None,
            re.compile(path) if path is not None else None,
            status,
            times,
            dict(headers or {}),
            body,
            drop,
            delay,
        )
        with self._lock:
            self._faults.append(fault)

    def clear(self) -> None:
        """Forget every fault not used up yet."""
        with self._lock:
            self._faults.clear()

    def take(self, server: str, method: str, path: str) -> Fault | None:
        """The first fault matching this request, counted as used once."""
        with self._lock:
            for fault in self._faults:
                if fault.matches(server, method, path):
                    fault.times -= 1
                    if fault.times == 0:
                        self._faults.remove(fault)
                    return fault
        return None
