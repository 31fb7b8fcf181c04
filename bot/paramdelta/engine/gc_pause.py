"""Planning without the cyclic garbage collector, whose cost grows with the heap.

A DeepSeek-sized plan holds millions of small objects (header entries, tensor
refs, segments, units: ~95k tensors per checkpoint). Each full collection walks
all of them, and they are made fast enough to trigger many: that doubled the
planning time of such a trio. Planning makes no reference cycles worth
collecting; what it drops, reference counting frees at once.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic collection inside; the collector's earlier state after."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
