"""The demo: a small simulated fleet of agents against examples/remit.yaml on a fresh SQLite file.

Renewal bots apply CRM discounts and send emails, a support helper calls an LLM per task; they
run in threads, so their requests share batches. The tally says, per budget, how many actions
it allowed, how many it denied, and what is left.
"""

from __future__ import annotations

import random
import threading
from collections import Counter as Tally
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from remit.config import load_file
from remit.domain.amounts import format_amount
from remit.domain.decisions import Decision, ReasonCode
from remit.engine import ActionInput, Engine
from remit.results import CheckReport

DEMO_TENANT = "demo"


@dataclass(slots=True)
class DemoTally:
    allowed: Tally[str] = field(default_factory=Tally)
    denied: Tally[str] = field(default_factory=Tally)
    shadow_denied: Tally[str] = field(default_factory=Tally)
    decisions: Tally[str] = field(default_factory=Tally)
    sample_denials: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, agent: str, decision: Decision) -> None:
        with self.lock:
            self.decisions[decision.outcome.value] += 1
            deciding = {reason.budget for reason in decision.reasons if reason.code is not ReasonCode.SHADOW_DENY}
            for reason in decision.reasons:
                if reason.code is ReasonCode.SHADOW_DENY:
                    self.shadow_denied[reason.budget] += 1
            for report in decision.budgets:
                if decision.is_allowed:
                    self.allowed[report.budget] += 1
                elif report.budget in deciding:
                    self.denied[report.budget] += 1
            if not decision.is_allowed and len(self.sample_denials) < 4:
                retry = decision.retry_after_seconds
                when = f"retry after {retry}s" if retry is not None else "no retry can succeed"
                self.sample_denials.append(f"{agent}: {decision.reasons[0].message} — {when}")


def _renewal_bot(engine: Engine, agent: str, tally: DemoTally, rng: random.Random, actions: int) -> None:
    for _ in range(actions):
        account = f"acct:{rng.randint(1, 40)}"
        if rng.random() < 0.7:
            request = ActionInput(
                agent=agent,
                action="crm.discount.apply",
                amounts={"usd": f"{rng.randint(20, 160)}.{rng.randint(0, 99):02d}"},
                touches={"accounts": [account]},
            )
        else:
            request = ActionInput(
                agent=agent, action="email.send", amounts={"sends": "1"}, touches={"accounts": [account]}
            )
        decision = engine.authorize(DEMO_TENANT, request)
        tally.record(agent, decision)
        if decision.reservation_id is None:
            continue
        if rng.random() < 0.1:  # the action failed: give the hold back
            engine.release(DEMO_TENANT, decision.reservation_id)
        else:
            engine.commit(DEMO_TENANT, decision.reservation_id)


def _support_helper(engine: Engine, agent: str, tally: DemoTally, rng: random.Random, actions: int) -> None:
    for step in range(actions):
        task = f"ticket-{step // 8}"
        estimate = rng.randint(5_000, 40_000)
        request = ActionInput(
            agent=agent,
            action="llm.chat",
            task=task,
            priority="interactive",
            amounts={"tokens": str(estimate), "usd": f"{estimate // 1000}.00"},
        )
        decision = engine.authorize(DEMO_TENANT, request)
        tally.record(agent, decision)
        if decision.reservation_id is not None:
            actual = rng.randint(estimate // 2, estimate)
            engine.commit(DEMO_TENANT, decision.reservation_id, {"tokens": str(actual), "usd": f"{actual // 1000}.00"})


def run_demo(engine: Engine, config_path: Path, *, seed: int = 7, actions_per_agent: int = 60) -> DemoTally:
    """Apply the config and run the fleet; returns the tally."""
    engine.create_tenant(DEMO_TENANT, timezone="America/New_York")
    engine.apply_config(DEMO_TENANT, load_file(config_path), source=str(config_path))
    tally = DemoTally()
    fleet: list[tuple[Callable[..., None], str]] = [
        (_renewal_bot, "bot-7"),
        (_renewal_bot, "bot-8"),
        (_renewal_bot, "bot-8"),
        (_support_helper, "helper-1"),
    ]
    threads = [
        threading.Thread(target=work, args=(engine, agent, tally, random.Random(seed + index), actions_per_agent))
        for index, (work, agent) in enumerate(fleet)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return tally


def budget_rows(engine: Engine, tally: DemoTally) -> list[dict[str, Any]]:
    """One row per budget: limit, used, held, left (in the meter's unit), allowed, denied.

    Per-task budgets show usage summed over their tasks; shadow budgets show how often they
    would have denied (marked *), since they never do.
    """
    tenant = engine.tenant_config(DEMO_TENANT)
    with engine.store.transaction() as tx:
        counters = tx.all_counters(DEMO_TENANT)
    rows = []
    now_us = engine.clock()
    for budget in tenant.budgets:
        scale = budget.meter.scale
        used = held = 0
        for (budget_id, _), counter in counters.items():
            if budget_id == budget.id:
                used += counter.used_now(budget, now_us)
                held += counter.held
        envelope = f"{budget.meter.name}/{budget.window}"
        if budget.actions != "*":
            envelope += f" {budget.actions}"
        if budget.is_per_task:
            envelope += " per task"
        if budget.is_shadow:
            envelope += " (shadow)"
        rows.append(
            {
                "scope": budget.scope,
                "envelope": envelope,
                "limit": format_amount(budget.limit, scale),
                "used": format_amount(used, scale),
                "held": format_amount(held, scale),
                "left": "-" if budget.is_per_task else format_amount(max(0, budget.limit - used - held), scale),
                "allowed": tally.allowed[budget.id],
                "denied": tally.denied[budget.id] if not budget.is_shadow else f"{tally.shadow_denied[budget.id]}*",
            }
        )
    return rows


def check_line(report: CheckReport) -> str:
    if report.is_consistent:
        return f"ledger check: consistent — {report.entries} entries, {report.counters} counters rebuilt and equal"
    return f"ledger check: {len(report.mismatches)} MISMATCHES: {report.mismatches[:3]}"
