"""Budget windows: calendar windows in the tenant's time zone, rolling windows, lifetime.

Times are integer microseconds since the Unix epoch (UTC) throughout the domain.

- `minute`, `hour`: aligned to the tenant's local clock (an hour in Asia/Kolkata starts at :30 UTC).
- `day`, `week` (Monday), `month`: start at local midnight, so a DST day is 23 or 25 hours long.
- `rolling`: the last N seconds, kept as at most ROLLING_BUCKETS_MAX buckets; usage leaves the
  window a bucket at a time.
- `total`: never resets (a task's lifetime).
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from remit.limits import ROLLING_BUCKETS_MAX, ROLLING_SECONDS_MAX

US_PER_SECOND = 1_000_000
_UTC = dt.UTC
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=_UTC)


class WindowKind(enum.Enum):
    MINUTE = "minute"
    HOUR = "hour"
    DAY = "day"
    WEEK = "week"
    MONTH = "month"
    ROLLING = "rolling"
    TOTAL = "total"


@dataclass(frozen=True, slots=True)
class Window:
    kind: WindowKind
    rolling_seconds: int = 0

    @property
    def is_rolling(self) -> bool:
        return self.kind is WindowKind.ROLLING

    @property
    def bucket_seconds(self) -> int:
        """Width of one rolling bucket: 1 s up to 60 s windows, else a sixtieth of the window."""
        if self.rolling_seconds <= ROLLING_BUCKETS_MAX:
            return 1
        return self.rolling_seconds // ROLLING_BUCKETS_MAX

    @property
    def bucket_count(self) -> int:
        return self.rolling_seconds // self.bucket_seconds

    def __str__(self) -> str:
        if self.is_rolling:
            return f"rolling:{format_duration(self.rolling_seconds)}"
        return self.kind.value


_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_window(text: str) -> Window:
    """Parse `minute`…`month`, `total`, or `rolling:<N><s|m|h|d>` (e.g. `rolling:15m`)."""
    if text.startswith("rolling:"):
        match = _DURATION.match(text[len("rolling:") :])
        if match is None:
            raise ValueError(f"rolling window {text!r} must look like rolling:15m (units s, m, h, d)")
        seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        if not 1 <= seconds <= ROLLING_SECONDS_MAX:
            raise ValueError(f"rolling window {text!r} must be between 1s and {ROLLING_SECONDS_MAX // 86400}d")
        if seconds > ROLLING_BUCKETS_MAX and seconds % ROLLING_BUCKETS_MAX:
            raise ValueError(
                f"rolling window {text!r}: a window over {ROLLING_BUCKETS_MAX}s must be a whole number of minutes"
            )
        return Window(WindowKind.ROLLING, seconds)
    try:
        kind = WindowKind(text)
    except ValueError:
        raise ValueError(
            f"unknown window {text!r}: use minute, hour, day, week, month, total or rolling:<duration>"
        ) from None
    if kind is WindowKind.ROLLING:
        raise ValueError("a rolling window needs a length, e.g. rolling:1h")
    return Window(kind)


def format_duration(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def to_datetime(us: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(microseconds=us)


def to_us(moment: dt.datetime) -> int:
    delta = moment.astimezone(_UTC) - _EPOCH
    return (delta.days * 86400 + delta.seconds) * US_PER_SECOND + delta.microseconds


def _local_midnight(day: dt.date, tz: ZoneInfo) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=tz)


def _utcoffset(us: int, tz: ZoneInfo) -> dt.timedelta | None:
    return to_datetime(us).astimezone(tz).utcoffset()


def _offset_change(before_us: int, after_us: int, tz: ZoneInfo) -> int:
    """The first instant in (before_us, after_us] with after_us's UTC offset (bisection, one change)."""
    target = _utcoffset(after_us, tz)
    while after_us - before_us > 1:
        middle = (before_us + after_us) // 2
        if _utcoffset(middle, tz) == target:
            after_us = middle
        else:
            before_us = middle
    return after_us


def calendar_bounds(window: Window, now_us: int, tz: ZoneInfo) -> tuple[int, int | None]:
    """Start and end (exclusive) of the calendar window containing `now_us`; end None for total."""
    kind = window.kind
    if kind is WindowKind.TOTAL:
        return 0, None
    if kind is WindowKind.ROLLING:
        raise ValueError("rolling windows have buckets, not calendar bounds")
    local = to_datetime(now_us).astimezone(tz)
    if kind is WindowKind.MINUTE or kind is WindowKind.HOUR:
        # Aligned on the local clock at the current UTC offset, and cut at an offset change:
        # re-reading a wall-clock hour start across a half-hour shift (Australia/Lord_Howe, or
        # Pacific/Chatham's 02:45 shift) gave windows that overlapped or did not contain `now`.
        into_us = local.second * US_PER_SECOND + local.microsecond
        if kind is WindowKind.HOUR:
            into_us += local.minute * 60 * US_PER_SECOND
        start = now_us - into_us
        end = start + (60 if kind is WindowKind.MINUTE else 3600) * US_PER_SECOND
        if _utcoffset(start, tz) != local.utcoffset():
            start = _offset_change(start, now_us, tz)
        if _utcoffset(end - 1, tz) != local.utcoffset():
            end = _offset_change(now_us, end - 1, tz)
        return start, end
    today = local.date()
    if kind is WindowKind.DAY:
        first, after = today, today + dt.timedelta(days=1)
    elif kind is WindowKind.WEEK:
        first = today - dt.timedelta(days=today.weekday())
        after = first + dt.timedelta(days=7)
    else:
        first = today.replace(day=1)
        after = (first + dt.timedelta(days=32)).replace(day=1)
    return to_us(_local_midnight(first, tz)), to_us(_local_midnight(after, tz))


def bucket_start(window: Window, now_us: int) -> int:
    """Start of the rolling bucket containing `now_us`."""
    width = window.bucket_seconds * US_PER_SECOND
    return now_us - now_us % width


def rolling_floor(window: Window, now_us: int) -> int:
    """Oldest bucket start still inside the rolling window at `now_us`."""
    width = window.bucket_seconds * US_PER_SECOND
    return bucket_start(window, now_us) - (window.bucket_count - 1) * width


def rolling_used(window: Window, buckets: dict[int, int], now_us: int) -> int:
    floor = rolling_floor(window, now_us)
    return sum(amount for start, amount in buckets.items() if start >= floor)


def rolling_release_time(window: Window, buckets: dict[int, int], now_us: int, excess: int) -> int | None:
    """When at least `excess` units will have left the rolling window, or None if they never will."""
    width = window.bucket_seconds * US_PER_SECOND
    floor = rolling_floor(window, now_us)
    freed = 0
    for start in sorted(s for s in buckets if s >= floor):
        freed += buckets[start]
        if freed >= excess:
            return start + window.bucket_count * width
    return None


class BoundsCache:
    """Remembers the calendar window containing the last moment asked about, per window and zone.

    Computing local-calendar bounds costs a few microseconds of datetime work; decisions ask
    for them several times each, and almost always for the same window.
    """

    __slots__ = ("_bounds",)

    def __init__(self) -> None:
        self._bounds: dict[tuple[Window, str], tuple[int, int | None]] = {}

    def bounds(self, window: Window, now_us: int, tz: ZoneInfo) -> tuple[int, int | None]:
        key = (window, tz.key)
        hit = self._bounds.get(key)
        if hit is not None and hit[0] <= now_us and (hit[1] is None or now_us < hit[1]):
            return hit
        fresh = calendar_bounds(window, now_us, tz)
        self._bounds[key] = fresh
        return fresh
