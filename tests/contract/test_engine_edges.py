"""Edges a review found, each pinned on both stores: clocks that disagree, configs that change
under live counters, bad input that must not fail a whole batch, and costs that must not grow.

Two engines on one store stand for two processes; each test drives the real engine and reads
the store back.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from conftest import FakeClock, allowed, assert_consistent, config
from remit.batching import AsyncBatcher
from remit.domain.decisions import Outcome
from remit.engine import ActionInput, Engine
from remit.errors import ConfigError, InvalidRequest
from remit.store.base import Store

HOUR_CAP = {"scopes": {"ops": {"budgets": [{"meter": "usd", "limit": "100", "window": "hour"}]}}}


def spend(usd: str, agent: str = "a1", **extra: Any) -> ActionInput:
    return ActionInput(agent=agent, action="ops.run", amounts={"usd": usd}, **extra)


def used(store: Store, budget_id: str) -> int:
    with store.transaction() as tx:
        return tx.all_counters("t1")[(budget_id, "")].used


@pytest.fixture
def tenant(store: Store, clock: FakeClock) -> Engine:
    engine = Engine(store, clock=clock)
    engine.create_tenant("t1")
    engine.apply_config("t1", config(**HOUR_CAP))
    return engine


def test_a_process_whose_clock_is_behind_never_reopens_an_earlier_window(store: Store, tenant: Engine) -> None:
    """Across an hour boundary, a lagging process posts into the later hour; it cannot wipe it."""
    ahead_clock = FakeClock(tenant.clock() + 3600 * 1_000_000)  # one hour later than `tenant`
    ahead = Engine(store, clock=ahead_clock)
    tenant.commit("t1", allowed(tenant.authorize("t1", spend("100"))))  # hour 0 is full
    ahead.commit("t1", allowed(ahead.authorize("t1", spend("100"))))  # hour 1 is full
    # The lagging engine still believes it is hour 0, but hour 1 is the window the counter is in.
    late = tenant.authorize("t1", spend("1"))
    assert late.outcome is Outcome.DENY
    again = ahead.authorize("t1", spend("1"))
    assert again.outcome is Outcome.DENY
    assert used(store, "ops:usd:hour") == 10000
    assert_consistent(tenant)


def test_a_meter_scale_cannot_change_under_its_counters(tenant: Engine) -> None:
    tenant.commit("t1", allowed(tenant.authorize("t1", spend("100"))))
    document = config(**HOUR_CAP)
    document["meters"]["usd"] = {"kind": "sum", "scale": 6}
    with pytest.raises(ConfigError) as caught:
        tenant.apply_config("t1", document)
    assert caught.value.errors[0]["path"] == "meters.usd"
    assert "scale" in caught.value.errors[0]["message"]
    # The old config is still in force: the hour is still full in dollars.
    assert tenant.authorize("t1", spend("99.99")).outcome is Outcome.DENY
    assert_consistent(tenant)


def test_a_budget_id_cannot_move_to_another_meter_or_window(tenant: Engine) -> None:
    document = config(scopes={"ops": {"budgets": [{"meter": "usd", "limit": "100", "window": "hour", "id": "cap"}]}})
    tenant.apply_config("t1", document)
    moved = config(scopes={"ops": {"budgets": [{"meter": "usd", "limit": "100", "window": "day", "id": "cap"}]}})
    with pytest.raises(ConfigError) as caught:
        tenant.apply_config("t1", moved)
    assert caught.value.errors[0]["path"] == "budget cap"


def test_the_time_zone_cannot_move_while_budgets_have_usage(store: Store, clock: FakeClock) -> None:
    engine = Engine(store, clock=clock)
    engine.create_tenant("t1", timezone="America/New_York")
    day_cap = {"scopes": {"ops": {"budgets": [{"meter": "usd", "limit": "100", "window": "day"}]}}}
    document = config(**day_cap)
    del document["tenant"]["timezone"]  # left out: the tenant keeps the zone it was created with
    applied = engine.apply_config("t1", document)
    assert applied.timezone.key == "America/New_York"
    engine.commit("t1", allowed(engine.authorize("t1", spend("100"))))
    with pytest.raises(ConfigError) as caught:
        engine.apply_config("t1", {**document, "tenant": {"timezone": "Asia/Tokyo"}})
    assert caught.value.errors[0]["path"] == "tenant.timezone"
    assert engine.authorize("t1", spend("100")).outcome is Outcome.DENY
    assert_consistent(engine)


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda e, rid: e.commit(None, rid), "tenant"),
        (lambda e, rid: e.release(42, rid), "tenant"),
        (lambda e, rid: e.extend(["t1"], rid, 60), "tenant"),
        (lambda e, rid: e.commit("t1", rid, outcome=object()), "outcome"),
        (lambda e, rid: e.commit("t1", rid, outcome="x" * 10_000), "outcome"),
    ],
)
def test_bad_tenant_or_outcome_is_refused_before_any_batch(tenant: Engine, call: Any, field: str) -> None:
    rid = allowed(tenant.authorize("t1", spend("10")))
    with pytest.raises(InvalidRequest) as caught:
        call(tenant, rid)
    assert caught.value.field == field
    # The hold is untouched and still resolves normally.
    assert tenant.commit("t1", rid).committed == {"usd": 1000}
    assert_consistent(tenant)


@pytest.mark.parametrize("amount", ["9E+999999", pytest.param(10**5000, id="int-5000-digits"), "1E-9999999", "1e31"])
def test_extreme_amounts_are_clear_errors(tenant: Engine, amount: Any) -> None:
    with pytest.raises(InvalidRequest) as caught:
        tenant.authorize("t1", spend(amount))
    assert caught.value.code in {"invalid_amount", "amount_too_large"}
    assert caught.value.field == "amounts.usd"


def test_a_config_that_is_not_a_mapping_is_a_config_error(tenant: Engine) -> None:
    with pytest.raises(ConfigError):
        tenant.apply_config("t1", ["x"])  # type: ignore[arg-type]


def test_an_agent_added_by_another_process_is_seen_at_once(store: Store, tenant: Engine, clock: FakeClock) -> None:
    other = Engine(store, clock=clock)
    assert other.tenant_config("t1").agents.keys() == {"a1", "a2"}
    document = config(**HOUR_CAP)
    document["agents"]["a3"] = {"scope": "ops"}
    tenant.apply_config("t1", document)
    allowed(other.authorize("t1", spend("1", agent="a3")))
    # And one removed by another process is refused by the batch, even if parsed before.
    operation = other.authorize_operation("t1", spend("1", agent="a3"))
    tenant.apply_config("t1", config(**HOUR_CAP))
    (result,) = other.execute([operation])
    assert isinstance(result, InvalidRequest)
    assert result.code == "unknown_agent"
    assert_consistent(tenant)


def test_a_refused_keyed_request_leaves_its_key_free(store: Store, clock: FakeClock) -> None:
    engine = Engine(store, clock=clock)
    engine.create_tenant("t1")
    per_task = {"scopes": {"ops": {"budgets": [{"meter": "usd", "limit": "5", "window": "total", "per": "task"}]}}}
    engine.apply_config("t1", config(**per_task))
    with pytest.raises(InvalidRequest) as caught:
        engine.authorize("t1", spend("10", idempotency_key="k-1"))
    assert caught.value.code == "task_required"
    first = engine.authorize("t1", spend("1", idempotency_key="k-1", task="t-9"))
    again = engine.authorize("t1", spend("1", idempotency_key="k-1", task="t-9"))
    assert again.reservation_id == allowed(first)
    assert_consistent(engine)


def test_rolling_windows_keep_only_their_own_buckets_however_long_they_run(store: Store, clock: FakeClock) -> None:
    """The rolling state stays bounded by the window (O(1) per decision), not by history."""
    engine = Engine(store, clock=clock)
    engine.create_tenant("t1")
    rolling = {"scopes": {"ops": {"budgets": [{"meter": "usd", "limit": "1000000", "window": "rolling:60s"}]}}}
    engine.apply_config("t1", config(**rolling))
    for _ in range(600):
        engine.commit("t1", allowed(engine.authorize("t1", spend("1"))))
        clock.advance(1)
    counter = engine._states["t1"].counters[("ops:usd:rolling:1m", "")]
    assert 0 < len(counter.buckets) <= 60
    assert min(counter.buckets) >= clock.now_us - 60 * 1_000_000
    with store.transaction() as tx:
        stored = tx.all_counters("t1")[("ops:usd:rolling:1m", "")]
    assert len(stored.buckets) <= 60
    assert_consistent(engine)


def test_a_cancelled_async_caller_does_not_leak_its_hold(store: Store, tenant: Engine) -> None:
    """An allow whose caller was cancelled mid-batch is released, not left to block room (DESIGN §5)."""

    async def scenario() -> None:
        batcher = AsyncBatcher(tenant)
        try:
            waiting = asyncio.create_task(batcher.authorize("t1", spend("100")))
            await asyncio.sleep(0)  # submitted; the batch is now running in the worker thread
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            await batcher.drain()
            decision = await batcher.authorize("t1", spend("100"))  # the whole hour is free again
            assert decision.outcome is Outcome.ALLOW
        finally:
            batcher.close()

    asyncio.run(scenario())
    with store.transaction() as tx:
        kinds = [entry.kind.value for entry in tx.ledger_entries("t1")]
    assert kinds[-3:] == ["hold", "release", "hold"]
    assert_consistent(tenant)


def test_a_commit_over_the_per_action_maximum_is_flagged_in_the_ledger(store: Store, clock: FakeClock) -> None:
    engine = Engine(store, clock=clock)
    engine.create_tenant("t1")
    budget = {"meter": "usd", "limit": "100", "window": "day", "per_action_max": "5"}
    capped = {"scopes": {"ops": {"budgets": [budget]}}}
    engine.apply_config("t1", config(**capped))
    engine.commit("t1", allowed(engine.authorize("t1", spend("5"))), {"usd": "20"})
    engine.commit("t1", allowed(engine.authorize("t1", spend("5"))), {"usd": "4"})
    with store.transaction() as tx:
        commits = [entry for entry in tx.ledger_entries("t1") if entry.kind.value == "commit"]
    assert commits[0].detail["over_per_action_max"] == ["ops:usd:day"]
    assert "over_per_action_max" not in commits[1].detail
    assert_consistent(engine)


def test_a_cancelled_keyed_caller_keeps_its_hold_for_the_retry(store: Store, tenant: Engine) -> None:
    """With an idempotency key the retry gets the same hold back, so cancelling must not release it."""

    async def scenario() -> str:
        batcher = AsyncBatcher(tenant)
        try:
            waiting = asyncio.create_task(batcher.authorize("t1", spend("10", idempotency_key="k-9")))
            await asyncio.sleep(0)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            await batcher.drain()
            retried = await batcher.authorize("t1", spend("10", idempotency_key="k-9"))
            return allowed(retried)
        finally:
            batcher.close()

    rid = asyncio.run(scenario())
    assert tenant.commit("t1", rid).committed == {"usd": 1000}
    assert_consistent(tenant)


def test_removing_then_re_adding_cannot_change_what_counters_mean(tenant: Engine) -> None:
    """A meter or budget id that comes back must mean what it meant: counters outlive configs."""
    document = config(scopes={"ops": {"budgets": [{"meter": "usd", "limit": "100", "window": "month", "id": "cap"}]}})
    tenant.apply_config("t1", document)
    tenant.commit("t1", allowed(tenant.authorize("t1", spend("100"))))
    without = config(scopes={"ops": {}})
    del without["meters"]["usd"]
    tenant.apply_config("t1", without)
    readded = config(scopes={"ops": {"budgets": [{"meter": "usd", "limit": "100", "window": "month", "id": "cap"}]}})
    readded["meters"]["usd"] = {"kind": "sum", "scale": 6}
    with pytest.raises(ConfigError) as caught:
        tenant.apply_config("t1", readded)
    assert caught.value.errors[0]["path"] == "meters.usd"
    moved = config(scopes={"ops": {"budgets": [{"meter": "usd", "limit": "100", "window": "day", "id": "cap"}]}})
    with pytest.raises(ConfigError) as moved_caught:
        tenant.apply_config("t1", moved)
    assert moved_caught.value.errors[0]["path"] == "budget cap"
    # Re-added exactly as it was, the budget finds its usage again.
    tenant.apply_config("t1", document)
    assert tenant.authorize("t1", spend("1")).outcome is Outcome.DENY
    assert_consistent(tenant)
