"""Every bound Remit enforces, named, with its unit.

A request past one of these gets a clear error naming the limit; nothing is truncated silently.
`tests/unit/test_limits.py` checks how they relate to each other.
"""

from __future__ import annotations

# Amounts are integers in a meter's base unit (10**-scale of the meter's unit).
AMOUNT_BASE_UNITS_MAX = 10**15
"""Largest amount one request may carry on one meter, in base units."""
LIMIT_BASE_UNITS_MAX = 10**15
"""Largest budget limit, in base units; sums of these stay far inside a signed 64-bit column."""
METER_SCALE_MAX = 9
"""Most decimal places a meter may declare (USD in micro-dollars is scale 6)."""
AMOUNT_TEXT_LENGTH_MAX = 40
"""Longest decimal string accepted for an amount."""

NAME_LENGTH_MAX = 200
"""Longest action, agent, meter, task or entity name."""
SCOPE_PATH_LENGTH_MAX = 500
SCOPE_DEPTH_MAX = 16
METERS_PER_REQUEST_MAX = 32
TOUCHES_PER_REQUEST_MAX = 256
"""Most entities one request may touch, summed over its distinct meters."""
CONTEXT_BYTES_MAX = 4096
"""Largest JSON-encoded action context recorded with a hold."""
IDEMPOTENCY_KEY_LENGTH_MAX = 200

LEASE_SECONDS_DEFAULT = 60
LEASE_SECONDS_MIN = 1
LEASE_SECONDS_MAX = 24 * 3600

BATCH_SIZE_MAX = 1024
"""Most requests decided in one store transaction."""
QUEUE_LENGTH_MAX = 100_000
"""Most requests waiting for a batch before callers are told the engine is overloaded."""
EXPIRY_BATCH_SIZE_MAX = 256
"""Most abandoned holds expired in one batch (the rest wait for the next)."""
EXPIRY_ROUNDS_MAX = 10_000
"""Most expiry batches one `remit expire` runs (2.56 million holds)."""

ROLLING_BUCKETS_MAX = 60
"""A rolling window is kept as at most this many buckets."""
ROLLING_SECONDS_MAX = 366 * 24 * 3600

BUDGETS_PER_TENANT_MAX = 10_000
SCOPES_PER_TENANT_MAX = 10_000
AGENTS_PER_TENANT_MAX = 100_000
CONFIG_BYTES_MAX = 4 * 1024 * 1024

LEDGER_PAGE_SIZE_MAX = 1000
