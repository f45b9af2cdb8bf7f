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
CONTEXT_DEPTH_MAX = 32
"""Most levels of objects and lists an action context may nest (orjson writes at most 254)."""
IDEMPOTENCY_KEY_LENGTH_MAX = 200

LEASE_SECONDS_DEFAULT = 60
LEASE_SECONDS_MIN = 1
LEASE_SECONDS_MAX = 24 * 3600

BATCH_SIZE_MAX = 1024
"""Most requests decided in one store transaction."""
QUEUE_LENGTH_MAX = 100_000
"""Most requests waiting for a batch before callers are told the engine is overloaded."""
QUEUE_LENGTH_PER_TENANT_MAX = 25_000
"""Most requests of one tenant waiting in a server's queue: a flood from one tenant answers that
tenant 503 while the others still get in."""
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
LEDGER_PAGE_SIZE_DEFAULT = 100
LEDGER_FOLLOW_ENTRIES_MAX = 10_000
"""Most entries `remit ledger --all` follows through cursors in one run."""
BURN_RATE_ENTRIES_MAX = 50_000
"""Most ledger entries summed for burn rates; past it the rate is taken over the span they cover."""

KEY_CACHE_SECONDS_MAX = 5
"""How long a process trusts a key it has checked: a revocation in another process lands within this."""
KEY_CACHE_SIZE_MAX = 10_000
REQUESTS_PER_KEY_PER_SECOND_DEFAULT = 2_000
"""The API's own rate limit per key and server process (`remit serve --rate-limit`); 0 turns it off."""
REQUEST_BURST_PER_KEY_DEFAULT = 4_000
KEYS_PER_TENANT_MAX = 10_000
CONFIG_EDIT_ATTEMPTS_MAX = 5
"""A CRUD edit re-reads and retries the config this many times if other writers keep changing it."""

REQUEST_BODY_BYTES_MAX = 4 * 1024 * 1024 + 64 * 1024
"""Largest HTTP request body: a full config document plus room for its wrapping."""
EXPIRY_SWEEP_SECONDS_DEFAULT = 1
"""How often a server expires abandoned holds of tenants with no traffic."""
SHUTDOWN_GRACE_SECONDS_MAX = 10
"""How long a stopping server lets in-flight requests finish."""
REQUEST_LOG_BUFFER_LINES_MAX = 4096
"""Request-log lines held before they are written (they are also written every 50 ms)."""
WORKERS_MAX = 64
"""Most server processes `remit serve --workers` starts (each holds its own store connections)."""
RELAY_FRAME_BYTES_MAX = 1024 * 1024 * 1024
"""Largest frame between a worker process and its node's engine host (`remit.relay`): a batch
of requests or their answers, pickled. A longer length field means a broken stream."""
RELAY_FRAMES_IN_FLIGHT_MAX = 4
"""Most frames a worker has sent its engine host and not yet heard back on."""
