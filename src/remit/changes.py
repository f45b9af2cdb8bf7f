"""What applying a config would change: budgets, scopes, agents, meters and the tenant's settings.

Compared on the built configs (not the raw documents), so a budget written with a default id
and the same budget written with that id spelled out are one budget, and an amount written
as "50" or "50.00" is one amount.
"""

from __future__ import annotations

from typing import Any

from remit.domain.amounts import format_amount
from remit.domain.budgets import Budget
from remit.domain.tenant import TenantConfig

KINDS = ("tenant", "meter", "scope", "agent", "budget")


def describe_budget(budget: Budget) -> dict[str, Any]:
    scale = budget.meter.scale
    return {
        "scope": budget.scope,
        "meter": budget.meter.name,
        "limit": format_amount(budget.limit, scale),
        "window": budget.window_label,
        "per_action_max": None if budget.per_action_max is None else format_amount(budget.per_action_max, scale),
        "actions": budget.actions,
        "mode": budget.mode.value,
        "per": "task" if budget.is_per_task else "scope",
    }


def _described(tenant: TenantConfig) -> dict[str, dict[str, dict[str, Any]]]:
    return {
        "tenant": {"settings": {"timezone": tenant.timezone.key}},
        "meter": {name: {"kind": m.kind.value, "scale": m.scale} for name, m in tenant.meters.items()},
        "scope": {path: {"owner": s.owner} for path, s in tenant.scopes.items()},
        "agent": {
            name: {"scope": a.scope, "priority": a.priority.value, "owner": a.owner}
            for name, a in tenant.agents.items()
        },
        "budget": {b.id: describe_budget(b) for b in tenant.budgets},
    }


def diff_configs(before: TenantConfig | None, after: TenantConfig) -> list[dict[str, Any]]:
    """Every addition, change and removal, in a stable order (kind, then name)."""
    old = _described(before) if before is not None else {kind: {} for kind in KINDS}
    if before is not None and not before.version:
        old = {kind: {} for kind in KINDS}  # a tenant never configured has nothing to change
    new = _described(after)
    changes: list[dict[str, Any]] = []
    for kind in KINDS:
        for name in sorted(old[kind].keys() | new[kind].keys()):
            was, will = old[kind].get(name), new[kind].get(name)
            if was == will:
                continue
            op = "add" if was is None else "remove" if will is None else "change"
            changes.append({"op": op, "kind": kind, "name": name, "before": was, "after": will})
    return changes
