"""Rate limiting of the API itself: a token bucket per API key id, per server process.

This is the only source of `429 rate_limited`. It guards the service (a runaway agent loop, a
key-guessing client) — budgets are what bound agents' actions, and they deny with 200. The
bucket is keyed by the key id as written in the request, before the key is checked, so
invalid keys cost no store read once their bucket is empty.
"""

from __future__ import annotations

import math
import time

from remit.errors import RemitError
from remit.limits import KEY_CACHE_SIZE_MAX


class RateLimited(RemitError):
    code = "rate_limited"

    def __init__(self, message: str, retry_after_seconds: int) -> None:
        super().__init__(message, details={"retry_after_seconds": retry_after_seconds})
        self.retry_after_seconds = retry_after_seconds


class RateLimiter:
    """`requests_per_second` sustained, `burst` at once, per key id. Event-loop thread only."""

    def __init__(self, requests_per_second: float, burst: float) -> None:
        self.rate = requests_per_second
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}
        """key id → (tokens, monotonic time of that count)."""

    def take(self, key_id: str) -> None:
        now = time.monotonic()
        tokens, at = self._buckets.get(key_id, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens < 1:
            wait_seconds = max(1, math.ceil((1 - tokens) / self.rate))
            raise RateLimited(
                f"more than {self.rate:g} requests/s with this key; retry in {wait_seconds}s", wait_seconds
            )
        if len(self._buckets) >= KEY_CACHE_SIZE_MAX and key_id not in self._buckets:
            self._buckets.clear()  # bounded memory; a cleared bucket starts full, which only forgives
        self._buckets[key_id] = (tokens - 1, now)
