"""Config changes, request validation and batches, on every store.

Config: applying is idempotent and keeps usage across limit changes; an invalid document
changes nothing (the previous config stays in force, also for a fresh engine on the same
store). Validation: a bad request raises InvalidRequest naming its field, with the ledger and
every counter compared before and after. Batches: `execute` decides operations from several
agents in arrival order inside one transaction, and one bad operation does not sink the others.
"""

from __future__ import annotations

from typing import Any

import pytest

from conftest import EXAMPLE_CONFIG, FakeClock, assert_consistent, config
from remit.config import load_file
from remit.domain.decisions import Decision, Outcome, ReasonCode
from remit.engine import ActionInput, Engine
from remit.errors import ConfigError, InvalidRequest, NotFound
from remit.results import CommitResult, ReleaseResult
from remit.store.base import Store

AGENT_DAY = "sales/renewals/agent:bot-7:usd:day"
OPS_DAY = "ops:usd:day"


def chat(usd: str, *, agent: str = "bot-7", **extra: Any) -> ActionInput:
    return ActionInput(agent=agent, action="llm.chat", amounts={"usd": usd}, **extra)


def snapshot(store: Store, tenant: str = "t1") -> tuple[list[Any], dict[Any, Any]]:
    """The ledger and every counter's amounts (window_start aside: see test_engine_holds)."""
    with store.transaction() as tx:
        entries = [(e.id, e.kind, e.reservation_id, e.postings, e.detail) for e in tx.ledger_entries(tenant)]
        counters = {key: (c.used, c.held, c.overrun, dict(c.buckets)) for key, c in tx.all_counters(tenant).items()}
    return entries, counters


def counter(store: Store, budget_id: str, tenant: str = "t1") -> tuple[int, int, int]:
    with store.transaction() as tx:
        found = tx.all_counters(tenant).get((budget_id, ""))
    return (0, 0, 0) if found is None else (found.used, found.held, found.overrun)


def allowed(decision: Any) -> str:
    assert isinstance(decision, Decision)
    assert decision.outcome is Outcome.ALLOW, decision.reasons
    assert decision.reservation_id is not None
    return decision.reservation_id


def with_agent_day_limit(limit: str) -> dict[str, Any]:
    document = load_file(EXAMPLE_CONFIG)
    document["agents"]["bot-7"]["budgets"][0]["limit"] = limit
    return document


# == applying config ============================================================================


def test_applying_the_same_config_twice_keeps_counters_and_usage(engine: Engine, store: Store) -> None:
    engine.commit("t1", allowed(engine.authorize("t1", chat("100"))))
    rid = allowed(engine.authorize("t1", chat("50")))
    before_entries, before_counters = snapshot(store)

    version = engine.tenant_config("t1").version
    engine.apply_config("t1", load_file(EXAMPLE_CONFIG))

    after_entries, after_counters = snapshot(store)
    assert after_counters == before_counters
    # An unchanged config is not applied again: no new version, no ledger entry.
    assert after_entries == before_entries
    assert engine.tenant_config("t1").version == version
    assert [b.id for b in engine.tenant_config("t1").budgets] == [
        "/:usd:month",
        "sales:usd:month",
        "sales/renewals:accounts:day",
        "sales/renewals:usd:hour:crm.*",
        "sales/renewals:sends:rolling:1h:email.*",
        "support:tokens:day",
        "support:usd:day",
        "support:tokens:total:per-task",
        AGENT_DAY,
    ]
    denied = engine.authorize("t1", chat("100.01"))  # 250 - 100 used - 50 held
    assert [r.budget for r in denied.reasons] == [AGENT_DAY]
    engine.commit("t1", rid)
    assert counter(store, AGENT_DAY) == (15000, 0, 0)
    assert_consistent(engine)


def test_raising_a_limit_keeps_what_was_used(engine: Engine, store: Store) -> None:
    engine.commit("t1", allowed(engine.authorize("t1", chat("250"))))
    assert engine.authorize("t1", chat("1")).outcome is Outcome.DENY

    engine.apply_config("t1", with_agent_day_limit("300"))

    decision = engine.authorize("t1", chat("50"))
    allowed(decision)
    day = {b.budget: b for b in decision.budgets}[AGENT_DAY]
    assert (day.limit, day.used, day.held, day.remaining) == (30000, 25000, 5000, 0)
    assert engine.authorize("t1", chat("0.01")).outcome is Outcome.DENY
    assert_consistent(engine)


def test_lowering_a_limit_keeps_what_was_used(engine: Engine, store: Store) -> None:
    engine.commit("t1", allowed(engine.authorize("t1", chat("150"))))

    engine.apply_config("t1", with_agent_day_limit("200"))

    denied = engine.authorize("t1", chat("50.01"))
    assert [r.budget for r in denied.reasons] == [AGENT_DAY]
    day = {b.budget: b for b in denied.budgets}[AGENT_DAY]
    assert (day.limit, day.used, day.remaining) == (20000, 15000, 5000)
    allowed(engine.authorize("t1", chat("50")))
    assert counter(store, AGENT_DAY) == (15000, 5000, 0)
    assert_consistent(engine)


def test_lowering_a_limit_below_what_was_used_denies_until_the_window_resets(
    engine: Engine, store: Store, clock: FakeClock
) -> None:
    engine.commit("t1", allowed(engine.authorize("t1", chat("150"))))

    engine.apply_config("t1", with_agent_day_limit("100"))

    denied = engine.authorize("t1", chat("1"))
    assert [(r.code, r.budget) for r in denied.reasons] == [(ReasonCode.BUDGET_EXHAUSTED, AGENT_DAY)]
    day = {b.budget: b for b in denied.budgets}[AGENT_DAY]
    assert (day.limit, day.used, day.remaining) == (10000, 15000, 0)
    assert counter(store, AGENT_DAY) == (15000, 0, 0)
    assert_consistent(engine)  # ledger and counters agree: the usage fit the limit in force when held
    clock.advance(6 * 3600)  # past New York midnight
    allowed(engine.authorize("t1", chat("100")))
    assert_consistent(engine)


def test_removing_a_budget_under_a_live_hold_releases_it_on_commit(engine: Engine, store: Store) -> None:
    rid = allowed(engine.authorize("t1", chat("100")))
    document = load_file(EXAMPLE_CONFIG)
    del document["agents"]["bot-7"]["budgets"]
    engine.apply_config("t1", document)

    result = engine.commit("t1", rid)

    assert result.committed == {"usd": 10000}
    assert counter(store, AGENT_DAY) == (0, 0, 0)
    assert counter(store, "sales:usd:month") == (10000, 0, 0)
    allowed(engine.authorize("t1", chat("1000")))  # no agent budget any more
    assert_consistent(engine)


@pytest.mark.parametrize(
    ("change", "path"),
    [
        (lambda d: d["scopes"]["sales"]["budgets"][0].update(meter="euros"), "scopes.sales.budgets[0].meter"),
        (lambda d: d["scopes"]["sales"]["budgets"][0].update(window="hourly"), "scopes.sales.budgets[0].window"),
        (lambda d: d["scopes"]["sales"]["budgets"][0].update(limit="lots"), "scopes.sales.budgets[0].limit"),
        (lambda d: d["scopes"]["sales"]["budgets"][0].update(limit="10.001"), "scopes.sales.budgets[0].limit"),
        (lambda d: d["scopes"]["sales"]["budgets"][0].update(limit="-5"), "scopes.sales.budgets[0].limit"),
        (lambda d: d["agents"]["bot-8"].update(scope="nowhere"), "agents.bot-8.scope"),
        (lambda d: d["tenant"].update(timezone="Mars/Olympus_Mons"), "tenant.timezone"),
        (lambda d: d["meters"]["usd"].update(colour="green"), "meters.usd.colour"),
    ],
    ids=[
        "unknown-meter",
        "bad-window",
        "non-numeric-limit",
        "too-precise-limit",
        "negative-limit",
        "unknown-scope",
        "bad-timezone",
        "unknown-field",
    ],
)
def test_an_invalid_config_is_refused_and_the_previous_one_stays_in_force(
    engine: Engine, store: Store, clock: FakeClock, change: Any, path: str
) -> None:
    engine.commit("t1", allowed(engine.authorize("t1", chat("200"))))
    version = engine.tenant_config("t1").version
    before = snapshot(store)
    document = load_file(EXAMPLE_CONFIG)
    change(document)

    with pytest.raises(ConfigError) as caught:
        engine.apply_config("t1", document)

    assert path in [error["path"] for error in caught.value.errors]
    assert caught.value.code == "invalid_config"
    assert snapshot(store) == before
    assert engine.tenant_config("t1").version == version
    for decider in (engine, Engine(store, clock=clock)):  # a fresh engine reads the stored config
        denied = decider.authorize("t1", chat("50.01"))
        assert [r.budget for r in denied.reasons] == [AGENT_DAY]
        assert decider.tenant_config("t1").version == version
    assert_consistent(engine)


# == validating requests ========================================================================


@pytest.mark.parametrize(
    ("request_", "code", "field"),
    [
        (chat("1", agent="ghost"), "unknown_agent", "agent"),
        (ActionInput(agent="bot-7", action="llm.chat", amounts={"euros": "1"}), "unknown_meter", "amounts.euros"),
        (
            ActionInput(agent="bot-7", action="llm.chat", touches={"planets": ["p:1"]}),
            "unknown_meter",
            "touches.planets",
        ),
        (chat("-1"), "invalid_amount", "amounts.usd"),
        (chat("-0.01"), "invalid_amount", "amounts.usd"),
        (chat("ten"), "invalid_amount", "amounts.usd"),
        (chat("NaN"), "invalid_amount", "amounts.usd"),
        (chat("Infinity"), "invalid_amount", "amounts.usd"),
        (chat(""), "invalid_amount", "amounts.usd"),
        (chat(1.5), "invalid_amount", "amounts.usd"),  # type: ignore[arg-type]  # floats are refused
        (chat("10000000000000000"), "amount_too_large", "amounts.usd"),
        (chat("1" * 41), "invalid_amount", "amounts.usd"),
        (ActionInput(agent="bot-7", action="crm.x", amounts={"accounts": "1"}), "invalid_field", "amounts.accounts"),
        (ActionInput(agent="bot-7", action="crm.x", touches={"usd": ["a"]}), "invalid_field", "touches.usd"),
        (
            ActionInput(agent="bot-7", action="crm.x", touches={"accounts": "acct:1"}),
            "invalid_field",
            "touches.accounts",
        ),
        (chat("1", lease_seconds=0), "invalid_field", "lease_seconds"),
        (chat("1", lease_seconds=86401), "invalid_field", "lease_seconds"),
        (chat("1", priority="urgent"), "invalid_field", "priority"),
        (chat("1", idempotency_key=""), "invalid_field", "idempotency_key"),
        (ActionInput(agent="bot-7", action="", amounts={"usd": "1"}), "invalid_field", "action"),
    ],
    ids=[
        "unknown-agent",
        "unknown-meter",
        "unknown-touch-meter",
        "negative",
        "negative-cent",
        "words",
        "nan",
        "infinity",
        "empty",
        "float",
        "too-large",
        "too-long",
        "distinct-in-amounts",
        "sum-in-touches",
        "touches-string",
        "lease-zero",
        "lease-too-long",
        "bad-priority",
        "empty-key",
        "empty-action",
    ],
)
def test_an_invalid_request_is_refused_with_its_field_and_holds_nothing(
    engine: Engine, store: Store, request_: ActionInput, code: str, field: str
) -> None:
    allowed(engine.authorize("t1", chat("10")))
    before = snapshot(store)

    with pytest.raises(InvalidRequest) as on_authorize:
        engine.authorize("t1", request_)
    with pytest.raises(InvalidRequest) as on_usage:
        engine.report_usage("t1", request_)

    for caught in (on_authorize, on_usage):
        assert (caught.value.code, caught.value.field) == (code, field)
        assert caught.value.to_dict()["details"] == {"field": field}
    assert snapshot(store) == before
    assert_consistent(engine)


@pytest.mark.parametrize(
    ("amounts", "code", "field"),
    [
        ({"usd": "-5"}, "invalid_amount", "amounts.usd"),
        ({"usd": "five"}, "invalid_amount", "amounts.usd"),
        ({"usd": "1e20"}, "amount_too_large", "amounts.usd"),
        ({"euros": "5"}, "unknown_meter", "amounts.euros"),
    ],
    ids=["negative", "words", "too-large", "unknown-meter"],
)
def test_an_invalid_commit_changes_nothing(
    engine: Engine, store: Store, amounts: dict[str, str], code: str, field: str
) -> None:
    rid = allowed(engine.authorize("t1", chat("10")))
    before = snapshot(store)

    with pytest.raises(InvalidRequest) as caught:
        engine.commit("t1", rid, amounts)

    assert (caught.value.code, caught.value.field) == (code, field)
    assert snapshot(store) == before
    assert engine.commit("t1", rid).committed == {"usd": 1000}
    assert_consistent(engine)


def test_amounts_round_up_to_the_meter_scale(engine: Engine, store: Store) -> None:
    tiny = engine.authorize("t1", chat("0.001"))
    assert {b.budget: b.requested for b in tiny.budgets}[AGENT_DAY] == 1

    # 249.991 rounds up to 250.00, which no longer fits beside the held cent.
    rest = engine.authorize("t1", chat("249.991"))

    assert rest.outcome is Outcome.DENY
    assert {b.budget: b.requested for b in rest.budgets}[AGENT_DAY] == 25000
    allowed(engine.authorize("t1", chat("249.99")))
    assert counter(store, AGENT_DAY) == (0, 25000, 0)
    assert_consistent(engine)


# == batches ====================================================================================


@pytest.fixture
def ops_engine(engine: Engine) -> Engine:
    """Tenant t1 re-configured: agents a1 and a2 share `ops`, 100 usd a day."""
    engine.apply_config("t1", config())
    return engine


def ops(engine: Engine, agent: str, usd: str, tenant: str = "t1") -> Any:
    return engine.authorize_operation(tenant, ActionInput(agent=agent, action="llm.chat", amounts={"usd": usd}))


def test_a_batch_decides_in_arrival_order(ops_engine: Engine, store: Store) -> None:
    engine = ops_engine
    earlier = allowed(engine.authorize("t1", ActionInput(agent="a2", action="llm.chat", amounts={"usd": "10"})))

    results = engine.execute(
        [
            ops(engine, "a1", "40"),
            ops(engine, "a2", "40"),
            ops(engine, "a1", "40"),  # 10 + 40 + 40 held: only 10 left
            engine.commit_operation("t1", earlier, {"usd": "5"}),  # gives 5 back
            ops(engine, "a2", "15"),  # fits only because the commit came first
        ]
    )

    first, second, third, commit, fifth = results
    allowed(first)
    allowed(second)
    assert isinstance(third, Decision)
    assert third.outcome is Outcome.DENY
    assert [r.budget for r in third.reasons] == [OPS_DAY]
    assert {b.budget: b.remaining for b in third.budgets}[OPS_DAY] == 1000
    assert isinstance(commit, CommitResult)
    assert commit.released == {"usd": 500}
    allowed(fifth)
    assert isinstance(fifth, Decision)
    assert {b.budget: (b.used, b.held, b.remaining) for b in fifth.budgets}[OPS_DAY] == (500, 9500, 0)
    assert counter(store, OPS_DAY) == (500, 9500, 0)
    assert_consistent(engine)


def test_one_bad_operation_does_not_sink_the_batch(ops_engine: Engine, store: Store) -> None:
    engine = ops_engine
    to_release = allowed(engine.authorize("t1", ActionInput(agent="a1", action="llm.chat", amounts={"usd": "30"})))
    to_commit = allowed(engine.authorize("t1", ActionInput(agent="a2", action="llm.chat", amounts={"usd": "20"})))

    results = engine.execute(
        [
            ops(engine, "a1", "10"),
            engine.commit_operation("t1", "res_000000000000000000000000"),
            engine.release_operation("t1", to_release),
            engine.commit_operation("t1", to_commit, {"usd": "20"}),
            engine.commit_operation("t1", to_commit, {"usd": "20"}),  # a second commit in the same batch
            ops(engine, "a2", "70"),  # fits only once the release ran
        ]
    )

    first, unknown, release, commit, again, last = results
    allowed(first)
    assert isinstance(unknown, NotFound)
    assert isinstance(release, ReleaseResult)
    assert release.released == {"usd": 3000}
    assert isinstance(commit, CommitResult)
    assert getattr(again, "code", None) == "already_committed"
    allowed(last)
    assert counter(store, OPS_DAY) == (2000, 8000, 0)
    assert_consistent(engine)


def test_a_batch_keeps_tenants_apart(ops_engine: Engine, store: Store) -> None:
    engine = ops_engine
    engine.create_tenant("t2")
    engine.apply_config("t2", config())
    engine.commit(
        "t1", allowed(engine.authorize("t1", ActionInput(agent="a1", action="llm.chat", amounts={"usd": "100"})))
    )

    results = engine.execute(
        [ops(engine, "a1", "60", "t1"), ops(engine, "a1", "60", "t2"), ops(engine, "a2", "60", "t2")]
    )

    exhausted, other_tenant, other_tenant_full = results
    assert isinstance(exhausted, Decision) and exhausted.outcome is Outcome.DENY
    allowed(other_tenant)
    assert isinstance(other_tenant_full, Decision) and other_tenant_full.outcome is Outcome.DENY
    assert counter(store, OPS_DAY, "t1") == (10000, 0, 0)
    assert counter(store, OPS_DAY, "t2") == (0, 6000, 0)
    t1_reservation = allowed(engine.authorize("t1", ActionInput(agent="a1", action="llm.chat", amounts={"usd": "0"})))
    with pytest.raises(NotFound):  # a reservation is found only under its own tenant
        engine.commit("t2", t1_reservation)
    assert engine.release("t1", t1_reservation).status == "released"
    assert_consistent(engine)
    assert_consistent(engine, "t2")
