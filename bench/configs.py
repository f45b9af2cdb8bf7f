"""The tenant config bench/http.py and bench/batch.py decide against."""

from __future__ import annotations

from typing import Any


def hot_tenant_config(agents: int) -> dict[str, Any]:
    """One hot tenant budget, one hot scope budget shared by every agent and a budget per agent
    (`agent-0` …), with limits large enough that nothing is denied."""
    return {
        "tenant": {"timezone": "UTC", "budgets": [{"meter": "usd", "limit": "1000000000", "window": "month"}]},
        "meters": {"usd": {"kind": "sum", "scale": 2}},
        "scopes": {"fleet": {"budgets": [{"meter": "usd", "limit": "100000000", "window": "day"}]}},
        "agents": {
            f"agent-{i}": {"scope": "fleet", "budgets": [{"meter": "usd", "limit": "1000000", "window": "day"}]}
            for i in range(agents)
        },
    }
