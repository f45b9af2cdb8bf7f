"""Reservations (holds): what an allowed action holds, until it is committed, released or expires."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Status(enum.Enum):
    HELD = "held"
    COMMITTED = "committed"
    RELEASED = "released"
    EXPIRED = "expired"


@dataclass(slots=True)
class HoldPart:
    """What one reservation holds on one budget instance."""

    budget_id: str
    instance: str
    amount: int
    entities: tuple[str, ...] = ()

    def to_row(self) -> list[Any]:
        return [self.budget_id, self.instance, self.amount, list(self.entities)]

    @classmethod
    def from_row(cls, row: list[Any]) -> HoldPart:
        return cls(row[0], row[1], row[2], tuple(row[3]))


@dataclass(slots=True)
class Reservation:
    tenant_id: str
    id: str
    status: Status
    agent: str
    action: str
    task: str | None
    amounts: dict[str, int]
    """What the authorize asked per meter (sum meters) — the default actuals of a commit."""
    parts: list[HoldPart]
    lease_expires_at_us: int
    created_at_us: int
    resolved_at_us: int | None = None
    result: dict[str, Any] | None = None
    """The first resolution's answer, returned again to a retry with the same key."""
    resolve_key: str | None = None
    was_expired: bool = False
    """Expired before it was committed late (status COMMITTED with was_expired is a late commit)."""
    is_new: bool = field(default=False, repr=False)
    is_dirty: bool = field(default=False, repr=False)

    def is_overdue(self, now_us: int) -> bool:
        return self.status is Status.HELD and self.lease_expires_at_us <= now_us
