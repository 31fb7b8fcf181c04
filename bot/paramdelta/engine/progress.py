"""The merge's progress: one bar on a terminal, a plain line now and then anywhere else.

A bar redraws itself with carriage returns and cursor moves; in a CI log or a
file those are noise (``\\r`` runs, ``ESC[A``), so when the stream is not a
terminal the merge logs ``merge: 40% (1.50 GiB of 3.75 GiB, 210.00 MiB/s)``
every PERIOD seconds instead. The bar is huggingface_hub's tqdm, so
HF_HUB_DISABLE_PROGRESS_BARS=1 turns it off like the Hub's own.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

from huggingface_hub.utils import tqdm

from paramdelta.units import human_bytes

log = logging.getLogger(__name__)
PERIOD = 30.0  # seconds between two plain progress lines


def is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class MergeProgress:
    """Bytes merged so far, shown as a bar or as periodic lines; ``update`` is thread-safe."""

    def __init__(
        self,
        total: int,
        *,
        enabled: bool,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
        period: float = PERIOD,
    ) -> None:
        stream = stream or sys.stderr
        terminal = is_terminal(stream)
        self.total, self.done = total, 0
        self._lines = enabled and not terminal
        self._clock, self._period = clock, period
        self._started = self._last = clock()
        self._lock = threading.Lock()  # tqdm's counter is not atomic, nor is ours
        self._bar = tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc="merge",
            file=stream,
            disable=not (enabled and terminal),
        )

    def update(self, nbytes: int) -> None:
        with self._lock:
            self.done += nbytes
            self._bar.update(nbytes)
            now = self._clock()
            if self._lines and now - self._last >= self._period and self.done < self.total:
                self._last = now
                log.info("merge: %s", self.line(now))

    def line(self, now: float) -> str:
        """``40% (1.50 GiB of 3.75 GiB, 210.00 MiB/s)``: never 100% before the end."""
        percent = 100 * self.done // max(self.total, 1)
        elapsed = now - self._started
        rate = f", {human_bytes(self.done / elapsed)}/s" if elapsed > 0 else ""
        return f"{percent}% ({human_bytes(self.done)} of {human_bytes(self.total)}{rate})"

    def close(self) -> None:
        self._bar.close()
