"""Budgets (envelopes) and the live counter state the engine keeps for each of them."""

from __future__ import annotations

import enum
import fnmatch
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from remit.domain.amounts import Meter
from remit.domain.windows import BoundsCache, Window, WindowKind, bucket_start, rolling_floor, rolling_used


class Mode(enum.Enum):
    ENFORCE = "enforce"
    SHADOW = "shadow"


ROOT_SCOPE = "/"


@dataclass(frozen=True, slots=True)
class Budget:
    id: str
    scope: str
    meter: Meter
    limit: int
    window: Window
    per_action_max: int | None = None
    actions: str = "*"
    mode: Mode = Mode.ENFORCE
    is_per_task: bool = False
    """One counter per task under `scope` (instance = task id) instead of one for the scope."""
    is_rolling: bool = field(init=False, repr=False, compare=False)
    """Plain attributes, not properties: read several times per decision."""
    is_total: bool = field(init=False, repr=False, compare=False)
    is_shadow: bool = field(init=False, repr=False, compare=False)
    window_label: str = field(init=False, repr=False, compare=False)
    """How the window reads in decisions: `hour`, `rolling:1h`."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "is_rolling", self.window.kind is WindowKind.ROLLING)
        object.__setattr__(self, "is_total", self.window.kind is WindowKind.TOTAL)
        object.__setattr__(self, "is_shadow", self.mode is Mode.SHADOW)
        object.__setattr__(self, "window_label", str(self.window))

    def selects(self, action: str) -> bool:
        return self.actions == "*" or fnmatch.fnmatchcase(action, self.actions)


def default_budget_id(scope: str, meter: str, window: Window, actions: str, is_per_task: bool) -> str:
    """A stable id derived from what the budget limits, so re-applying a config keeps its counters."""
    parts = [scope, meter, str(window)]
    if actions != "*":
        parts.append(actions)
    if is_per_task:
        parts.append("per-task")
    return ":".join(parts)


CounterKey = tuple[str, str]
"""(budget id, instance): instance is "" or, for per-task budgets, the task id."""


@dataclass(slots=True)
class Counter:
    """The live state of one budget instance, as locked in a batch.

    Calendar and total windows keep `used` and `overrun` for the window starting at
    `window_start`; rolling windows keep them per bucket. `held` is the sum of live holds,
    whatever window they were placed in: a hold posts into the window its commit lands in.
    """

    key: CounterKey
    window_start: int = 0
    used: int = 0
    held: int = 0
    overrun: int = 0
    buckets: dict[int, int] = field(default_factory=dict)
    overrun_buckets: dict[int, int] = field(default_factory=dict)
    counted_entities: set[str] = field(default_factory=set)
    """Distinct meters: entities known to be counted in the current window (those looked up)."""
    is_dirty: bool = False
    has_advanced: bool = False
    """The window moved on in this batch: usage counted in older windows can be forgotten."""
    bucket_floor: int = 0
    """Rolling windows: the oldest bucket start still inside the window."""
    window_end: int | None = None
    """Calendar windows: when the current window ends (None for total), set by `advance`."""

    def advance(self, budget: Budget, now_us: int, tz: ZoneInfo, cache: BoundsCache) -> None:
        """Move a calendar counter into the window containing `now_us`, dropping the old usage.

        Only ever forwards: a process whose clock is behind the window another process already
        moved to posts into that later window, instead of reopening an earlier one with its
        usage wiped (two processes around an hour boundary would each get a fresh hour).
        Rolling windows forget the buckets that have left them, so their cost stays bounded.
        """
        if budget.is_rolling:
            floor = rolling_floor(budget.window, now_us)
            if floor > self.bucket_floor:
                self.bucket_floor = floor
                for start in [start for start in self.buckets if start < floor]:
                    del self.buckets[start]
                for start in [start for start in self.overrun_buckets if start < floor]:
                    del self.overrun_buckets[start]
            return
        start, end = cache.bounds(budget.window, now_us, tz)
        if start < self.window_start:
            self.window_end = cache.bounds(budget.window, self.window_start, tz)[1]
            return
        self.window_end = end
        if start != self.window_start:
            self.window_start = start
            self.used = 0
            self.overrun = 0
            self.counted_entities = set()
            self.is_dirty = True
            self.has_advanced = True

    def used_now(self, budget: Budget, now_us: int) -> int:
        if budget.is_rolling:
            return rolling_used(budget.window, self.buckets, now_us)
        return self.used

    def overrun_now(self, budget: Budget, now_us: int) -> int:
        if budget.is_rolling:
            return rolling_used(budget.window, self.overrun_buckets, now_us)
        return self.overrun

    def posting_window(self, budget: Budget, now_us: int) -> int:
        """The window (or rolling bucket) a posting made at `now_us` belongs to."""
        if budget.is_rolling:
            return bucket_start(budget.window, now_us)
        return self.window_start

    def post(self, budget: Budget, now_us: int, used_delta: int, overrun_delta: int) -> int:
        """Add usage; returns the window it was posted to."""
        self.is_dirty = True
        if budget.is_rolling:
            start = bucket_start(budget.window, now_us)
            self.buckets[start] = self.buckets.get(start, 0) + used_delta
            if overrun_delta:
                self.overrun_buckets[start] = self.overrun_buckets.get(start, 0) + overrun_delta
            return start
        self.used += used_delta
        self.overrun += overrun_delta
        return self.window_start
