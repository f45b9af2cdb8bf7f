"""The two-phase contract of the engine on every store: authorize, commit, release, expire, usage.

Each test drives the engine (tenant `t1`, examples/remit.yaml, a FakeClock at
2025-12-31 19:00 America/New_York) and then reads the store itself — counters and ledger
through a transaction — so an answer that disagrees with what was written fails. Every
scenario ends with `engine.check()`: counters rebuilt from the ledger equal the live ones.
"""

from __future__ import annotations

from typing import Any

import pytest

from conftest import START_US, FakeClock, allowed, assert_consistent, config
from remit import batch as batch_module
from remit.domain.decisions import Decision, Outcome, ReasonCode
from remit.domain.ledger import EntryKind
from remit.engine import ActionInput, Engine
from remit.errors import Conflict, InvalidRequest, NotFound
from remit.store.base import Store

US = 1_000_000
NY_MIDNIGHT_US = START_US + 5 * 3600 * US
"""2026-01-01 00:00 America/New_York: the end of the day (and month) windows at START_US."""

AGENT_DAY = "sales/renewals/agent:bot-7:usd:day"
ACCOUNTS_DAY = "sales/renewals:accounts:day"
CRM_HOUR = "sales/renewals:usd:hour:crm.*"
SALES_MONTH = "sales:usd:month"
ROOT_MONTH = "/:usd:month"
SHADOW_DAY = "support:usd:day"
TASK_TOKENS = "support:tokens:total:per-task"
CRM_PATH = [AGENT_DAY, ACCOUNTS_DAY, CRM_HOUR, SALES_MONTH, ROOT_MONTH]
USD_CRM_PATH = [AGENT_DAY, CRM_HOUR, SALES_MONTH, ROOT_MONTH]


def crm(usd: str, *, agent: str = "bot-7", accounts: tuple[str, ...] = (), **extra: Any) -> ActionInput:
    touches = {"accounts": list(accounts)} if accounts else {}
    return ActionInput(agent=agent, action="crm.discount.apply", amounts={"usd": usd}, touches=touches, **extra)


def chat(usd: str, *, agent: str = "bot-7", **extra: Any) -> ActionInput:
    return ActionInput(agent=agent, action="llm.chat", amounts={"usd": usd}, **extra)


def snapshot(store: Store) -> tuple[list[Any], dict[Any, Any]]:
    """The tenant's whole ledger and every counter's amounts, in comparable form.

    A counter's `window_start` is left out: a batch may move an untouched counter into the
    current window (its usage is then zero either way), which changes no amount.
    """
    with store.transaction() as tx:
        entries = [(e.id, e.kind, e.reservation_id, e.postings, e.detail) for e in tx.ledger_entries("t1")]
        counters = {key: (c.used, c.held, c.overrun, dict(c.buckets)) for key, c in tx.all_counters("t1").items()}
    return entries, counters


def counter(store: Store, budget_id: str, instance: str = "") -> tuple[int, int, int]:
    """(used, held, overrun) of one budget instance as stored."""
    with store.transaction() as tx:
        found = tx.all_counters("t1").get((budget_id, instance))
    return (0, 0, 0) if found is None else (found.used, found.held, found.overrun)


def entries(store: Store, kind: EntryKind | None = None) -> list[Any]:
    with store.transaction() as tx:
        return [e for e in tx.ledger_entries("t1") if kind is None or e.kind is kind]


# == authorize ==================================================================================


def test_authorize_holds_on_every_budget_of_the_path_that_selects_the_action(engine: Engine, store: Store) -> None:
    decision = engine.authorize("t1", crm("120.00", accounts=("acct:1",)))

    allowed(decision)
    assert [b.budget for b in decision.budgets] == CRM_PATH
    reports = {b.budget: b for b in decision.budgets}
    agent_day = reports[AGENT_DAY]
    assert (agent_day.scope, agent_day.meter, agent_day.window) == ("sales/renewals/agent:bot-7", "usd", "day")
    assert (agent_day.limit, agent_day.used, agent_day.held, agent_day.requested, agent_day.remaining) == (
        25000,
        0,
        12000,
        12000,
        13000,
    )
    assert agent_day.resets_at_us == NY_MIDNIGHT_US
    assert reports[CRM_HOUR].resets_at_us == START_US + 3600 * US
    assert (reports[CRM_HOUR].limit, reports[CRM_HOUR].remaining) == (60000, 48000)
    assert (reports[ACCOUNTS_DAY].requested, reports[ACCOUNTS_DAY].held, reports[ACCOUNTS_DAY].remaining) == (1, 1, 24)
    assert (reports[ROOT_MONTH].limit, reports[ROOT_MONTH].remaining) == (2_000_000, 1_988_000)
    assert reports[SALES_MONTH].resets_at_us == NY_MIDNIGHT_US  # December ends at New York midnight
    for report in decision.budgets:  # nothing used yet: every budget holds exactly what was asked
        assert (report.used, report.held) == (0, report.requested), report.budget
        assert report.remaining == report.limit - report.requested, report.budget
        assert report.is_shadow is False
    assert decision.reasons == []
    assert decision.retry_after_seconds is None
    assert decision.lease_expires_at_us == START_US + 60 * US

    for budget_id in [AGENT_DAY, CRM_HOUR, SALES_MONTH, ROOT_MONTH]:
        assert counter(store, budget_id) == (0, 12000, 0), budget_id
    assert counter(store, ACCOUNTS_DAY) == (0, 1, 0)
    assert counter(store, "sales/renewals:sends:rolling:1h:email.*") == (0, 0, 0)
    (hold,) = entries(store, EntryKind.HOLD)
    assert hold.reservation_id == decision.reservation_id
    assert sorted(p.budget_id for p in hold.postings) == sorted(CRM_PATH)
    assert {p.budget_id: p.held for p in hold.postings}[ACCOUNTS_DAY] == 1
    assert_consistent(engine)


def test_authorize_skips_budgets_whose_selector_or_meter_does_not_match(engine: Engine, store: Store) -> None:
    chat_decision = engine.authorize("t1", chat("10"))
    send_decision = engine.authorize("t1", ActionInput(agent="bot-7", action="email.send", amounts={"sends": "1"}))

    # crm.* does not select llm.chat; the accounts budget is not asked without touches.
    assert [b.budget for b in chat_decision.budgets] == [AGENT_DAY, SALES_MONTH, ROOT_MONTH]
    # email.send asks only for sends: the usd budgets on the path are not consulted.
    assert [b.budget for b in send_decision.budgets] == ["sales/renewals:sends:rolling:1h:email.*"]
    assert counter(store, CRM_HOUR) == (0, 0, 0)
    assert counter(store, AGENT_DAY) == (0, 1000, 0)
    assert counter(store, "sales/renewals:sends:rolling:1h:email.*") == (0, 1, 0)
    assert_consistent(engine)


def test_a_denial_changes_no_counter_writes_no_entry_and_names_the_budget(engine: Engine, store: Store) -> None:
    engine.commit("t1", allowed(engine.authorize("t1", chat("150"))))
    allowed(engine.authorize("t1", chat("100")))
    before = snapshot(store)

    decision = engine.authorize("t1", crm("1.00", accounts=("acct:1",)))

    assert decision.outcome is Outcome.DENY
    assert decision.reservation_id is None
    assert [(r.code, r.budget) for r in decision.reasons] == [(ReasonCode.BUDGET_EXHAUSTED, AGENT_DAY)]
    agent_day = {b.budget: b for b in decision.budgets}[AGENT_DAY]
    assert (agent_day.used, agent_day.held, agent_day.requested, agent_day.remaining) == (15000, 10000, 100, 0)
    # Only a live hold stands in the way: it resolves or expires soon, so a retry could succeed.
    assert decision.retry_after_seconds == 1
    assert snapshot(store) == before
    assert_consistent(engine)


def test_retry_after_is_the_window_reset_when_usage_alone_fills_it(
    engine: Engine, store: Store, clock: FakeClock
) -> None:
    for _ in range(4):
        engine.commit("t1", allowed(engine.authorize("t1", crm("150", agent="bot-8"))))
    clock.advance(1000)
    before = snapshot(store)

    decision = engine.authorize("t1", crm("10", agent="bot-8"))

    assert decision.outcome is Outcome.DENY
    assert [(r.code, r.budget) for r in decision.reasons] == [(ReasonCode.BUDGET_EXHAUSTED, CRM_HOUR)]
    assert decision.retry_after_seconds == 3600 - 1000
    assert snapshot(store) == before
    clock.advance(2600)
    allowed(engine.authorize("t1", crm("10", agent="bot-8")))
    assert_consistent(engine)


def test_no_retry_after_when_no_retry_can_succeed(engine: Engine, store: Store) -> None:
    before = snapshot(store)

    # 300 is over bot-7's whole daily limit (250) and over the per-action maximum (150): both named.
    too_big = engine.authorize("t1", crm("300"))

    assert too_big.outcome is Outcome.DENY
    assert {(r.code, r.budget) for r in too_big.reasons} == {
        (ReasonCode.EXCEEDS_LIMIT, AGENT_DAY),
        (ReasonCode.PER_ACTION_MAX_EXCEEDED, CRM_HOUR),
    }
    assert too_big.retry_after_seconds is None
    assert snapshot(store) == before

    # bot-7's day budget could take 200 after midnight; the hour budget never takes 200 in one action.
    engine.commit("t1", allowed(engine.authorize("t1", chat("250"))))
    mixed = engine.authorize("t1", crm("200"))
    assert mixed.outcome is Outcome.DENY
    assert [(r.code, r.budget) for r in mixed.reasons] == [
        (ReasonCode.BUDGET_EXHAUSTED, AGENT_DAY),
        (ReasonCode.PER_ACTION_MAX_EXCEEDED, CRM_HOUR),
    ]
    assert mixed.retry_after_seconds is None
    # Alone, the day budget's refusal does have a retry time: New York midnight.
    alone = engine.authorize("t1", crm("100"))
    assert [r.budget for r in alone.reasons] == [AGENT_DAY]
    assert alone.retry_after_seconds == (NY_MIDNIGHT_US - START_US) // US
    assert_consistent(engine)


def test_no_retry_after_when_a_total_window_is_spent(engine: Engine, store: Store, clock: FakeClock) -> None:
    spend = ActionInput(agent="helper-1", action="llm.chat", amounts={"tokens": "200000"}, task="t-1")
    engine.commit("t1", allowed(engine.authorize("t1", spend)))
    before = snapshot(store)

    decision = engine.authorize(
        "t1", ActionInput(agent="helper-1", action="llm.chat", amounts={"tokens": "1"}, task="t-1")
    )

    assert decision.outcome is Outcome.DENY
    assert [(r.code, r.budget) for r in decision.reasons] == [(ReasonCode.BUDGET_EXHAUSTED, TASK_TOKENS)]
    assert {b.budget: b.resets_at_us for b in decision.budgets}[TASK_TOKENS] is None
    assert decision.retry_after_seconds is None
    assert snapshot(store) == before
    clock.advance(40 * 86400)  # a total window never resets
    assert (
        engine.authorize(
            "t1", ActionInput(agent="helper-1", action="llm.chat", amounts={"tokens": "1"}, task="t-1")
        ).outcome
        is Outcome.DENY
    )
    assert_consistent(engine)


def test_all_or_nothing_a_denial_on_one_budget_holds_on_none(engine: Engine, store: Store) -> None:
    engine.commit("t1", allowed(engine.authorize("t1", chat("200"))))
    before = snapshot(store)

    # The hour budget and the month budgets have room; the agent's day budget does not.
    decision = engine.authorize("t1", crm("60", accounts=("acct:7",)))

    assert decision.outcome is Outcome.DENY
    assert [r.budget for r in decision.reasons] == [AGENT_DAY]
    assert snapshot(store) == before
    assert counter(store, CRM_HOUR) == (0, 0, 0)
    assert counter(store, ACCOUNTS_DAY) == (0, 0, 0)
    assert_consistent(engine)


# == commit =====================================================================================


def test_commit_less_than_held_releases_the_rest(engine: Engine, store: Store) -> None:
    rid = allowed(engine.authorize("t1", crm("120.00", accounts=("acct:1",))))

    result = engine.commit("t1", rid, {"usd": "100"})

    assert (result.status, result.committed, result.released, result.overrun) == (
        "committed",
        {"usd": 10000, "accounts": 1},
        {"usd": 2000},
        {},
    )
    assert result.is_late is False
    for budget_id in USD_CRM_PATH:
        assert counter(store, budget_id) == (10000, 0, 0), budget_id
    assert counter(store, ACCOUNTS_DAY) == (1, 0, 0)
    (commit,) = entries(store, EntryKind.COMMIT)
    assert commit.reservation_id == rid
    assert commit.detail["amounts"] == {"usd": 10000}
    assert "overrun" not in commit.detail
    assert_consistent(engine)


def test_commit_more_than_held_within_headroom_counts_it(engine: Engine, store: Store) -> None:
    rid = allowed(engine.authorize("t1", crm("100")))

    result = engine.commit("t1", rid, {"usd": "140"})

    assert (result.committed, result.released, result.overrun) == ({"usd": 14000}, {"usd": 0}, {})
    for budget_id in USD_CRM_PATH:
        assert counter(store, budget_id) == (14000, 0, 0), budget_id
    assert "overrun" not in entries(store, EntryKind.COMMIT)[0].detail
    headroom = engine.authorize("t1", chat("110.01"))
    assert [r.budget for r in headroom.reasons] == [AGENT_DAY]  # 250 - 140 = 110 left, not a cent more
    allowed(engine.authorize("t1", chat("110")))
    assert_consistent(engine)


def test_commit_beyond_headroom_records_overrun_and_later_authorizations_are_denied(
    engine: Engine, store: Store
) -> None:
    rid = allowed(engine.authorize("t1", crm("100")))

    result = engine.commit("t1", rid, {"usd": "300"})

    # bot-7's day allows 250: 50 over. The hour budget (600) and the months have room.
    assert result.committed == {"usd": 30000}
    assert result.overrun == {"usd": 5000}
    assert counter(store, AGENT_DAY) == (30000, 0, 5000)
    assert counter(store, CRM_HOUR) == (30000, 0, 0)
    (commit,) = entries(store, EntryKind.COMMIT)
    assert commit.detail["overrun"] == {"usd": 5000}
    assert {p.budget_id: p.overrun for p in commit.postings if p.used} == {
        AGENT_DAY: 5000,
        CRM_HOUR: 0,
        SALES_MONTH: 0,
        ROOT_MONTH: 0,
    }

    later = engine.authorize("t1", chat("0.01"))
    assert later.outcome is Outcome.DENY
    assert [(r.code, r.budget) for r in later.reasons] == [(ReasonCode.BUDGET_EXHAUSTED, AGENT_DAY)]
    assert {b.budget: b.remaining for b in later.budgets}[AGENT_DAY] == 0
    assert later.retry_after_seconds == (NY_MIDNIGHT_US - START_US) // US
    assert_consistent(engine)


def test_commit_with_no_amounts_commits_what_was_held(engine: Engine, store: Store) -> None:
    rid = allowed(engine.authorize("t1", crm("42.50", accounts=("acct:1", "acct:2"))))

    result = engine.commit("t1", rid)

    assert result.committed == {"usd": 4250, "accounts": 2}
    assert result.released == {"usd": 0}
    assert result.overrun == {}
    assert counter(store, AGENT_DAY) == (4250, 0, 0)
    assert counter(store, ACCOUNTS_DAY) == (2, 0, 0)
    assert_consistent(engine)


def test_commit_of_a_meter_that_was_not_held_is_refused_and_changes_nothing(engine: Engine, store: Store) -> None:
    rid = allowed(engine.authorize("t1", chat("10")))
    before = snapshot(store)

    with pytest.raises(InvalidRequest) as caught:
        engine.commit("t1", rid, {"usd": "5", "tokens": "100"})

    assert caught.value.code == "meter_not_held"
    assert caught.value.field == "amounts.tokens"
    assert snapshot(store) == before
    # The reservation is still live and commits normally.
    assert engine.commit("t1", rid, {"usd": "5"}).committed == {"usd": 500}
    assert_consistent(engine)


# == exactly once ===============================================================================


def test_a_second_commit_is_a_conflict_and_changes_nothing(engine: Engine, store: Store) -> None:
    rid = allowed(engine.authorize("t1", chat("10")))
    engine.commit("t1", rid, {"usd": "8"})
    before = snapshot(store)

    with pytest.raises(Conflict) as caught:
        engine.commit("t1", rid, {"usd": "8"})

    assert caught.value.code == "already_committed"
    assert snapshot(store) == before
    assert_consistent(engine)


def test_commit_after_release_and_release_after_commit_are_conflicts(engine: Engine, store: Store) -> None:
    released = allowed(engine.authorize("t1", chat("10")))
    committed = allowed(engine.authorize("t1", chat("20")))
    assert engine.release("t1", released).released == {"usd": 1000}
    engine.commit("t1", committed)
    before = snapshot(store)

    with pytest.raises(Conflict) as after_release:
        engine.commit("t1", released)
    with pytest.raises(Conflict) as release_twice:
        engine.release("t1", released)
    with pytest.raises(Conflict) as after_commit:
        engine.release("t1", committed)
    with pytest.raises(Conflict) as extend_committed:
        engine.extend("t1", committed, 60)

    assert after_release.value.code == "already_released"
    assert release_twice.value.code == "already_released"
    assert after_commit.value.code == "already_committed"
    assert extend_committed.value.code == "already_committed"
    assert snapshot(store) == before
    assert counter(store, AGENT_DAY) == (2000, 0, 0)
    assert_consistent(engine)


def test_a_retried_commit_with_the_same_key_returns_the_first_result(engine: Engine, store: Store) -> None:
    rid = allowed(engine.authorize("t1", crm("100")))
    first = engine.commit("t1", rid, {"usd": "300"}, idempotency_key="c-1")
    before = snapshot(store)

    again = engine.commit("t1", rid, {"usd": "300"}, idempotency_key="c-1")
    # The same key with other amounts is not a retry: a conflict, and it counts nothing.
    with pytest.raises(Conflict) as different:
        engine.commit("t1", rid, {"usd": "1"}, idempotency_key="c-1")

    assert again == first
    assert different.value.code == "idempotency_mismatch"
    assert first.overrun == {"usd": 5000}
    assert snapshot(store) == before
    with pytest.raises(Conflict) as other_key:
        engine.commit("t1", rid, {"usd": "300"}, idempotency_key="c-2")
    assert other_key.value.code == "already_committed"
    assert len(entries(store, EntryKind.COMMIT)) == 1
    assert_consistent(engine)


def test_a_retried_release_with_the_same_key_returns_the_first_result(engine: Engine, store: Store) -> None:
    rid = allowed(engine.authorize("t1", chat("10")))
    first = engine.release("t1", rid, idempotency_key="r-1")
    before = snapshot(store)

    assert engine.release("t1", rid, idempotency_key="r-1") == first
    with pytest.raises(Conflict) as commit_with_release_key:
        engine.commit("t1", rid, idempotency_key="r-1")
    # The key named a release; a commit under it is a different request.
    assert commit_with_release_key.value.code == "idempotency_mismatch"
    assert snapshot(store) == before
    assert_consistent(engine)


def test_an_unknown_reservation_is_not_found(engine: Engine, store: Store) -> None:
    allowed(engine.authorize("t1", chat("10")))
    before = snapshot(store)

    with pytest.raises(NotFound):
        engine.commit("t1", "res_000000000000000000000000")
    with pytest.raises(NotFound):
        engine.release("t1", "res_000000000000000000000000")
    with pytest.raises(NotFound):
        engine.extend("t1", "res_000000000000000000000000", 60)

    assert snapshot(store) == before
    assert_consistent(engine)


# == leases =====================================================================================


def test_an_expired_lease_is_voided_by_expire_holds(engine: Engine, store: Store, clock: FakeClock) -> None:
    rid = allowed(engine.authorize("t1", crm("100", lease_seconds=30)))
    clock.advance(29)
    assert engine.expire_holds() == 0
    assert counter(store, AGENT_DAY) == (0, 10000, 0)

    clock.advance(1)
    assert engine.expire_holds() == 1

    for budget_id in USD_CRM_PATH:
        assert counter(store, budget_id) == (0, 0, 0), budget_id
    (expire,) = entries(store, EntryKind.EXPIRE)
    assert expire.reservation_id == rid
    assert {p.budget_id: p.held for p in expire.postings} == dict.fromkeys(USD_CRM_PATH, -10000)
    assert engine.expire_holds() == 0
    before = snapshot(store)
    with pytest.raises(Conflict) as caught:
        engine.release("t1", rid)
    assert caught.value.code == "expired"
    with pytest.raises(Conflict) as extend_expired:
        engine.extend("t1", rid, 60)
    assert extend_expired.value.code == "expired"
    assert snapshot(store) == before
    # The headroom came back.
    allowed(engine.authorize("t1", chat("250")))
    assert_consistent(engine)


def test_an_abandoned_hold_stops_blocking_at_its_deadline_without_a_sweep(
    engine: Engine, store: Store, clock: FakeClock
) -> None:
    """The first batch after the deadline expires the hold: room comes back on time, not at the next sweep."""
    rid = allowed(engine.authorize("t1", chat("250", lease_seconds=30)))  # the agent's whole day
    clock.advance(29)
    denied = engine.authorize("t1", chat("10"))
    assert denied.outcome is Outcome.DENY
    assert denied.retry_after_seconds == 1  # only a live hold stands in the way
    clock.advance(1)
    allowed(engine.authorize("t1", chat("250")))
    (expire,) = entries(store, EntryKind.EXPIRE)
    assert expire.reservation_id == rid
    with pytest.raises(Conflict) as caught:
        engine.release("t1", rid)
    assert caught.value.code == "expired"
    assert_consistent(engine)


def test_a_lease_shortened_by_extend_runs_out_at_its_new_deadline_without_a_sweep(
    engine: Engine, store: Store, clock: FakeClock
) -> None:
    """Each tenant keeps a bound on its holds' deadlines and batches look for overdue holds only
    once it is reached: a shortened lease must move the bound back."""
    rid = allowed(engine.authorize("t1", chat("250", lease_seconds=300)))  # the agent's whole day
    clock.advance(10)
    assert engine.extend("t1", rid, 5).lease_expires_at_us == clock.now_us + 5 * US
    assert_runs_out_in_a_batch(engine, store, clock, rid, seconds_left=5)


def test_a_hold_made_by_another_process_runs_out_on_time_in_this_ones_batches(
    engine: Engine, store: Store, clock: FakeClock
) -> None:
    other = Engine(store, clock=clock)  # its own memory of the tenant, as another server process
    allowed(engine.authorize("t1", chat("1", agent="bot-8", lease_seconds=600)))  # a later deadline
    allowed(other.authorize("t1", chat("1", agent="bot-8", lease_seconds=600)))
    rid = allowed(other.authorize("t1", chat("250", lease_seconds=30)))
    assert_runs_out_in_a_batch(engine, store, clock, rid, seconds_left=30)


def assert_runs_out_in_a_batch(engine: Engine, store: Store, clock: FakeClock, rid: str, *, seconds_left: int) -> None:
    """Hold `rid`, the whole of bot-7's day, still denies a second before its deadline and is
    expired by the first ordinary batch at it (no sweep), making room."""
    clock.advance(seconds_left - 1)
    assert engine.authorize("t1", chat("10")).outcome is Outcome.DENY
    clock.advance(1)
    allowed(engine.authorize("t1", chat("250")))
    (expire,) = entries(store, EntryKind.EXPIRE)
    assert expire.reservation_id == rid
    assert_consistent(engine)


def test_more_overdue_holds_than_one_batch_expires_are_expired_by_the_next_batches(
    engine: Engine, store: Store, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batch_module, "EXPIRY_BATCH_SIZE_MAX", 3)
    held = [allowed(engine.authorize("t1", chat("10", lease_seconds=30))) for _ in range(7)]
    clock.advance(30)
    for expected in (3, 6, 7):
        allowed(engine.authorize("t1", chat("1", agent="bot-8")))  # ordinary batches, no sweep
        assert len(entries(store, EntryKind.EXPIRE)) == expected
    assert {entry.reservation_id for entry in entries(store, EntryKind.EXPIRE)} == set(held)
    assert engine.expire_holds() == 0
    assert_consistent(engine)


def test_each_tenant_of_a_batch_keeps_its_own_bound_on_hold_deadlines(
    engine: Engine, store: Store, clock: FakeClock
) -> None:
    engine.create_tenant("t2")
    engine.apply_config("t2", config())
    other = ActionInput(agent="a1", action="x", amounts={"usd": "1"}, lease_seconds=60)
    first, second = engine.execute(
        [engine.authorize_operation("t1", chat("10", lease_seconds=30)), engine.authorize_operation("t2", other)]
    )
    assert isinstance(first, Decision) and isinstance(second, Decision)
    clock.advance(30)  # t1's hold is due, t2's is not
    engine.execute([engine.authorize_operation("t1", chat("1")), engine.authorize_operation("t2", other)])
    assert [entry.reservation_id for entry in entries(store, EntryKind.EXPIRE)] == [first.reservation_id]
    with store.transaction() as tx:
        assert not [entry for entry in tx.ledger_entries("t2") if entry.kind is EntryKind.EXPIRE]
    clock.advance(30)  # now t2's is due too
    engine.execute([engine.authorize_operation("t2", other)])
    with store.transaction() as tx:
        (expire,) = [entry for entry in tx.ledger_entries("t2") if entry.kind is EntryKind.EXPIRE]
    assert expire.reservation_id == second.reservation_id
    assert_consistent(engine)
    assert_consistent(engine, "t2")


def test_release_of_an_overdue_hold_is_expired_even_before_the_sweeper_runs(
    engine: Engine, store: Store, clock: FakeClock
) -> None:
    rid = allowed(engine.authorize("t1", chat("100", lease_seconds=30)))
    clock.advance(31)

    with pytest.raises(Conflict) as caught:
        engine.release("t1", rid)

    assert caught.value.code == "expired"
    assert counter(store, AGENT_DAY) == (0, 0, 0)
    assert len(entries(store, EntryKind.EXPIRE)) == 1
    assert engine.expire_holds() == 0
    assert_consistent(engine)


def test_extend_moves_the_deadline_and_the_hold_survives_the_old_one(
    engine: Engine, store: Store, clock: FakeClock
) -> None:
    rid = allowed(engine.authorize("t1", chat("100", lease_seconds=30)))
    clock.advance(20)

    extended = engine.extend("t1", rid, 60)

    assert extended.status == "held"
    assert extended.lease_expires_at_us == clock.now_us + 60 * US
    clock.advance(30)  # 50 s after authorize: past the old deadline, inside the new one
    assert engine.expire_holds() == 0
    assert counter(store, AGENT_DAY) == (0, 10000, 0)
    (extend,) = entries(store, EntryKind.EXTEND)
    assert extend.detail["lease_expires_at_us"] == extended.lease_expires_at_us
    clock.advance(30)  # now exactly at the new deadline
    assert engine.expire_holds() == 1
    assert counter(store, AGENT_DAY) == (0, 0, 0)
    assert_consistent(engine)


def test_commit_after_expiry_is_a_late_commit_counted_now(engine: Engine, store: Store, clock: FakeClock) -> None:
    rid = allowed(engine.authorize("t1", chat("100", lease_seconds=30)))
    clock.advance(31)

    # No sweeper has run: the commit finds the hold overdue, expires it, then counts it late.
    result = engine.commit("t1", rid, {"usd": "80"})

    assert result.is_late is True
    assert (result.committed, result.released, result.overrun) == ({"usd": 8000}, {}, {})
    assert counter(store, AGENT_DAY) == (8000, 0, 0)
    assert [e.kind for e in entries(store) if e.reservation_id == rid] == [
        EntryKind.HOLD,
        EntryKind.EXPIRE,
        EntryKind.LATE_COMMIT,
    ]
    (late,) = entries(store, EntryKind.LATE_COMMIT)
    assert late.reservation_id == rid
    assert late.detail["late"] is True
    assert "overrun" not in late.detail
    with pytest.raises(Conflict) as caught:
        engine.commit("t1", rid)
    assert caught.value.code == "already_committed"
    assert_consistent(engine)


def test_a_late_commit_without_headroom_is_overrun(engine: Engine, store: Store, clock: FakeClock) -> None:
    late_rid = allowed(engine.authorize("t1", chat("100", lease_seconds=30)))
    clock.advance(31)
    assert engine.expire_holds() == 1
    engine.commit("t1", allowed(engine.authorize("t1", chat("200"))))  # the room went to other work

    result = engine.commit("t1", late_rid)

    assert result.is_late is True
    assert result.committed == {"usd": 10000}
    assert result.overrun == {"usd": 5000}
    assert counter(store, AGENT_DAY) == (30000, 0, 5000)
    assert [e.kind for e in entries(store) if e.reservation_id == late_rid] == [
        EntryKind.HOLD,
        EntryKind.EXPIRE,
        EntryKind.LATE_COMMIT,
    ]
    assert entries(store, EntryKind.LATE_COMMIT)[0].detail["overrun"] == {"usd": 5000}
    assert engine.authorize("t1", chat("1")).outcome is Outcome.DENY
    assert_consistent(engine)


def test_a_late_commit_posts_into_the_window_current_at_commit_time(
    engine: Engine, store: Store, clock: FakeClock
) -> None:
    rid = allowed(engine.authorize("t1", chat("100", lease_seconds=60)))
    clock.now_us = NY_MIDNIGHT_US + 10 * US
    assert engine.expire_holds() == 1

    engine.commit("t1", rid)

    with store.transaction() as tx:
        agent_day = tx.all_counters("t1")[(AGENT_DAY, "")]
    assert (agent_day.window_start, agent_day.used) == (NY_MIDNIGHT_US, 10000)
    (late,) = entries(store, EntryKind.LATE_COMMIT)
    assert {p.budget_id: p.window_start for p in late.postings}[AGENT_DAY] == NY_MIDNIGHT_US
    assert_consistent(engine)


# == post-hoc usage =============================================================================


def test_reported_usage_counts_without_a_hold(engine: Engine, store: Store) -> None:
    result = engine.report_usage("t1", crm("100", accounts=("acct:1",)))

    assert result.overrun == {}
    assert [b.budget for b in result.budgets] == CRM_PATH
    assert {b.budget: b.used for b in result.budgets}[AGENT_DAY] == 10000
    assert counter(store, AGENT_DAY) == (10000, 0, 0)
    assert counter(store, ACCOUNTS_DAY) == (1, 0, 0)
    (usage,) = entries(store, EntryKind.USAGE)
    assert usage.reservation_id is None
    assert "overrun" not in usage.detail
    assert_consistent(engine)


def test_reported_usage_may_exceed_the_limit_and_is_flagged(engine: Engine, store: Store) -> None:
    engine.commit("t1", allowed(engine.authorize("t1", chat("200"))))

    result = engine.report_usage("t1", chat("120"))

    assert result.overrun == {"usd": 7000}
    assert {b.budget: b.used for b in result.budgets}[AGENT_DAY] == 32000
    assert counter(store, AGENT_DAY) == (32000, 0, 7000)
    assert counter(store, SALES_MONTH) == (32000, 0, 0)
    (usage,) = entries(store, EntryKind.USAGE)
    assert usage.detail["overrun"] == {"usd": 7000}
    assert {p.budget_id: p.overrun for p in usage.postings}[AGENT_DAY] == 7000
    later = engine.authorize("t1", chat("1"))
    assert later.outcome is Outcome.DENY
    assert [r.budget for r in later.reasons] == [AGENT_DAY]
    assert_consistent(engine)


# == shadow budgets =============================================================================


def test_a_shadow_budget_records_its_denial_and_allows(engine: Engine, store: Store) -> None:
    request = ActionInput(agent="helper-1", action="llm.chat", amounts={"usd": "40"})
    engine.commit("t1", allowed(engine.authorize("t1", request)))

    decision = engine.authorize("t1", ActionInput(agent="helper-1", action="llm.chat", amounts={"usd": "20"}))

    rid = allowed(decision)
    assert [(r.code, r.budget) for r in decision.reasons] == [(ReasonCode.SHADOW_DENY, SHADOW_DAY)]
    shadow = {b.budget: b for b in decision.budgets}[SHADOW_DAY]
    assert shadow.is_shadow is True
    assert (shadow.used, shadow.held) == (4000, 2000)
    assert counter(store, SHADOW_DAY) == (4000, 2000, 0)
    hold = next(e for e in entries(store, EntryKind.HOLD) if e.reservation_id == rid)
    assert hold.detail["shadow_denials"] == [SHADOW_DAY]
    # Committed past the shadow limit: counted as overrun, nothing stops it.
    assert engine.commit("t1", rid).overrun == {"usd": 1000}
    assert counter(store, SHADOW_DAY) == (6000, 0, 1000)
    assert_consistent(engine)


def test_a_shadow_denial_does_not_mask_an_enforced_one(engine: Engine, store: Store) -> None:
    before = snapshot(store)

    decision = engine.authorize("t1", ActionInput(agent="helper-1", action="llm.chat", amounts={"usd": "20001"}))

    assert decision.outcome is Outcome.DENY
    assert [(r.code, r.budget) for r in decision.reasons] == [
        (ReasonCode.EXCEEDS_LIMIT, ROOT_MONTH),
        (ReasonCode.SHADOW_DENY, SHADOW_DAY),
    ]
    assert snapshot(store) == before
    assert_consistent(engine)
