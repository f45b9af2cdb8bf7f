"""One request's fault fails that request, not every request that shared its batch.

How: a fault is injected into deciding one action (`TenantBatch._hold` raises for the action
`poison.act`, as a bug or a row the store refuses would); everything else is the real engine on
SQLite and PostgreSQL. The batch applies nothing, then its halves are decided apart, each in
its own transaction, down to the request that fails alone.
"""

from __future__ import annotations

from typing import Any

import pytest

from conftest import assert_consistent
from remit.batch import TenantBatch
from remit.domain.decisions import Decision, Outcome
from remit.engine import ActionInput, Engine
from remit.errors import Unavailable

GOOD = ActionInput(agent="bot-7", action="crm.discount.apply", amounts={"usd": "10"})
POISON = ActionInput(agent="bot-7", action="poison.act", amounts={"usd": "1"})


@pytest.fixture
def poisoned(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Deciding `poison.act` raises; returns the actions decided, in order, failed tries included."""
    decided: list[str] = []
    hold = TenantBatch._hold

    def faulty(self: TenantBatch, act: Any, consulted: Any) -> Decision:
        decided.append(act.action)
        if act.action == "poison.act":
            raise RuntimeError("injected fault")
        return hold(self, act, consulted)

    monkeypatch.setattr(TenantBatch, "_hold", faulty)
    return decided


def _batch(engine: Engine) -> list[Any]:
    requests = [GOOD, GOOD, GOOD, POISON, GOOD, GOOD, GOOD, GOOD]
    return [engine.authorize_operation("t1", request) for request in requests]


@pytest.mark.parametrize("way", ["execute", "try_execute"])
def test_the_others_of_a_poisoned_batch_are_decided(engine: Engine, poisoned: list[str], way: str) -> None:
    holds_before = engine.holds_live()
    results = getattr(engine, way)(_batch(engine))
    assert results is not None
    failed = results[3]
    assert isinstance(failed, Unavailable) and "injected fault" in failed.message
    others = [result for index, result in enumerate(results) if index != 3]
    assert all(isinstance(result, Decision) and result.outcome is Outcome.ALLOW for result in others), others
    assert len({result.reservation_id for result in others}) == 7
    assert engine.holds_live() == holds_before + 7  # each held once: no part was applied twice
    assert_consistent(engine)
    # The whole batch, then the halves: the poisoned request's part is halved down to it alone
    # (8 → 4 → 2 → 1), while a part without it is decided once.
    assert poisoned[:4] == ["crm.discount.apply"] * 3 + ["poison.act"]
    assert poisoned.count("poison.act") == 4


def test_a_lone_poisoned_request_still_raises_for_its_caller(engine: Engine, poisoned: list[str]) -> None:
    with pytest.raises(RuntimeError, match="injected fault"):
        engine.execute([engine.authorize_operation("t1", POISON)])
    assert poisoned == ["poison.act"]
    assert_consistent(engine)
