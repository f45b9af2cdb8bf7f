"""Owned batches: an engine that wrote a tenant last decides from memory and claims as it writes.

What it proves, on both stores: the shortcut is really taken once an engine wrote a tenant
twice in a row (the ordinary claim is not called), and it is never taken on stale knowledge —
another engine's holds, commits or config change in between make the owned claim fail whole,
and the batch is decided again the ordinary way against what the store holds (a hard cap is
never overrun, nothing of the failed attempt lands, counters match the ledger). A request the
memory cannot decide (an unknown reservation, an idempotency key, reach) goes the ordinary way.

How: two engines on one store stand for two processes; `claim_tenants` and `claim_owned` are
wrapped to count which claim each batch made.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
import pytest

from conftest import FakeClock, allowed, assert_consistent, config
from remit.domain.decisions import Outcome
from remit.engine import ActionInput, Engine
from remit.errors import NotFound
from remit.store.base import Store, TenantMoved, Transaction
from remit.store.postgres import PostgresStore, PostgresTransaction

CAP = {"scopes": {"ops": {"budgets": [{"meter": "usd", "limit": "10", "window": "day"}]}}}


def spend(usd: str, **extra: Any) -> ActionInput:
    return ActionInput(agent="a1", action="ops.run", amounts={"usd": usd}, **extra)


@pytest.fixture
def claims(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Which claim each transaction made, in order: "ordinary", "owned", or "moved" where the
    owned claim was refused on the spot (SQLite; PostgreSQL refuses it at commit)."""
    made: list[str] = []
    ordinary = Transaction.claim_tenants

    def claim_tenants(self: Transaction, tenant_ids: Any) -> Any:
        made.append("ordinary")
        return ordinary(self, tenant_ids)

    monkeypatch.setattr(Transaction, "claim_tenants", claim_tenants)
    for kind in (Transaction, PostgresTransaction):  # SQLite's is the base class's
        owned = vars(kind)["claim_owned"]

        def claim_owned(self: Transaction, rows: Any, owned: Any = owned) -> None:
            made.append("owned")
            try:
                owned(self, rows)
            except TenantMoved:
                made[-1] = "moved"
                raise

        monkeypatch.setattr(kind, "claim_owned", claim_owned)
    return made


@pytest.fixture
def first(store: Store, clock: FakeClock) -> Engine:
    engine = Engine(store, clock=clock)
    engine.create_tenant("t1")
    engine.apply_config("t1", config(**CAP))
    return engine


def warm(engine: Engine) -> None:
    """Two batches in a row by `engine`: from the next one on it owns the tenant."""
    engine.release("t1", allowed(engine.authorize("t1", spend("1"))))


def test_an_engine_that_wrote_twice_in_a_row_claims_without_reading(first: Engine, claims: list[str]) -> None:
    warm(first)
    claims.clear()
    rid = allowed(first.authorize("t1", spend("4")))
    first.commit("t1", rid, {"usd": "3"})
    assert claims == ["owned", "owned"]
    assert_consistent(first)


def test_another_engines_holds_in_between_are_never_overrun(
    store: Store, first: Engine, clock: FakeClock, claims: list[str]
) -> None:
    warm(first)
    allowed(first.authorize("t1", spend("4")))
    second = Engine(store, clock=clock)
    allowed(second.authorize("t1", spend("4")))  # 8 of 10 held; `first` does not know
    claims.clear()
    late = first.authorize("t1", spend("4"))
    assert late.outcome is Outcome.DENY, "decided on stale memory, the cap would be overrun"
    assert late.budgets[0].held == 800
    if store.dialect == "sqlite":
        assert claims == ["moved", "ordinary"]
    else:  # PostgreSQL learns of the refusal at commit, after sending the claim
        assert claims[0] == "owned" and claims[-1] == "ordinary"
    fits = allowed(first.authorize("t1", spend("2")))
    assert fits
    assert_consistent(first)


def test_a_refused_owned_claim_applies_nothing(store: Store, first: Engine, clock: FakeClock) -> None:
    warm(first)
    second = Engine(store, clock=clock)
    allowed(second.authorize("t1", spend("1")))
    with store.transaction(is_read_only=True) as tx:
        entries_before = len(list(tx.ledger_entries("t1")))
    allowed(first.authorize("t1", spend("1")))  # the owned attempt is refused, the ordinary one lands
    with store.transaction(is_read_only=True) as tx:
        entries = list(tx.ledger_entries("t1"))
        counters = tx.all_counters("t1")
    assert len(entries) == entries_before + 1, "one hold entry: the refused attempt wrote none"
    assert counters[("ops:usd:day", "")].held == 200
    assert_consistent(first)


def test_a_refused_owned_claim_returns_its_connection_idle(
    store: Store, first: Engine, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """On PostgreSQL the refusal comes with the commit; the connection must still go back to the
    pool outside any transaction (the pool would otherwise warn and roll back itself)."""
    warm(first)
    allowed(Engine(store, clock=clock).authorize("t1", spend("1")))
    with caplog.at_level(logging.WARNING, logger="psycopg.pool"):
        allowed(first.authorize("t1", spend("1")))
    assert [r.getMessage() for r in caplog.records if r.name.startswith("psycopg")] == []
    if isinstance(store, PostgresStore):
        with store._pool.connection() as connection:
            assert connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert_consistent(first)


def test_a_config_another_engine_applied_is_used_at_once(store: Store, first: Engine, clock: FakeClock) -> None:
    warm(first)
    second = Engine(store, clock=clock)
    second.apply_config("t1", config(scopes={"ops": {"budgets": [{"meter": "usd", "limit": "3", "window": "day"}]}}))
    over = first.authorize("t1", spend("4"))
    assert over.outcome is Outcome.DENY
    assert over.budgets[0].limit == 300, "decided under the new limit, not the one in memory"
    assert_consistent(first)


def test_what_memory_cannot_decide_goes_the_ordinary_way(first: Engine, claims: list[str]) -> None:
    warm(first)
    claims.clear()
    with pytest.raises(NotFound):
        first.commit("t1", "res_unknown")
    keyed = allowed(first.authorize("t1", spend("1", idempotency_key="k-1")))
    assert first.authorize("t1", spend("1", idempotency_key="k-1")).reservation_id == keyed
    reach = first.authorize("t1", ActionInput(agent="a1", action="ops.run", touches={"accounts": ["acct:1"]}))
    assert reach.outcome is Outcome.ALLOW
    assert claims == ["ordinary"] * 4
    assert_consistent(first)


def test_overdue_holds_are_expired_by_the_ordinary_way(first: Engine, clock: FakeClock, claims: list[str]) -> None:
    warm(first)
    allowed(first.authorize("t1", spend("9", lease_seconds=5)))
    clock.advance(6)
    claims.clear()
    fits = allowed(first.authorize("t1", spend("9")))  # room again: the abandoned hold expired first
    assert fits
    assert claims == ["ordinary"]
    assert_consistent(first)
