"""The fake Hub's rate limits: per-token quotas in fixed windows, as the Hub's rate-limits docs say.

Two buckets: "resolvers" (`/resolve/` URLs) and "api" (everything else). A window starts with
a key's first request in it and lasts `window` seconds; past the quota, requests get 429 until it
ends. Every answer carries `RateLimit` and `RateLimit-Policy`, as huggingface_hub's
`parse_ratelimit_headers` reads them.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from dataclasses import dataclass

from paramdelta.testing._hub_store import HubError

BUCKETS = ("api", "resolvers")


@dataclass
class _Window:
    start: float
    used: int = 0


class RateLimits:
    """Quotas per bucket (None: unlimited, no headers) and the windows of each token."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.quotas: dict[str, int | None] = dict.fromkeys(BUCKETS)
        self.window = 300.0
        self._windows: dict[tuple[str, str], _Window] = {}
        self.refused = 0  # requests answered 429

    def configure(
        self, *, api: int | None = None, resolvers: int | None = None, window: float = 300.0
    ) -> None:
        """Set the quotas (requests per window per token; None: unlimited) and start afresh."""
        with self._lock:
            self.quotas = {"api": api, "resolvers": resolvers}
            self.window = window
            self._windows.clear()
            self.refused = 0

    def clear(self) -> None:
        self.configure()

    def take(self, bucket: str, authorization: str | None) -> dict[str, str]:
        """Count one request; the headers to answer with. Raises the 429 past the quota."""
        quota = self.quotas[bucket]
        if quota is None:
            return {}
        # Keyed by a digest: the fake keeps no token in memory longer than a request.
        key = hashlib.sha256((authorization or "anonymous").encode()).hexdigest()
        now = time.monotonic()
        with self._lock:
            window = self._windows.get((key, bucket))
            if window is None or now >= window.start + self.window:
                window = self._windows[(key, bucket)] = _Window(now)
            reset = max(math.ceil(window.start + self.window - now), 1)
            allowed = window.used < quota
            window.used += allowed
            remaining = quota - window.used
            if not allowed:
                self.refused += 1
        headers = {
            "RateLimit": f'"{bucket}";r={remaining};t={reset}',
            "RateLimit-Policy": f'"fixed window";"{bucket}";q={quota};w={math.ceil(self.window)}',
        }
        if not allowed:
            message = f"you have reached your '{bucket}' rate limit. Retry after {reset} seconds"
            raise HubError(429, None, message, headers)
        return headers
