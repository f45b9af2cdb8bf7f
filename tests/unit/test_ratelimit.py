"""The API's own rate limit: a token bucket per key id that refills at its rate and caps at its burst.

How: the bucket's clock is `time.monotonic`, replaced by a counter the test moves by hand.
"""

from __future__ import annotations

import pytest

from remit.api import ratelimit
from remit.api.ratelimit import RateLimited, RateLimiter


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(ratelimit.time, "monotonic", lambda: now[0])
    return now


def test_a_burst_then_the_rate(clock: list[float]) -> None:
    limiter = RateLimiter(requests_per_second=10, burst=20)
    for _ in range(20):
        limiter.take("k")
    with pytest.raises(RateLimited) as refused:
        limiter.take("k")
    assert refused.value.code == "rate_limited" and refused.value.retry_after_seconds == 1
    clock[0] += 0.5  # five tokens back
    for _ in range(5):
        limiter.take("k")
    with pytest.raises(RateLimited):
        limiter.take("k")


def test_keys_have_their_own_buckets_and_a_bucket_never_exceeds_its_burst(clock: list[float]) -> None:
    limiter = RateLimiter(requests_per_second=1, burst=2)
    limiter.take("a")
    limiter.take("a")
    limiter.take("b")  # another key is unaffected
    with pytest.raises(RateLimited):
        limiter.take("a")
    clock[0] += 3600  # an hour idle refills to the burst, not to 3,600
    limiter.take("a")
    limiter.take("a")
    with pytest.raises(RateLimited):
        limiter.take("a")


def test_check_spends_nothing_and_charge_never_refuses_or_goes_below_empty(clock: list[float]) -> None:
    limiter = RateLimiter(requests_per_second=1, burst=2)
    for _ in range(5):
        limiter.check("client 10.0.0.1")  # looking is free
    limiter.charge("client 10.0.0.1")
    limiter.charge("client 10.0.0.1")
    limiter.charge("client 10.0.0.1")  # already empty: no error, and no debt below empty
    with pytest.raises(RateLimited, match="requests/s with invalid keys; retry in 1s"):
        limiter.check("client 10.0.0.1", what="with invalid keys")
    clock[0] += 1  # one second refills one request, not one less (the third charge made no debt)
    limiter.check("client 10.0.0.1")
    limiter.take("client 10.0.0.1")
    with pytest.raises(RateLimited):
        limiter.take("client 10.0.0.1")
