"""Decisions: what the engine answers for every action, and why."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Outcome(enum.Enum):
    ALLOW = "allow"
    DENY = "deny"
    ESCALATE = "escalate"
    PAUSE = "pause"
    DEGRADE = "degrade"


class Priority(enum.Enum):
    INTERACTIVE = "interactive"
    SCHEDULED = "scheduled"
    BACKGROUND = "background"


class ReasonCode(enum.Enum):
    BUDGET_EXHAUSTED = "budget_exhausted"
    """The request does not fit in what is left of the window (used + held + requested > limit)."""
    EXCEEDS_LIMIT = "exceeds_limit"
    """The request is larger than the whole limit: no retry can succeed."""
    PER_ACTION_MAX_EXCEEDED = "per_action_max_exceeded"
    SHADOW_DENY = "shadow_deny"
    """A shadow budget would have denied; the action was allowed and this is recorded."""


@dataclass(slots=True)
class BudgetReport:
    """One consulted budget, as it stood when the decision was made (after the hold if allowed)."""

    budget: str
    scope: str
    meter: str
    window: str
    scale: int
    limit: int
    used: int
    held: int
    requested: int
    remaining: int
    resets_at_us: int | None
    is_shadow: bool = False


@dataclass(slots=True)
class Reason:
    code: ReasonCode
    budget: str
    message: str


@dataclass(slots=True)
class Decision:
    outcome: Outcome
    budgets: list[BudgetReport] = field(default_factory=list)
    reasons: list[Reason] = field(default_factory=list)
    reservation_id: str | None = None
    lease_expires_at_us: int | None = None
    retry_after_seconds: int | None = None

    @property
    def is_allowed(self) -> bool:
        return self.outcome is Outcome.ALLOW


def decision_to_record(decision: Decision) -> dict[str, Any]:
    """A JSON-able form of a decision in base units, stored so a retried request gets it back."""
    return {
        "outcome": decision.outcome.value,
        "reservation_id": decision.reservation_id,
        "lease_expires_at_us": decision.lease_expires_at_us,
        "retry_after_seconds": decision.retry_after_seconds,
        "budgets": [
            [
                b.budget,
                b.scope,
                b.meter,
                b.window,
                b.scale,
                b.limit,
                b.used,
                b.held,
                b.requested,
                b.remaining,
                b.resets_at_us,
                b.is_shadow,
            ]
            for b in decision.budgets
        ],
        "reasons": [[r.code.value, r.budget, r.message] for r in decision.reasons],
    }


def decision_from_record(record: dict[str, Any]) -> Decision:
    return Decision(
        outcome=Outcome(record["outcome"]),
        budgets=[BudgetReport(*row) for row in record["budgets"]],
        reasons=[Reason(ReasonCode(code), budget, message) for code, budget, message in record["reasons"]],
        reservation_id=record["reservation_id"],
        lease_expires_at_us=record["lease_expires_at_us"],
        retry_after_seconds=record["retry_after_seconds"],
    )
