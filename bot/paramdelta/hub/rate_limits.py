"""Pacing within the Hub's rate limits: no request goes out into a spent quota.

The Hub counts each account's requests in fixed windows (5 minutes), in two
buckets: "resolvers" (`/resolve/` URLs: file downloads and ranged reads) and
"api" (everything else), and says on every answer what is left:
`RateLimit: "api";r=REMAINING;t=SECONDS_TO_RESET`. An event hook on
huggingface_hub's shared HTTP client (one Pacer per process, made with the
client factory: `paramdelta.hub.client.client_settings`) reads that from every
response; before a request to a bucket whose quota is spent it waits for the
window's reset, so huggingface_hub's own requests (listings, downloads, uploads)
pace themselves as well as the bot's. A reset further away than the bound
(PARAMDELTA_HUB_MAX_RATE_WAIT, default 900 s) fails the request instead.
Requests already in flight can still meet a 429; the retry policy waits those
out from the same headers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx2
from huggingface_hub.utils import parse_ratelimit_headers

from paramdelta.errors import HubError

log = logging.getLogger(__name__)


def bucket_of(url: httpx2.URL) -> str:
    """The quota a request counts against."""
    return "resolvers" if "/resolve/" in url.path else "api"


def rate_limited(bucket: str, wait: float) -> str:
    """The line logged while waiting (and, past the bound, the error)."""
    return f"Hub rate limit: the '{bucket}' quota is spent; the window resets in {wait:.0f} s"


@dataclass
class _Quota:
    remaining: int
    reset_at: float  # clock value


class Pacer:
    """What each bucket of each host has left, as the last answers said; thread-safe."""

    def __init__(
        self,
        max_wait: float,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_wait = max_wait
        self.sleep = sleep
        self.clock = clock
        self.waited = 0.0  # seconds spent waiting for resets, in all
        self._lock = threading.Lock()
        self._quotas: dict[tuple[str, str], _Quota] = {}

    def before(self, request: httpx2.Request) -> None:
        """Request hook: wait for the reset if the quota is spent; count the request."""
        key = (request.url.host, bucket_of(request.url))
        with self._lock:
            quota = self._quotas.get(key)
            wait = 0.0
            if quota is not None:
                wait = quota.reset_at - self.clock() if quota.remaining <= 0 else 0.0
                quota.remaining -= 1  # requests in flight count before their answers do
        if wait <= 0:
            return
        if wait > self.max_wait:
            raise HubError(
                f"{rate_limited(key[1], wait)}, more than PARAMDELTA_HUB_MAX_RATE_WAIT"
                f"={self.max_wait:.0f} s allows; try again later"
            )
        log.warning("%s: waiting", rate_limited(key[1], wait))
        self.sleep(wait + 1.0)  # the server rounds t down
        with self._lock:
            self.waited += wait + 1.0
            self._quotas.pop(key, None)  # a new window: its quota is read from the next answer

    def after(self, response: httpx2.Response) -> None:
        """Response hook: remember what the answer says is left."""
        info = parse_ratelimit_headers(response.headers)
        if info is None:
            return
        key = (response.request.url.host, info.resource_type)
        reset_at = self.clock() + info.reset_in_seconds
        with self._lock:
            known = self._quotas.get(key)
            remaining = info.remaining
            if known is not None and abs(known.reset_at - reset_at) < 2:
                # Same window: answers to requests sent earlier may arrive later.
                remaining = min(remaining, known.remaining)
            self._quotas[key] = _Quota(remaining, reset_at)
