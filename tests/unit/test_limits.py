"""The named limits in remit.limits fit together: no bound makes another unreachable or unsafe.

How: each relation a reader relies on is asserted directly on the constants: batches fit in
the queue, expiry batches in a batch, the default lease between its bounds, one amount within
one limit, and sums of thousands of maximal limits inside a signed 64-bit database column.
A scan of the module also checks every public name is an int, so none is missing a value.
"""

from __future__ import annotations

from remit import limits
from remit.limits import (
    AMOUNT_BASE_UNITS_MAX,
    AMOUNT_TEXT_LENGTH_MAX,
    BATCH_SIZE_MAX,
    CONTEXT_BYTES_MAX,
    EXPIRY_BATCH_SIZE_MAX,
    LEASE_SECONDS_DEFAULT,
    LEASE_SECONDS_MAX,
    LEASE_SECONDS_MIN,
    LIMIT_BASE_UNITS_MAX,
    METER_SCALE_MAX,
    METERS_PER_REQUEST_MAX,
    NAME_LENGTH_MAX,
    QUEUE_LENGTH_MAX,
    RELAY_FRAME_BYTES_MAX,
    RELAY_FRAMES_IN_FLIGHT_MAX,
    ROLLING_BUCKETS_MAX,
    ROLLING_SECONDS_MAX,
    SCOPE_DEPTH_MAX,
    SCOPE_PATH_LENGTH_MAX,
    TOUCHES_PER_REQUEST_MAX,
)

INT64_MAX = 2**63 - 1


def test_every_limit_is_a_positive_int() -> None:
    names = [name for name in vars(limits) if name.isupper()]
    assert len(names) >= 20
    for name in names:
        value = getattr(limits, name)
        assert isinstance(value, int) and not isinstance(value, bool), name
        assert value > 0, name
        assert name.endswith(("_MAX", "_MIN", "_DEFAULT")), f"{name}: a limit's name says which bound it is"


def test_batches_fit_in_the_queue() -> None:
    assert 1 <= EXPIRY_BATCH_SIZE_MAX <= BATCH_SIZE_MAX <= QUEUE_LENGTH_MAX


def test_lease_bounds() -> None:
    assert 1 <= LEASE_SECONDS_MIN <= LEASE_SECONDS_DEFAULT <= LEASE_SECONDS_MAX


def test_one_amount_fits_in_one_limit() -> None:
    assert AMOUNT_BASE_UNITS_MAX <= LIMIT_BASE_UNITS_MAX


def test_sums_fit_a_signed_64_bit_column() -> None:
    # A counter's used + held + overrun, or a window's sum over a batch of commits each at the
    # maximum, must never overflow a BIGINT.
    assert LIMIT_BASE_UNITS_MAX * 3000 < INT64_MAX
    assert AMOUNT_BASE_UNITS_MAX * BATCH_SIZE_MAX * 3 < INT64_MAX
    assert (LIMIT_BASE_UNITS_MAX + AMOUNT_BASE_UNITS_MAX * BATCH_SIZE_MAX) * 2 < INT64_MAX


def test_the_largest_amount_can_be_written_as_text() -> None:
    # The largest amount at the largest scale ("1000000.000000000") must fit the text bound.
    digits = len(str(AMOUNT_BASE_UNITS_MAX)) + 1  # plus the decimal point
    assert digits <= AMOUNT_TEXT_LENGTH_MAX
    assert len(str(AMOUNT_BASE_UNITS_MAX)) > METER_SCALE_MAX


def test_rolling_windows() -> None:
    # Windows over ROLLING_BUCKETS_MAX seconds use whole-second buckets of a sixtieth each.
    assert ROLLING_BUCKETS_MAX == 60
    # The longest window is itself a valid window: whole minutes, so whole-second buckets.
    assert ROLLING_SECONDS_MAX % 60 == 0
    assert ROLLING_SECONDS_MAX // ROLLING_BUCKETS_MAX >= 1


def test_scope_paths() -> None:
    # The deepest path of the longest names must be refused by the path bound, not slip past it.
    assert SCOPE_DEPTH_MAX * 2 <= SCOPE_PATH_LENGTH_MAX
    assert NAME_LENGTH_MAX <= SCOPE_PATH_LENGTH_MAX


def test_service_limits() -> None:
    # A full config document fits in a request body; the default page is a valid page.
    assert limits.CONFIG_BYTES_MAX < limits.REQUEST_BODY_BYTES_MAX
    assert 1 <= limits.LEDGER_PAGE_SIZE_DEFAULT <= limits.LEDGER_PAGE_SIZE_MAX
    # A revoked key stops working within seconds, not minutes.
    assert 1 <= limits.KEY_CACHE_SECONDS_MAX <= 60
    assert limits.LEDGER_PAGE_SIZE_MAX <= limits.BURN_RATE_ENTRIES_MAX
    # One tenant fills at most a share of the queue, and that share holds a full batch.
    assert BATCH_SIZE_MAX <= limits.QUEUE_LENGTH_PER_TENANT_MAX < QUEUE_LENGTH_MAX


def test_a_relay_frame_holds_a_whole_batch_of_the_largest_requests() -> None:
    # A worker sends at most one batch of validated requests per frame (remit.relay); each is
    # bounded by its context, its touched entities and its meters (names up to 4 UTF-8 bytes a
    # character). The length goes in 4 bytes.
    name_bytes_max = NAME_LENGTH_MAX * 4
    request_bytes_max = (
        CONTEXT_BYTES_MAX + TOUCHES_PER_REQUEST_MAX * name_bytes_max + METERS_PER_REQUEST_MAX * (name_bytes_max + 32)
    )
    assert BATCH_SIZE_MAX * request_bytes_max * 2 <= RELAY_FRAME_BYTES_MAX < 2**32
    assert RELAY_FRAMES_IN_FLIGHT_MAX >= 2, "one frame in flight leaves the host idle while the worker answers"
