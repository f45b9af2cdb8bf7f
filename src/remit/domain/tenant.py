"""A tenant's configuration as the engine uses it: meters, scopes, budgets, agents."""

from __future__ import annotations

from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from remit.domain.amounts import Meter
from remit.domain.budgets import ROOT_SCOPE, Budget
from remit.domain.decisions import Priority


@dataclass(frozen=True, slots=True)
class Scope:
    path: str
    owner: str | None = None


@dataclass(frozen=True, slots=True)
class Agent:
    name: str
    scope: str
    """The scope the agent works in; its own budgets live on `<scope>/agent:<name>`."""
    priority: Priority = Priority.SCHEDULED
    owner: str | None = None

    @property
    def own_scope(self) -> str:
        return agent_scope(self.scope, self.name)


def agent_scope(parent: str, name: str) -> str:
    return f"agent:{name}" if parent == ROOT_SCOPE else f"{parent}/agent:{name}"


def ancestors(path: str) -> list[str]:
    """`a/b/c` → [`a/b/c`, `a/b`, `a`, `/`]: the scope itself up to the tenant root."""
    if path == ROOT_SCOPE:
        return [ROOT_SCOPE]
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(len(parts), 0, -1)] + [ROOT_SCOPE]


@dataclass(slots=True)
class TenantConfig:
    tenant_id: str
    timezone: ZoneInfo
    meters: dict[str, Meter]
    scopes: dict[str, Scope]
    budgets: list[Budget]
    agents: dict[str, Agent]
    version: int = 0
    _by_scope: dict[str, list[Budget]] = field(default_factory=dict, repr=False)
    _by_id: dict[str, Budget] = field(default_factory=dict, repr=False)
    _path_cache: dict[tuple[str, str], list[Budget]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for budget in self.budgets:
            self._by_scope.setdefault(budget.scope, []).append(budget)
            self._by_id[budget.id] = budget

    def budget(self, budget_id: str) -> Budget | None:
        return self._by_id.get(budget_id)

    def budgets_on_path(self, agent: Agent, action: str) -> list[Budget]:
        """Every budget from the agent's own scope up to the root that selects `action`.

        Ordered from the narrowest scope to the root. Cached: this runs for every decision.
        """
        key = (agent.name, action)
        cached = self._path_cache.get(key)
        if cached is None:
            cached = [
                budget
                for path in ancestors(agent.own_scope)
                for budget in self._by_scope.get(path, ())
                if budget.selects(action)
            ]
            if len(self._path_cache) < 100_000:
                self._path_cache[key] = cached
        return cached
