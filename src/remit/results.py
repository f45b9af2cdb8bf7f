"""What the engine answers for commits, releases, extensions and post-hoc usage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from remit.domain.decisions import BudgetReport


@dataclass(slots=True)
class CommitResult:
    reservation_id: str
    status: str
    committed: dict[str, int]
    released: dict[str, int]
    overrun: dict[str, int]
    is_late: bool = False
    """The hold had expired; the usage was counted in the current window as late usage."""

    def to_record(self) -> dict[str, Any]:
        return {
            "kind": "commit",
            "committed": self.committed,
            "released": self.released,
            "overrun": self.overrun,
            "is_late": self.is_late,
        }

    @classmethod
    def from_record(cls, reservation_id: str, record: dict[str, Any]) -> CommitResult:
        return cls(
            reservation_id, "committed", record["committed"], record["released"], record["overrun"], record["is_late"]
        )


@dataclass(slots=True)
class ReleaseResult:
    reservation_id: str
    status: str
    released: dict[str, int]

    def to_record(self) -> dict[str, Any]:
        return {"kind": "release", "released": self.released}


@dataclass(slots=True)
class ExtendResult:
    reservation_id: str
    status: str
    lease_expires_at_us: int


@dataclass(slots=True)
class UsageResult:
    """Post-hoc usage: counted on every selected budget; `overrun` is what went past a limit."""

    budgets: list[BudgetReport]
    overrun: dict[str, int]
    entry_kind: str = "usage"


@dataclass(slots=True)
class CheckReport:
    """Ledger against counters: `mismatches` is empty when every counter equals its rebuild."""

    tenant_id: str
    entries: int
    counters: int
    mismatches: list[str] = field(default_factory=list)

    @property
    def is_consistent(self) -> bool:
        return not self.mismatches
