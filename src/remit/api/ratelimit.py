"""Rate limiting of the API itself: a token bucket per API key id, per server process.

This is the only source of `429 rate_limited`. It guards the service (a runaway agent loop, a
client sending invalid keys) — budgets are what bound agents' actions, and they deny with 200.
A key's bucket is spent only once the key has been checked: key ids are not secret (they show
in listings and the `prefix` field), so a request with a wrong secret must not use up the real
key's requests. Failed checks are counted per client address instead; once an address's bucket
is empty, its keys that are not cached get 429 without a store read (`remit.api.app`).
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
    """`requests_per_second` sustained, `burst` at once, per bucket (a key id, a client address).
    Event-loop thread only."""

    def __init__(self, requests_per_second: float, burst: float) -> None:
        self.rate = requests_per_second
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}
        """bucket → (tokens, monotonic time of that count)."""

    def take(self, bucket: str, *, what: str = "with this key") -> None:
        """Spend one request of `bucket`, or refuse with RateLimited if it has none left."""
        self.check(bucket, what=what)
        self.charge(bucket)

    def check(self, bucket: str, *, what: str = "with this key") -> None:
        """Refuse with RateLimited if `bucket` has no request left; spend nothing."""
        tokens, _ = self._refilled(bucket)
        if tokens < 1:
            wait_seconds = max(1, math.ceil((1 - tokens) / self.rate))
            raise RateLimited(f"more than {self.rate:g} requests/s {what}; retry in {wait_seconds}s", wait_seconds)

    def charge(self, bucket: str) -> None:
        """Spend one request of `bucket` if it has one (never below empty; never refuses)."""
        tokens, now = self._refilled(bucket)
        if len(self._buckets) >= KEY_CACHE_SIZE_MAX and bucket not in self._buckets:
            self._buckets.clear()  # bounded memory; a cleared bucket starts full, which only forgives
        self._buckets[bucket] = (max(0.0, tokens - 1), now)

    def _refilled(self, bucket: str) -> tuple[float, float]:
        now = time.monotonic()
        tokens, at = self._buckets.get(bucket, (self.burst, now))
        return min(self.burst, tokens + (now - at) * self.rate), now
