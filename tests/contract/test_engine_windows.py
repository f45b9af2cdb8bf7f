"""Idempotent requests, window rollover, distinct meters and per-task budgets, on every store.

The engine runs on examples/remit.yaml (tenant `t1`, America/New_York) or on a small config
from `conftest.config`; a FakeClock is moved across local midnight by hand. Assertions read
the stored counters and ledger, and every scenario ends with `engine.check()` agreeing.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from conftest import FakeClock, allowed, assert_consistent, config
from remit.domain.decisions import Decision, Outcome, ReasonCode
from remit.domain.ledger import EntryKind
from remit.engine import ActionInput, Engine
from remit.errors import Conflict, InvalidRequest
from remit.store.base import Store

US = 1_000_000
NEW_YORK = dt.timezone(dt.timedelta(hours=-5))  # January: EST, no DST in these tests
AGENT_DAY = "sales/renewals/agent:bot-7:usd:day"
SALES_MONTH = "sales:usd:month"
SUPPORT_TOKENS_DAY = "support:tokens:day"
TASK_TOKENS = "support:tokens:total:per-task"
ACCOUNTS = "ops:accounts:day"
SENDS_HOUR = "sales/renewals:sends:rolling:1h:email.*"


def at(year: int, month: int, day: int, hour: int, minute: int = 0) -> int:
    """A New York wall-clock time in January 2026 as epoch microseconds."""
    moment = dt.datetime(year, month, day, hour, minute, tzinfo=NEW_YORK)
    return int(moment.timestamp()) * US


def chat(usd: str, **extra: Any) -> ActionInput:
    return ActionInput(agent="bot-7", action="llm.chat", amounts={"usd": usd}, **extra)


def tokens(amount: str, task: str | None = None) -> ActionInput:
    return ActionInput(agent="helper-1", action="llm.chat", amounts={"tokens": amount}, task=task)


def touch(*accounts: str, agent: str = "a1") -> ActionInput:
    return ActionInput(agent=agent, action="crm.touch", touches={"accounts": list(accounts)})


def snapshot(store: Store) -> tuple[list[Any], dict[Any, Any]]:
    """The ledger and every counter's amounts (window_start aside: see test_engine_holds)."""
    with store.transaction() as tx:
        entries = [(e.id, e.kind, e.reservation_id, e.postings, e.detail) for e in tx.ledger_entries("t1")]
        counters = {key: (c.used, c.held, c.overrun, dict(c.buckets)) for key, c in tx.all_counters("t1").items()}
    return entries, counters


def counter(store: Store, budget_id: str, instance: str = "") -> tuple[int, int, int]:
    with store.transaction() as tx:
        found = tx.all_counters("t1").get((budget_id, instance))
    return (0, 0, 0) if found is None else (found.used, found.held, found.overrun)


def holds(store: Store) -> list[Any]:
    with store.transaction() as tx:
        return [e for e in tx.ledger_entries("t1") if e.kind is EntryKind.HOLD]


def report_of(decision: Decision, budget_id: str) -> Any:
    return {b.budget: b for b in decision.budgets}[budget_id]


@pytest.fixture
def accounts_engine(engine: Engine) -> Engine:
    """Tenant t1 re-configured: agents a1, a2 in `ops`, at most 3 distinct accounts a day."""
    engine.apply_config(
        "t1",
        config(
            scopes={
                "ops": {
                    "budgets": [
                        {"meter": "accounts", "limit": "3", "window": "day"},
                        {"meter": "usd", "limit": "100", "window": "day"},
                    ]
                }
            }
        ),
    )
    return engine


# == idempotent authorize =======================================================================


def test_same_key_same_request_returns_the_same_decision_and_holds_once(engine: Engine, store: Store) -> None:
    first = engine.authorize("t1", chat("100", idempotency_key="k-1"))
    rid = allowed(first)
    after_first = snapshot(store)

    again = engine.authorize("t1", chat("100", idempotency_key="k-1"))

    assert again.reservation_id == rid
    assert again == first
    assert snapshot(store) == after_first
    assert counter(store, AGENT_DAY) == (0, 10000, 0)
    assert len(holds(store)) == 1
    # The retry names a reservation that is really held: committing it works once.
    assert engine.commit("t1", rid).committed == {"usd": 10000}
    assert_consistent(engine)


def test_same_key_in_one_batch_holds_once(engine: Engine, store: Store) -> None:
    operation = engine.authorize_operation("t1", chat("100", idempotency_key="k-1"))

    first, second = engine.execute([operation, operation])

    assert isinstance(first, Decision) and isinstance(second, Decision)
    assert first.reservation_id is not None
    assert second.reservation_id == first.reservation_id
    assert counter(store, AGENT_DAY) == (0, 10000, 0)
    assert len(holds(store)) == 1
    assert_consistent(engine)


def test_same_key_different_request_is_a_mismatch_and_changes_nothing(engine: Engine, store: Store) -> None:
    allowed(engine.authorize("t1", chat("100", idempotency_key="k-1")))
    before = snapshot(store)

    for changed in (
        chat("101", idempotency_key="k-1"),
        chat("100", idempotency_key="k-1", task="t-2"),
        chat("100", idempotency_key="k-1", lease_seconds=120),
    ):
        with pytest.raises(Conflict) as caught:
            engine.authorize("t1", changed)
        assert caught.value.code == "idempotency_mismatch"

    assert snapshot(store) == before
    assert_consistent(engine)


def test_a_denial_retried_with_its_key_returns_the_same_denial(engine: Engine, store: Store) -> None:
    blocker = allowed(engine.authorize("t1", chat("200")))
    denial = engine.authorize("t1", chat("100", idempotency_key="k-deny"))
    assert denial.outcome is Outcome.DENY
    engine.release("t1", blocker)  # now 100 would fit
    before = snapshot(store)

    again = engine.authorize("t1", chat("100", idempotency_key="k-deny"))

    assert again == denial
    assert again.outcome is Outcome.DENY
    assert snapshot(store) == before
    # A new key is a new request, decided against today's headroom.
    allowed(engine.authorize("t1", chat("100", idempotency_key="k-new")))
    assert_consistent(engine)


def test_reported_usage_with_a_key_counts_once(engine: Engine, store: Store) -> None:
    first = engine.report_usage("t1", chat("30", idempotency_key="u-1"))
    before = snapshot(store)

    again = engine.report_usage("t1", chat("30", idempotency_key="u-1"))

    assert again == first
    assert snapshot(store) == before
    assert counter(store, AGENT_DAY) == (3000, 0, 0)
    with pytest.raises(Conflict) as caught:
        engine.authorize("t1", chat("30", idempotency_key="u-1"))  # usage and authorize differ
    assert caught.value.code == "idempotency_mismatch"
    assert_consistent(engine)


# == windows ====================================================================================


def test_usage_from_yesterday_does_not_count_today_in_the_tenant_time_zone(
    engine: Engine, store: Store, clock: FakeClock
) -> None:
    clock.now_us = at(2026, 1, 15, 18, 30)  # 23:30 UTC
    engine.commit("t1", allowed(engine.authorize("t1", chat("250"))))
    assert engine.authorize("t1", chat("1")).outcome is Outcome.DENY

    clock.now_us = at(2026, 1, 15, 19, 30)  # past UTC midnight, still the 15th in New York
    still_denied = engine.authorize("t1", chat("1"))
    assert [r.budget for r in still_denied.reasons] == [AGENT_DAY]
    assert still_denied.retry_after_seconds == (at(2026, 1, 16, 0) - clock.now_us) // US

    clock.now_us = at(2026, 1, 16, 0, 1)
    today = engine.authorize("t1", chat("100"))

    allowed(today)
    day = report_of(today, AGENT_DAY)
    assert (day.used, day.held, day.remaining) == (0, 10000, 15000)
    assert day.resets_at_us == at(2026, 1, 17, 0)
    month = report_of(today, SALES_MONTH)
    assert (month.used, month.held) == (25000, 10000)  # the month did not roll over
    with store.transaction() as tx:
        agent_day = tx.all_counters("t1")[(AGENT_DAY, "")]
    assert (agent_day.window_start, agent_day.used) == (at(2026, 1, 16, 0), 0)
    assert_consistent(engine)


def test_a_hold_placed_before_midnight_posts_into_the_new_day(engine: Engine, store: Store, clock: FakeClock) -> None:
    clock.now_us = at(2026, 1, 15, 23, 0)
    engine.commit("t1", allowed(engine.authorize("t1", chat("100"))))
    rid = allowed(engine.authorize("t1", chat("150", lease_seconds=7200)))
    clock.now_us = at(2026, 1, 16, 0, 30)

    result = engine.commit("t1", rid, {"usd": "120"})

    assert result.is_late is False
    assert result.overrun == {}
    with store.transaction() as tx:
        counters = tx.all_counters("t1")
        commit = [e for e in tx.ledger_entries("t1") if e.kind is EntryKind.COMMIT][-1]
    day = counters[(AGENT_DAY, "")]
    assert (day.window_start, day.used, day.held) == (at(2026, 1, 16, 0), 12000, 0)
    assert counters[(SALES_MONTH, "")].used == 22000
    assert {p.budget_id: p.window_start for p in commit.postings if p.used}[AGENT_DAY] == at(2026, 1, 16, 0)
    # Yesterday's 100 is gone from today's window: 250 - 120 = 130 left.
    assert report_of(engine.authorize("t1", chat("130.01")), AGENT_DAY).remaining == 13000
    allowed(engine.authorize("t1", chat("130")))
    assert_consistent(engine)


def test_a_hold_spanning_midnight_keeps_its_room_in_the_new_day(engine: Engine, store: Store, clock: FakeClock) -> None:
    clock.now_us = at(2026, 1, 15, 23, 50)
    rid = allowed(engine.authorize("t1", chat("200", lease_seconds=3600)))
    clock.now_us = at(2026, 1, 16, 0, 10)

    # The live hold still holds in the new window: only 50 is free until it resolves.
    denied = engine.authorize("t1", chat("60"))
    assert [r.budget for r in denied.reasons] == [AGENT_DAY]
    assert (report_of(denied, AGENT_DAY).used, report_of(denied, AGENT_DAY).held) == (0, 20000)
    engine.release("t1", rid)
    allowed(engine.authorize("t1", chat("250")))
    assert_consistent(engine)


def test_a_rolling_window_gives_usage_back_a_bucket_at_a_time(engine: Engine, store: Store, clock: FakeClock) -> None:
    def sends(count: str) -> ActionInput:
        return ActionInput(agent="bot-8", action="email.send", amounts={"sends": count})

    engine.commit("t1", allowed(engine.authorize("t1", sends("20"))))
    clock.advance(1800)
    engine.commit("t1", allowed(engine.authorize("t1", sends("20"))))

    denied = engine.authorize("t1", sends("1"))

    assert [(r.code, r.budget) for r in denied.reasons] == [(ReasonCode.BUDGET_EXHAUSTED, SENDS_HOUR)]
    assert report_of(denied, SENDS_HOUR).used == 40
    assert denied.retry_after_seconds == 1800  # when the first 20 leave the last hour
    clock.advance(1800)
    assert report_of(engine.authorize("t1", sends("21")), SENDS_HOUR).remaining == 20
    allowed(engine.authorize("t1", sends("20")))
    assert counter(store, SENDS_HOUR) == (0, 20, 0)  # rolling usage lives in buckets, not `used`
    assert_consistent(engine)


# == distinct meters ============================================================================


def test_the_same_account_twice_in_a_day_counts_once(accounts_engine: Engine, store: Store) -> None:
    engine = accounts_engine
    first = engine.authorize("t1", touch("acct:1"))
    assert report_of(first, ACCOUNTS).requested == 1
    assert engine.commit("t1", allowed(first)).committed == {"accounts": 1}

    second = engine.authorize("t1", touch("acct:1", agent="a2"))

    assert report_of(second, ACCOUNTS).requested == 0
    assert engine.commit("t1", allowed(second)).committed == {"accounts": 0}
    assert counter(store, ACCOUNTS) == (1, 0, 0)
    # A repeated entity inside one request counts once too.
    assert engine.commit("t1", allowed(engine.authorize("t1", touch("acct:2", "acct:2")))).committed == {"accounts": 1}
    assert counter(store, ACCOUNTS) == (2, 0, 0)
    assert_consistent(engine)


def test_a_limit_on_distinct_accounts_is_enforced(accounts_engine: Engine, store: Store) -> None:
    engine = accounts_engine
    engine.commit("t1", allowed(engine.authorize("t1", touch("acct:1", "acct:2"))))
    held = allowed(engine.authorize("t1", touch("acct:3")))
    before = snapshot(store)

    fourth = engine.authorize("t1", touch("acct:4"))

    assert fourth.outcome is Outcome.DENY
    assert [(r.code, r.budget) for r in fourth.reasons] == [(ReasonCode.BUDGET_EXHAUSTED, ACCOUNTS)]
    assert (report_of(fourth, ACCOUNTS).used, report_of(fourth, ACCOUNTS).held) == (2, 1)
    assert snapshot(store) == before
    # Accounts already counted today cost nothing and still pass.
    engine.commit("t1", allowed(engine.authorize("t1", touch("acct:1", "acct:2"))))
    # Touching four at once is more than the whole limit: no retry helps.
    too_many = engine.authorize("t1", touch("acct:5", "acct:6", "acct:7", "acct:8"))
    assert [r.code for r in too_many.reasons] == [ReasonCode.EXCEEDS_LIMIT]
    assert too_many.retry_after_seconds is None
    engine.release("t1", held)
    allowed(engine.authorize("t1", touch("acct:4")))
    assert_consistent(engine)


def test_two_holds_on_one_uncounted_account_hold_two_units_and_count_one(accounts_engine: Engine, store: Store) -> None:
    engine = accounts_engine
    first = allowed(engine.authorize("t1", touch("acct:9")))
    second = allowed(engine.authorize("t1", touch("acct:9", agent="a2")))
    assert counter(store, ACCOUNTS) == (0, 2, 0)

    assert engine.commit("t1", first).committed == {"accounts": 1}
    assert engine.commit("t1", second).committed == {"accounts": 0}

    assert counter(store, ACCOUNTS) == (1, 0, 0)
    assert_consistent(engine)


def test_distinct_accounts_count_again_the_next_day(accounts_engine: Engine, store: Store, clock: FakeClock) -> None:
    engine = accounts_engine
    engine.commit("t1", allowed(engine.authorize("t1", touch("acct:1", "acct:2", "acct:3"))))
    assert engine.authorize("t1", touch("acct:4")).outcome is Outcome.DENY

    clock.advance(86400)
    again = engine.authorize("t1", touch("acct:1", "acct:4"))

    assert report_of(again, ACCOUNTS).requested == 2
    assert engine.commit("t1", allowed(again)).committed == {"accounts": 2}
    assert counter(store, ACCOUNTS) == (2, 0, 0)
    assert_consistent(engine)


# == per-task budgets ===========================================================================


def test_each_task_gets_its_own_counter(engine: Engine, store: Store) -> None:
    engine.commit("t1", allowed(engine.authorize("t1", tokens("150000", task="t-1"))))

    other_task = engine.authorize("t1", tokens("150000", task="t-2"))
    same_task = engine.authorize("t1", tokens("60000", task="t-1"))

    allowed(other_task)
    assert report_of(other_task, TASK_TOKENS).used == 0
    assert same_task.outcome is Outcome.DENY
    assert [(r.code, r.budget) for r in same_task.reasons] == [(ReasonCode.BUDGET_EXHAUSTED, TASK_TOKENS)]
    assert report_of(same_task, TASK_TOKENS).remaining == 50000
    assert same_task.retry_after_seconds is None  # a task's lifetime window never resets
    assert counter(store, TASK_TOKENS, "t-1") == (150000, 0, 0)
    assert counter(store, TASK_TOKENS, "t-2") == (0, 150000, 0)
    assert counter(store, SUPPORT_TOKENS_DAY) == (150000, 150000, 0)  # the shared daily budget sees both
    assert_consistent(engine)


def test_a_request_without_a_task_is_refused_where_a_per_task_budget_applies(engine: Engine, store: Store) -> None:
    """A per-task cap must not fail open: work that names no task cannot slip past it."""
    before = counter(store, SUPPORT_TOKENS_DAY)
    with pytest.raises(InvalidRequest) as caught:
        engine.authorize("t1", tokens("250000"))  # more than any one task may use
    assert caught.value.code == "task_required"
    assert caught.value.field == "task"
    assert TASK_TOKENS in caught.value.message
    with store.transaction() as tx:
        per_task = [key for key in tx.all_counters("t1") if key[0] == TASK_TOKENS]
    assert per_task == []
    assert counter(store, SUPPORT_TOKENS_DAY) == before
    assert_consistent(engine)
