"""Budget windows tile time in the tenant's time zone, and rolling windows forget old usage.

How: `calendar_bounds` is called on hand-picked instants whose answer is known (DST days in
America/New_York, a half-hour zone, month and year ends, a leap day) and the bounds are
compared exactly, in microseconds. A hypothesis property then checks, for random instants in
zones with whole-hour, half-hour and 45-minute offsets and DST shifts, that every window
contains its instant and that consecutive windows meet with no gap and no overlap. Rolling
windows are driven through their bucket functions with a hand-built bucket map.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from remit.domain.windows import (
    US_PER_SECOND,
    BoundsCache,
    Window,
    WindowKind,
    bucket_start,
    calendar_bounds,
    parse_window,
    rolling_floor,
    rolling_release_time,
    rolling_used,
    to_datetime,
    to_us,
)
from remit.limits import ROLLING_BUCKETS_MAX

UTC = dt.UTC
NEW_YORK = ZoneInfo("America/New_York")
KOLKATA = ZoneInfo("Asia/Kolkata")
HOUR_US = 3600 * US_PER_SECOND
DAY_US = 24 * HOUR_US


def local(tz: ZoneInfo, *parts: int) -> int:
    """The instant at the wall-clock time `parts` (year, month, day[, hour, minute, second]) in `tz`."""
    year, month, day, hour, minute, second = (*parts, 0, 0, 0)[:6]
    return to_us(dt.datetime(year, month, day, hour, minute, second, tzinfo=tz))


def utc(*parts: int) -> int:
    return local(ZoneInfo("UTC"), *parts)


def bounds(window: str, now_us: int, tz: ZoneInfo) -> tuple[int, int | None]:
    return calendar_bounds(parse_window(window), now_us, tz)


# -- minute and hour ----------------------------------------------------------------------------


def test_minute_window_starts_on_the_local_minute() -> None:
    now = utc(2026, 3, 4, 10, 17, 42) + 123
    assert bounds("minute", now, NEW_YORK) == (utc(2026, 3, 4, 10, 17), utc(2026, 3, 4, 10, 18))


def test_hour_window_in_a_half_hour_zone_starts_at_half_past_utc() -> None:
    # 10:17 UTC is 15:47 in Kolkata (+05:30): the local hour 15:00-16:00 is 09:30-10:30 UTC.
    now = utc(2026, 3, 4, 10, 17, 42)
    assert bounds("hour", now, KOLKATA) == (utc(2026, 3, 4, 9, 30), utc(2026, 3, 4, 10, 30))
    # The same instant in UTC and New York (whole-hour offset) starts at :00 UTC.
    assert bounds("hour", now, ZoneInfo("UTC")) == (utc(2026, 3, 4, 10), utc(2026, 3, 4, 11))
    assert bounds("hour", now, NEW_YORK) == (utc(2026, 3, 4, 10), utc(2026, 3, 4, 11))


def test_minute_window_in_a_half_hour_zone_is_still_a_minute() -> None:
    now = utc(2026, 3, 4, 10, 17, 42)
    assert bounds("minute", now, KOLKATA) == (utc(2026, 3, 4, 10, 17), utc(2026, 3, 4, 10, 18))


def test_window_starts_exactly_at_its_start_instant() -> None:
    start = utc(2026, 3, 4, 9, 30)
    assert bounds("hour", start, KOLKATA)[0] == start
    assert bounds("hour", start - 1, KOLKATA) == (utc(2026, 3, 4, 8, 30), start)


def test_repeated_fall_back_hour_is_its_own_window() -> None:
    # 2026-11-01: New York goes from 01:59:59 EDT back to 01:00 EST at 06:00 UTC.
    first = bounds("hour", utc(2026, 11, 1, 5, 30), NEW_YORK)
    second = bounds("hour", utc(2026, 11, 1, 6, 30), NEW_YORK)
    assert first == (utc(2026, 11, 1, 5), utc(2026, 11, 1, 6))
    assert second == (utc(2026, 11, 1, 6), utc(2026, 11, 1, 7))


def test_hour_window_is_cut_at_a_half_hour_dst_shift() -> None:
    # 2026-04-05 02:00 Lord Howe daylight time (+11) becomes 01:30 standard time (+10:30),
    # at 15:00 UTC on the 4th. The hour containing 15:10 UTC must contain it and must not
    # overlap the hour before.
    tz = ZoneInfo("Australia/Lord_Howe")
    before = bounds("hour", utc(2026, 4, 4, 14, 50), tz)
    after = bounds("hour", utc(2026, 4, 4, 15, 10), tz)
    assert before == (utc(2026, 4, 4, 14), utc(2026, 4, 4, 15))
    assert after == (utc(2026, 4, 4, 15), utc(2026, 4, 4, 15, 30))


def test_hour_window_contains_now_across_chatham_quarter_hour_shift() -> None:
    # Chatham (+13:45 → +12:45 at 03:45 local) shifts at 14:00 UTC; the local hour starts at :15 UTC.
    tz = ZoneInfo("Pacific/Chatham")
    now = utc(2026, 4, 4, 14, 5)
    start, end = bounds("hour", now, tz)
    assert end is not None
    assert start <= now < end
    assert start == utc(2026, 4, 4, 14)


# -- day, week, month, total --------------------------------------------------------------------


def test_day_window_starts_at_local_midnight() -> None:
    # 2026-01-15 03:00 UTC is still the 14th in New York (EST, -05:00).
    start, end = bounds("day", utc(2026, 1, 15, 3), NEW_YORK)
    assert start == utc(2026, 1, 14, 5)
    assert end == utc(2026, 1, 15, 5)


def test_spring_forward_day_is_23_hours() -> None:
    # 2026-03-08: New York skips 02:00-03:00.
    start, end = bounds("day", local(NEW_YORK, 2026, 3, 8, 12), NEW_YORK)
    assert end is not None
    assert start == local(NEW_YORK, 2026, 3, 8)
    assert end - start == 23 * HOUR_US


def test_fall_back_day_is_25_hours() -> None:
    # 2026-11-01: New York repeats 01:00-02:00.
    start, end = bounds("day", local(NEW_YORK, 2026, 11, 1, 12), NEW_YORK)
    assert end is not None
    assert start == local(NEW_YORK, 2026, 11, 1)
    assert end - start == 25 * HOUR_US


def test_ordinary_day_is_24_hours() -> None:
    start, end = bounds("day", local(NEW_YORK, 2026, 6, 1, 12), NEW_YORK)
    assert end is not None
    assert end - start == DAY_US


def test_week_starts_monday_local_midnight() -> None:
    # 2026-03-05 is a Thursday; its week runs Monday 2 March to Monday 9 March (spanning DST).
    start, end = bounds("week", local(NEW_YORK, 2026, 3, 5, 18), NEW_YORK)
    assert start == local(NEW_YORK, 2026, 3, 2)
    assert end == local(NEW_YORK, 2026, 3, 9)
    assert to_datetime(start).astimezone(NEW_YORK).weekday() == 0
    assert end - start == 7 * DAY_US - HOUR_US  # the spring-forward hour is missing


def test_week_boundary_sunday_night_and_monday_morning() -> None:
    sunday = bounds("week", local(NEW_YORK, 2026, 1, 11, 23, 59, 59), NEW_YORK)
    monday = bounds("week", local(NEW_YORK, 2026, 1, 12, 0, 0, 0), NEW_YORK)
    assert sunday == (local(NEW_YORK, 2026, 1, 5), local(NEW_YORK, 2026, 1, 12))
    assert monday == (local(NEW_YORK, 2026, 1, 12), local(NEW_YORK, 2026, 1, 19))


@pytest.mark.parametrize(
    ("moment", "first", "after"),
    [
        ((2026, 1, 31, 23, 59), (2026, 1, 1), (2026, 2, 1)),
        ((2026, 2, 1, 0, 0), (2026, 2, 1), (2026, 3, 1)),
        ((2028, 2, 29, 12, 0), (2028, 2, 1), (2028, 3, 1)),
        ((2026, 12, 31, 23, 59), (2026, 12, 1), (2027, 1, 1)),
    ],
    ids=["jan-31", "feb-1", "leap-feb-29", "december"],
)
def test_month_window_ends(moment: tuple[int, ...], first: tuple[int, ...], after: tuple[int, ...]) -> None:
    assert bounds("month", local(NEW_YORK, *moment), NEW_YORK) == (local(NEW_YORK, *first), local(NEW_YORK, *after))


def test_leap_february_is_29_days() -> None:
    start, end = bounds("month", local(KOLKATA, 2028, 2, 10), KOLKATA)
    assert end is not None
    assert end - start == 29 * DAY_US


def test_total_window_never_resets() -> None:
    for now in (0, utc(2026, 1, 1), utc(2099, 12, 31, 23, 59)):
        assert bounds("total", now, NEW_YORK) == (0, None)


def test_rolling_window_has_no_calendar_bounds() -> None:
    with pytest.raises(ValueError, match="rolling"):
        bounds("rolling:15m", utc(2026, 1, 1), NEW_YORK)


def test_bounds_cache_follows_the_clock() -> None:
    cache = BoundsCache()
    window = parse_window("day")
    first = cache.bounds(window, local(NEW_YORK, 2026, 3, 7, 12), NEW_YORK)
    assert cache.bounds(window, local(NEW_YORK, 2026, 3, 7, 23), NEW_YORK) == first
    # Moving into the next day must not serve the cached window.
    assert cache.bounds(window, local(NEW_YORK, 2026, 3, 8, 1), NEW_YORK) == (
        local(NEW_YORK, 2026, 3, 8),
        local(NEW_YORK, 2026, 3, 9),
    )
    # Another zone is another window, even with the same instant.
    now = local(NEW_YORK, 2026, 3, 8, 1)
    assert cache.bounds(window, now, KOLKATA) == calendar_bounds(window, now, KOLKATA)
    # A moment before the cached window is computed afresh too.
    assert cache.bounds(window, local(NEW_YORK, 2026, 3, 7, 12), NEW_YORK) == first


# -- tiling property ----------------------------------------------------------------------------

ZONES = [
    "UTC",
    "America/New_York",
    "Asia/Kolkata",
    "Europe/London",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "America/Santiago",
    "Asia/Kathmandu",
]
CALENDAR = ["minute", "hour", "day", "week", "month"]


@settings(max_examples=400, deadline=None)
@given(
    now_us=st.integers(min_value=utc(1975, 1, 1), max_value=utc(2090, 1, 1)),
    zone=st.sampled_from(ZONES),
    window=st.sampled_from(CALENDAR),
)
def test_calendar_windows_tile_time(now_us: int, zone: str, window: str) -> None:
    tz = ZoneInfo(zone)
    start, end = bounds(window, now_us, tz)
    assert end is not None
    assert start <= now_us < end
    # The next window begins where this one ends, and the previous one ended where this begins.
    assert bounds(window, end, tz)[0] == end
    assert bounds(window, start - 1, tz)[1] == start


@settings(max_examples=200, deadline=None)
@given(
    day=st.dates(min_value=dt.date(2000, 1, 1), max_value=dt.date(2080, 12, 31)),
    zone=st.sampled_from(ZONES),
)
def test_transition_instants_tile(day: dt.date, zone: str) -> None:
    # Random instants rarely hit a DST change; sweep the local day's hour boundaries directly.
    tz = ZoneInfo(zone)
    now = to_us(dt.datetime(day.year, day.month, day.day, tzinfo=tz))
    for _ in range(25):
        start, end = bounds("hour", now, tz)
        assert end is not None
        assert start <= now < end
        assert end - start <= HOUR_US
        assert bounds("hour", end, tz)[0] == end
        now = end


# -- rolling windows ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds", "bucket_seconds", "bucket_count"),
    [
        ("rolling:30s", 30, 1, 30),
        ("rolling:60s", 60, 1, 60),
        ("rolling:1m", 60, 1, 60),
        ("rolling:2m", 120, 2, 60),
        ("rolling:15m", 900, 15, 60),
        ("rolling:1h", 3600, 60, 60),
        ("rolling:1d", 86400, 1440, 60),
    ],
)
def test_rolling_bucket_sizes(text: str, seconds: int, bucket_seconds: int, bucket_count: int) -> None:
    window = parse_window(text)
    assert window.kind is WindowKind.ROLLING
    assert window.rolling_seconds == seconds
    assert window.bucket_seconds == bucket_seconds
    assert window.bucket_count == bucket_count
    assert window.bucket_count <= ROLLING_BUCKETS_MAX
    assert window.bucket_seconds * window.bucket_count == seconds


def test_rolling_window_round_trips_as_text() -> None:
    for text in ("rolling:30s", "rolling:15m", "rolling:1h", "rolling:2d", "hour", "total"):
        assert str(parse_window(text)) == text


def test_rolling_used_drops_usage_after_the_window_passes() -> None:
    window = parse_window("rolling:1h")  # 60 buckets of 60 s
    t0 = utc(2026, 1, 1, 12)
    buckets: dict[int, int] = {}
    for offset_s, amount in ((0, 5), (600, 7), (1800, 11)):
        start = bucket_start(window, t0 + offset_s * US_PER_SECOND)
        buckets[start] = buckets.get(start, 0) + amount
    assert rolling_used(window, buckets, t0 + 1800 * US_PER_SECOND) == 23
    # Just before an hour after the first usage, it still counts; an hour after, it is gone.
    assert rolling_used(window, buckets, t0 + 3599 * US_PER_SECOND) == 23
    assert rolling_used(window, buckets, t0 + 3600 * US_PER_SECOND) == 18
    assert rolling_used(window, buckets, t0 + 4200 * US_PER_SECOND) == 11
    assert rolling_used(window, buckets, t0 + 5400 * US_PER_SECOND) == 0


def test_rolling_floor_keeps_exactly_bucket_count_buckets() -> None:
    window = parse_window("rolling:15m")
    now = utc(2026, 1, 1, 12, 7, 31)
    width = window.bucket_seconds * US_PER_SECOND
    floor = rolling_floor(window, now)
    assert floor % width == 0
    assert (bucket_start(window, now) - floor) // width == window.bucket_count - 1


def test_rolling_release_time() -> None:
    window = parse_window("rolling:1m")  # 60 buckets of 1 s
    t0 = utc(2026, 1, 1, 12)
    buckets = {t0: 3, t0 + 10 * US_PER_SECOND: 4, t0 + 20 * US_PER_SECOND: 5}
    now = t0 + 30 * US_PER_SECOND
    # 3 units leave when the first bucket does, 60 s after it opened.
    assert rolling_release_time(window, buckets, now, 3) == t0 + 60 * US_PER_SECOND
    assert rolling_release_time(window, buckets, now, 4) == t0 + 70 * US_PER_SECOND
    assert rolling_release_time(window, buckets, now, 12) == t0 + 80 * US_PER_SECOND
    # More than is in the window will never leave it.
    assert rolling_release_time(window, buckets, now, 13) is None
    # Buckets already out of the window free nothing.
    assert rolling_release_time(window, buckets, t0 + 65 * US_PER_SECOND, 5) == t0 + 80 * US_PER_SECOND


# -- parsing ------------------------------------------------------------------------------------


def test_parse_calendar_windows() -> None:
    for kind in WindowKind:
        if kind is not WindowKind.ROLLING:
            assert parse_window(kind.value) == Window(kind)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("hourly", "unknown window"),
        ("", "unknown window"),
        ("Hour", "unknown window"),
        ("rolling", "needs a length"),
        ("rolling:", "must look like"),
        ("rolling:15", "must look like"),
        ("rolling:15x", "must look like"),
        ("rolling:-5m", "must look like"),
        ("rolling:1.5h", "must look like"),
        ("rolling:0s", "between"),
        ("rolling:367d", "between"),
        ("rolling:61s", "whole number of minutes"),
        ("rolling:90s", "whole number of minutes"),
    ],
)
def test_parse_window_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_window(text)


def test_rolling_over_a_minute_in_whole_minutes_is_accepted() -> None:
    assert parse_window("rolling:120s").rolling_seconds == 120
    assert parse_window("rolling:366d").rolling_seconds == 366 * 86400
