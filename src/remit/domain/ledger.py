"""Ledger entries: the append-only record every balance is derived from.

Each entry carries postings: signed changes to one budget instance's `used`, `held` and
`overrun` in one window (or rolling bucket). Counters are a cache of the sum of postings;
`rebuild_counters` recomputes them so a check can prove they agree.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class EntryKind(enum.Enum):
    HOLD = "hold"
    COMMIT = "commit"
    RELEASE = "release"
    EXPIRE = "expire"
    EXTEND = "extend"
    LATE_COMMIT = "late_commit"
    """A commit that arrived after its hold expired: counted in the current window."""
    USAGE = "usage"
    """Post-hoc usage that was never held."""
    CONFIG = "config"


@dataclass(slots=True)
class Posting:
    budget_id: str
    instance: str
    window_start: int
    used: int = 0
    held: int = 0
    overrun: int = 0
    entities: tuple[str, ...] = ()
    """Distinct meters: the entities newly counted in the window by this posting."""

    def to_row(self) -> list[Any]:
        row: list[Any] = [self.budget_id, self.instance, self.window_start, self.used, self.held, self.overrun]
        if self.entities:
            row.append(list(self.entities))
        return row

    @classmethod
    def from_row(cls, row: list[Any]) -> Posting:
        entities = tuple(row[6]) if len(row) > 6 else ()
        return cls(row[0], row[1], row[2], row[3], row[4], row[5], entities)


@dataclass(slots=True)
class LedgerEntry:
    kind: EntryKind
    tenant_id: str
    at_us: int
    reservation_id: str | None = None
    agent: str | None = None
    action: str | None = None
    postings: list[Posting] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)
    id: int | None = None


@dataclass(slots=True)
class RebuiltCounter:
    window_start: int = 0
    used: int = 0
    held: int = 0
    overrun: int = 0
    windows: dict[int, list[int]] = field(default_factory=dict)
    """window (or bucket) start → [used, overrun] posted in it."""
    entities: dict[int, set[str]] = field(default_factory=dict)


def rebuild_counters(entries: list[LedgerEntry]) -> dict[tuple[str, str], RebuiltCounter]:
    """Sum every posting per budget instance: held overall, used and overrun per window."""
    rebuilt: dict[tuple[str, str], RebuiltCounter] = {}
    for entry in entries:
        for posting in entry.postings:
            counter = rebuilt.setdefault((posting.budget_id, posting.instance), RebuiltCounter())
            counter.held += posting.held
            if posting.used or posting.overrun or posting.entities:
                sums = counter.windows.setdefault(posting.window_start, [0, 0])
                sums[0] += posting.used
                sums[1] += posting.overrun
            if posting.entities:
                counter.entities.setdefault(posting.window_start, set()).update(posting.entities)
    return rebuilt
