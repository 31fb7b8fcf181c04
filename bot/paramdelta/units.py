"""Sizes, durations and counts as a reader wants them: with units, never "0.0s" or "shard(s)".

Standard library only: the engine's progress lines, the commands' summaries and
the model card all say amounts the same way.
"""

from __future__ import annotations


def human_bytes(n: float) -> str:
    """``1536`` -> ``1.50 KiB`` (binary units, as the Hub and `du -h` count)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def human_seconds(seconds: float) -> str:
    """A duration as precise as it needs: ``12 ms``, ``3.4 s``, ``2 min 05 s``, ``1 h 02 min``."""
    if seconds < 0.0005:
        return "under 1 ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 59.95:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"


def plural(count: int, noun: str) -> str:
    """``1 shard``, ``2 shards``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
