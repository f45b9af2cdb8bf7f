"""The ledger invariants hold under any sequence of requests, on SQLite and on PostgreSQL.

A hypothesis state machine drives the real engine (a FakeClock, a small tenant whose limits
run out often) through random authorize / commit (as held, less, equal, more than held) /
release / extend / post-hoc usage / retried requests with the same idempotency key (and with
the key on a changed request) / clock advances from a second to days across hour, day and DST
boundaries / `expire_holds` / several requests decided in one batch / the config re-applied
with other limits (half, double, below what is used, zero, back to the first) and per-action
maxima, switching now and then between two engines on the same store (two processes). Every request also goes through an
independent model (`model.py`, written from the documented semantics, not from
`remit.domain`) and the answers must agree: allow or deny, the reasons, every consulted
budget's limit / used / held / requested / remaining, and each commit's committed / released
/ overrun / lateness or error code.

After every step the store itself is read and compared with the model:
1. per budget instance, used / overrun / held in the current window equal the model's, and
   for every enforced budget the authorised amount used - overrun + held stays within the
   limit: <= limit, or, once a lowered limit left it above (allowed: a limit never takes
   usage back), it does not grow until it is back within the limit;
2. every hold ends exactly once: reservation statuses equal the model's, the live holds are
   exactly the model's, and the ledger has one hold entry and at most one end per reservation;
3. `engine.check()` is consistent: counters rebuilt from the ledger equal the live ones;
4. a retried request with the same idempotency key returns the first answer and changes no
   balance and no ledger entry.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import os
import uuid
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from model import US, Model, Outcome, Report, Verdict

from conftest import PG_ADMIN_URL, START_US, FakeClock, _with_database, require_postgres
from remit.bootstrap import open_store
from remit.domain.decisions import Decision, decision_to_record
from remit.domain.ledger import EntryKind
from remit.engine import Engine
from remit.errors import RemitError
from remit.operations import ActionInput, Operation
from remit.results import CommitResult, ExtendResult, ReleaseResult, UsageResult
from remit.store.base import Store


def tenant_document(timezone: str) -> dict[str, Any]:
    """Three agents in nested scopes: usd budgets by hour, day, rolling and total windows (one shadow, one
    per task, one for `llm.*` only with a per-action maximum); reach (distinct accounts) by hour and day."""
    return {
        "tenant": {
            "timezone": timezone,
            "budgets": [{"id": "root-total", "meter": "usd", "limit": "25", "window": "total"}],
        },
        "meters": {"usd": {"kind": "sum", "scale": 2}, "accounts": {"kind": "distinct"}},
        "scopes": {
            "eng": {
                "budgets": [
                    {"id": "eng-day", "meter": "usd", "limit": "12", "window": "day"},
                    {"id": "eng-rolling", "meter": "usd", "limit": "8", "window": "rolling:30m"},
                    {"id": "eng-hour-shadow", "meter": "usd", "limit": "2", "window": "hour", "mode": "shadow"},
                ]
            },
            "eng/search": {
                "budgets": [
                    {
                        "id": "search-llm-hour",
                        "meter": "usd",
                        "limit": "4",
                        "window": "hour",
                        "actions": "llm.*",
                        "per_action_max": "3",
                    },
                    {"id": "search-accounts-day", "meter": "accounts", "limit": "3", "window": "day"},
                ]
            },
        },
        "agents": {
            "a1": {
                "scope": "eng/search",
                "budgets": [
                    {"id": "a1-day", "meter": "usd", "limit": "5", "window": "day"},
                    {"id": "a1-rolling", "meter": "usd", "limit": "3", "window": "rolling:40s"},
                ],
            },
            "a2": {
                "scope": "eng/search",
                "budgets": [{"id": "a2-accounts-hour", "meter": "accounts", "limit": "2", "window": "hour"}],
            },
            "a3": {
                "scope": "eng",
                "budgets": [{"id": "a3-task-total", "meter": "usd", "limit": "4", "window": "total", "per": "task"}],
            },
        },
    }


TIMEZONES = ["UTC", "America/New_York", "Asia/Kolkata"]
STARTS_US = [
    START_US,  # 2026-01-01T00:00Z
    1_772_946_000_000_000,  # 2026-03-08T05:00Z: midnight in New York on the day clocks go forward
]
NEAR_BOUNDARIES = [3590, 1790, 5 * 3600 - 5, 18 * 3600 + 1790, 86_390]
"""Seconds after a UTC midnight that are just before an hour or a local midnight (UTC, New York, Kolkata)."""
# Hypothesis draws early list entries more often: each list starts with an interesting choice.
AMOUNTS = ["1", "2", "0.5", "1.25", "3", "3.5", "0.001", "0"]
SECONDS = [3601, 1801, 86_401, 600, 61, 1, 29, 31, 59, 1799, 3599, 86_399]
TOUCHES = [
    {"accounts": entities}
    for entities in (["e1"], ["e1", "e2"], ["e2"], ["e3"], ["e2", "e3"], ["e1", "e1"], ["e1", "e3", "e4"], [])
]
TOUCHES += [{}]
requests = st.fixed_dictionaries(
    {
        "agent": st.sampled_from(["a2", "a1", "a3"]),
        "action": st.sampled_from(["llm.chat", "crm.write"]),
        "amounts": st.sampled_from([*({"usd": usd} for usd in AMOUNTS), {}]),
        "touches": st.sampled_from(TOUCHES),
        "task": st.sampled_from([None, "t1", "t2"]),
        "lease_seconds": st.sampled_from([600, 3600, 30, 1]),
    }
)
OPERATIONS = ["authorize"] * 4 + ["commit"] * 3 + ["advance"] * 2
OPERATIONS += ["usage", "retry", "batch", "release", "extend", "config"]
"""Weighted: holds are placed more often than anything else happens to them."""


def fingerprint(model: Model, request: dict[str, Any], is_usage: bool) -> tuple[Any, ...]:
    """What the engine compares when a key comes back: the request as parsed, not as written."""
    amounts, touches = model.parse(request["amounts"], request["touches"])
    return (
        request["agent"],
        request["task"],
        request["action"],
        sorted(amounts.items()),
        sorted(touches.items()),
        request["lease_seconds"],
        is_usage,
    )


def usd_text(base_units: int) -> str:
    return f"{base_units // 100}.{base_units % 100:02d}"


def amount_text(base_units: int, scale: int) -> str:
    """Base units as an exact decimal string at the meter's scale (a limit in a config)."""
    if scale == 0:
        return str(base_units)
    digits = str(base_units).rjust(scale + 1, "0")
    return f"{digits[:-scale]}.{digits[-scale:]}"


LIMIT_CHANGES = ["half", "below used", "double", "zero", "first", "plus one"]
PER_ACTION_MAXIMA = ["1", "0.5", "3", "4.25"]
LIMIT_MAX = 10**15


def reports_of(decision: Decision | UsageResult) -> dict[str, Report]:
    return {b.budget: Report(b.limit, b.used, b.held, b.requested, b.remaining, b.is_shadow) for b in decision.budgets}


def outcome_of(result: object) -> Outcome:
    if isinstance(result, CommitResult):
        return Outcome("commit", (result.committed, result.released, result.overrun, result.is_late))
    if isinstance(result, ReleaseResult):
        return Outcome("release", (result.released,))
    if isinstance(result, ExtendResult):
        return Outcome("extend", (result.lease_expires_at_us,))
    if isinstance(result, RemitError):
        return Outcome("error", (result.code,))
    raise AssertionError(f"not an answer to a commit, release or extend: {result!r}")


Answer = Decision | UsageResult | CommitResult | ReleaseResult | ExtendResult | RemitError


@dataclass(frozen=True)
class Call:
    """One request as the machine drew it, sent alone through the engine's API or in a batch."""

    kind: str
    """`authorize`, `usage`, `commit`, `release` or `extend`."""
    request: dict[str, Any] | None = None
    key: str | None = None
    rid: str = ""
    amounts: dict[str, str] | None = None
    lease: int = 0

    def action(self) -> ActionInput:
        assert self.request is not None
        return ActionInput(**self.request, idempotency_key=self.key)

    def send(self, engine: Engine, tenant: str) -> Answer:
        try:
            if self.kind == "authorize":
                return engine.authorize(tenant, self.action())
            if self.kind == "usage":
                return engine.report_usage(tenant, self.action())
            if self.kind == "commit":
                return engine.commit(tenant, self.rid, self.amounts, idempotency_key=self.key)
            if self.kind == "release":
                return engine.release(tenant, self.rid, idempotency_key=self.key)
            return engine.extend(tenant, self.rid, self.lease)
        except RemitError as error:
            return error

    def operation(self, engine: Engine, tenant: str) -> Operation:
        if self.kind == "authorize":
            return engine.authorize_operation(tenant, self.action())
        if self.kind == "usage":
            return engine.usage_operation(tenant, self.action())
        if self.kind == "commit":
            return engine.commit_operation(tenant, self.rid, self.amounts, idempotency_key=self.key)
        if self.kind == "release":
            return engine.release_operation(tenant, self.rid, idempotency_key=self.key)
        return engine.extend_operation(tenant, self.rid, self.lease)


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self, store: Store, *, is_shared: bool) -> None:
        super().__init__()
        self.store = store
        self.is_shared = is_shared
        self.clock = FakeClock()
        self.engines = [Engine(store, clock=self.clock), Engine(store, clock=self.clock)]
        """Two engines on one store stand for two processes; `advance` may switch between them."""
        self.engine = self.engines[0]
        self.tenant = f"t-{uuid.uuid4().hex[:12]}"
        self.model: Model | None = None
        self.document: dict[str, Any] = {}
        """The config in force (as last applied); `first_document` is the one the tenant started with."""
        self.first_document: dict[str, Any] = {}
        self.authorised: dict[tuple[str, str], int] = {}
        """Budget instance → used - overrun + held at the last check (absent: 0)."""
        self.reservation_ids: list[str] = []
        self.first_answers: dict[str, Decision | UsageResult] = {}
        """Idempotency key → the first answer to the authorize or usage request that used it."""
        self.keyed_calls: list[Call] = []
        """Requests that carried a key and were answered: candidates for a retry."""
        self.keys = (f"k-{n}" for n in itertools.count(1))

    # -- set-up ------------------------------------------------------------------------------
    @initialize(
        timezone=st.sampled_from(TIMEZONES),
        start=st.sampled_from(STARTS_US),
        offset=st.one_of(st.sampled_from(NEAR_BOUNDARIES), st.integers(0, 86_400)),
    )
    def create_tenant(self, timezone: str, start: int, offset: int) -> None:
        self.clock.now_us = start + offset * US
        document = tenant_document(timezone)
        self.engine.create_tenant(self.tenant)
        self.engine.apply_config(self.tenant, document)
        self.model = Model(document)
        self.document = document
        self.first_document = copy.deepcopy(document)

    def teardown(self) -> None:
        """A store of its own is closed. In a shared one the tenant's live holds are ended instead:
        `expire_holds` works across tenants and would count them in a later example."""
        if not self.is_shared:
            self.store.close()
            return
        for rid, hold in self.m.holds.items() if self.model is not None else ():
            if hold.status == "held":
                with contextlib.suppress(RemitError):  # the lease ran out: the release expired it instead
                    self.engine.release(self.tenant, rid)

    @property
    def now_us(self) -> int:
        return self.clock.now_us

    @property
    def m(self) -> Model:
        assert self.model is not None
        return self.model

    # -- steps -------------------------------------------------------------------------------
    @rule(op=st.sampled_from(OPERATIONS), data=st.data())
    def step(self, op: str, data: st.DataObject) -> None:
        """One request, batch or clock move. A single weighted rule rather than one rule per kind:
        hypothesis' swarm testing would switch `authorize` off in half the examples, leaving
        commit, release and extend nothing to act on."""
        if op in ("commit", "release", "extend") and not self.reservation_ids:
            op = "authorize"
        if op == "retry" and not self.keyed_calls:
            op = "usage"
        if op == "advance":
            self.advance(data)
        elif op == "config":
            self.change_limits(data)
        elif op == "retry":
            self.retry(data)
        elif op == "batch":
            self.batch(data)
        else:
            call = self.draw_call(op, data)
            self.check(call, call.send(self.engine, self.tenant))

    def draw_call(self, kind: str, data: st.DataObject) -> Call:
        is_keyed = data.draw(st.booleans(), label="with a key")
        if kind in ("authorize", "usage"):
            return Call(kind, data.draw(requests, label=kind), next(self.keys) if is_keyed else None)
        rid = self.pick_reservation(data)
        if kind == "extend":
            return Call(kind, rid=rid, lease=data.draw(st.sampled_from([60, 3600, 1]), label="lease"))
        if kind == "release":
            return Call(kind, rid=rid, key=next(self.keys) if is_keyed else None)
        relation = data.draw(st.sampled_from(["as held", "less", "equal", "more", "unknown"]), label="actual")
        if relation == "unknown":
            return Call(kind, rid="res_unknown")
        held = self.m.holds[rid].amounts.get("usd")
        amounts: dict[str, str] | None = None
        if held is None:
            amounts = {"usd": "1"} if relation == "more" else None  # a meter it never held: refused
        elif relation != "as held":
            extra = data.draw(st.sampled_from([75, 1, 400]), label="more by")
            amounts = {"usd": usd_text({"less": held // 2, "equal": held, "more": held + extra}[relation])}
        return Call(kind, rid=rid, amounts=amounts, key=next(self.keys) if is_keyed else None)

    def pick_reservation(self, data: st.DataObject) -> str:
        """Mostly a live hold (if any), sometimes any reservation: resolving one twice is tested too."""
        live = [rid for rid in self.reservation_ids if self.m.holds[rid].status == "held"]
        if live and data.draw(st.integers(0, 3), label="live") > 0:
            return data.draw(st.sampled_from(live), label="live hold")
        return data.draw(st.sampled_from(self.reservation_ids), label="reservation")

    def batch(self, data: st.DataObject) -> None:
        """Several requests decided in one transaction, in order; a request may come twice."""
        calls: list[Call] = []
        for _ in range(data.draw(st.integers(2, 5), label="batch size")):
            if calls and data.draw(st.integers(0, 4), label="repeat") == 0:
                calls.append(data.draw(st.sampled_from(calls), label="again"))
                continue
            kind = data.draw(st.sampled_from(["authorize", "commit", "usage", "release", "extend"]), label="kind")
            if kind not in ("authorize", "usage") and not self.reservation_ids:
                kind = "authorize"
            calls.append(self.draw_call(kind, data))
        answers = self.engine.execute([call.operation(self.engine, self.tenant) for call in calls])
        for call, answer in zip(calls, answers, strict=True):
            assert isinstance(answer, Answer), answer
            self.check(call, answer)

    def retry(self, data: st.DataObject) -> None:
        """A keyed request again: the first answer and no change; the key on another request: refused."""
        call = data.draw(st.sampled_from(self.keyed_calls), label="retry")
        if data.draw(st.booleans(), label="changed"):
            if call.request is not None:
                call = replace(call, request={**call.request, "lease_seconds": call.request["lease_seconds"] + 1})
            else:
                call = replace(call, kind="release" if call.kind == "commit" else "commit", amounts=None)
        self.expire_due_holds()  # every batch does; what a retry must not change is everything else
        before = self.snapshot()
        self.check(call, call.send(self.engine, self.tenant))
        assert self.snapshot() == before

    def expire_due_holds(self) -> None:
        assert self.engine.expire_holds() == self.m.expire_holds(self.now_us)

    def advance(self, data: st.DataObject) -> None:
        """Time passes; `expire_holds` may run; another process (engine) on the store may take over."""
        self.clock.advance(data.draw(st.one_of(st.sampled_from(SECONDS), st.integers(1, 3 * 86_400)), label="seconds"))
        if data.draw(st.booleans(), label="expire_holds"):
            self.expire_due_holds()
        if data.draw(st.booleans(), label="switch engine"):
            # The engine that wrote last kept the tenant's state in memory; the other must not trust its own.
            self.engine = self.engines[1] if self.engine is self.engines[0] else self.engines[0]

    def budget_docs(self, document: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Budget id → its entry in the document (the dict itself, to edit in place)."""
        lists = [document["tenant"]["budgets"]]
        lists += [scope["budgets"] for scope in document["scopes"].values()]
        lists += [agent["budgets"] for agent in document["agents"].values()]
        return {budget["id"]: budget for budgets in lists for budget in budgets}

    def change_limits(self, data: st.DataObject) -> None:
        """The tenant's config again, one or two budgets with another limit (and maybe another
        per-action maximum); meters, windows, ids and the time zone stay. Usage and holds stay too."""
        document = copy.deepcopy(self.document)
        budgets = self.budget_docs(document)
        first = self.budget_docs(self.first_document)
        ids = sorted(budgets)
        chosen = data.draw(st.lists(st.sampled_from(ids), min_size=1, max_size=2, unique=True), label="budgets")
        for budget_id in chosen:
            spec = self.m.spec_by_id[budget_id]
            scale = self.m.meters[spec.meter][1]
            used = max(
                (self.m.used(spec, key, self.now_us) for key in self.m.balances if key[0] == budget_id), default=0
            )
            change = data.draw(st.sampled_from(LIMIT_CHANGES), label=f"{budget_id} limit")
            limit = {
                "half": spec.limit // 2,
                "below used": max(0, used - 1) if used else spec.limit // 3,
                "double": min(LIMIT_MAX, spec.limit * 2),
                "zero": 0,
                "first": None,  # back to the limit the tenant started with
                "plus one": min(LIMIT_MAX, spec.limit + 1),
            }[change]
            budgets[budget_id]["limit"] = first[budget_id]["limit"] if limit is None else amount_text(limit, scale)
            if "per_action_max" in budgets[budget_id] and data.draw(st.booleans(), label="per-action maximum"):
                budgets[budget_id]["per_action_max"] = data.draw(st.sampled_from(PER_ACTION_MAXIMA), label="maximum")
        self.engine.apply_config(self.tenant, document)
        self.m.apply_config(document)
        self.document = document
        # The model read the document as the engine did.
        config = self.engine.tenant_config(self.tenant)
        engine_limits = {b.id: (b.limit, b.per_action_max) for b in config.budgets}
        assert engine_limits == {spec.id: (spec.limit, spec.per_action_max) for spec in self.m.specs}

    # -- the model's word against the engine's -------------------------------------------------
    def check(self, call: Call, answer: Answer) -> None:
        if call.request is None:
            expected = self.m.resolve(
                self.now_us, call.rid, call.kind, amounts=call.amounts, key=call.key, lease=call.lease
            )
            assert outcome_of(answer) == expected
            if call.key is not None and expected.kind != "error":
                self.keyed_calls.append(call)
            return
        is_usage = call.kind == "usage"
        replay = self.m.is_replay(call.key, fingerprint(self.m, call.request, is_usage))
        if replay is None:
            assert isinstance(answer, RemitError), answer
            assert answer.code == "idempotency_mismatch"
            return
        problem = None if replay else self.m.problem(call.request)
        if problem is not None:
            assert isinstance(answer, RemitError), answer
            assert answer.code == problem
            self.m.forget(call.key)
            self.m.expire_holds(self.now_us)  # the batch still expired the tenant's overdue holds
            return
        assert not isinstance(answer, RemitError), answer
        if replay:
            assert call.key is not None
            first = self.first_answers[call.key]
            if isinstance(first, Decision):
                assert isinstance(answer, Decision)
                assert decision_to_record(answer) == decision_to_record(first)
            else:
                assert answer == first
            return
        if is_usage:
            assert isinstance(answer, UsageResult)
            reports, overrun = self.m.report_usage(self.now_us, call.request)
            assert reports_of(answer) == reports
            assert answer.overrun == overrun
        else:
            assert isinstance(answer, Decision)
            verdict = self.m.authorize(self.now_us, call.request, answer.reservation_id)
            self.check_decision(answer, verdict, call.request)
            if answer.reservation_id is not None:
                self.reservation_ids.append(answer.reservation_id)
        if call.key is not None:
            self.first_answers[call.key] = answer
            self.keyed_calls.append(call)

    # -- comparisons -------------------------------------------------------------------------
    def check_decision(self, decision: Decision, verdict: Verdict, request: dict[str, Any]) -> None:
        assert decision.outcome.value == verdict.outcome, (decision.reasons, verdict.reasons)
        assert {(r.code.value, r.budget) for r in decision.reasons} == verdict.reasons
        assert reports_of(decision) == verdict.reports
        if verdict.outcome == "allow":
            assert decision.reservation_id is not None
            assert decision.lease_expires_at_us == self.now_us + request["lease_seconds"] * US
        else:
            assert decision.reservation_id is None

    def store_balances(self) -> dict[tuple[str, str], tuple[int, int, int]]:
        """(used, overrun, held) of every budget instance now, as the store has them."""
        with self.store.transaction() as tx:
            counters = tx.all_counters(self.tenant)
        found = {}
        for key, counter in counters.items():
            spec = self.m.spec_by_id[key[0]]
            if spec.window == "rolling":
                floor = self.m.clock.live_from(spec, self.now_us)
                used = sum(amount for start, amount in counter.buckets.items() if start >= floor)
                overrun = sum(amount for start, amount in counter.overrun_buckets.items() if start >= floor)
            else:
                current = self.m.clock.window_start(spec, self.now_us)
                assert counter.window_start <= current, (key, counter.window_start, current)
                is_current = counter.window_start == current
                used, overrun = (counter.used, counter.overrun) if is_current else (0, 0)
            if used or overrun or counter.held:
                found[key] = (used, overrun, counter.held)
        return found

    def model_balances(self) -> dict[tuple[str, str], tuple[int, int, int]]:
        found = {}
        for key, balance in self.m.balances.items():
            spec = self.m.spec_by_id[key[0]]
            numbers = (self.m.used(spec, key, self.now_us), self.m.overrun(spec, key, self.now_us), balance.held)
            if any(numbers):
                found[key] = numbers
        return found

    def snapshot(self) -> tuple[dict[tuple[str, str], tuple[int, int, int]], int]:
        with self.store.transaction() as tx:
            entries = sum(1 for _ in tx.ledger_entries(self.tenant))
        return self.store_balances(), entries

    @invariant()
    def balances_equal_the_model_and_stay_within_limits(self) -> None:
        if self.model is None:
            return
        balances = self.store_balances()
        assert balances == self.model_balances()
        authorised: dict[tuple[str, str], int] = {}
        for key, (used, overrun, held) in balances.items():
            spec = self.m.spec_by_id[key[0]]
            assert held >= 0
            assert 0 <= overrun <= used
            if spec.is_shadow:
                continue
            # Every hold fit the limit in force when it was placed and every posting beyond the
            # headroom is overrun, so the authorised amount is within the limit, unless a config
            # lowered the limit below it (usage is never taken back): then it may not grow.
            authorised[key] = used - overrun + held
            ceiling = max(spec.limit, self.authorised.get(key, 0))
            assert authorised[key] <= ceiling, (key, used, overrun, held, spec.limit, self.authorised.get(key))
        self.authorised = authorised

    @invariant()
    def every_hold_ends_exactly_once(self) -> None:
        if self.model is None:
            return
        holds = self.m.holds
        with self.store.transaction() as tx:
            stored = tx.lock_reservations(self.tenant, list(holds))
            live = {rid for rid, _ in tx.held_parts(self.tenant)}
            entries = list(tx.ledger_entries(self.tenant))
        assert live == {rid for rid, hold in holds.items() if hold.status == "held"}
        assert set(stored) == set(holds)
        for rid, hold in holds.items():
            row = stored[rid]
            assert (row.status.value, row.was_expired, row.resolve_key) == (
                hold.status,
                hold.was_expired,
                hold.resolve_key,
            ), rid
            assert row.lease_expires_at_us == hold.lease_expires_us
            parts = [(p.budget_id, p.instance, p.amount) for p in row.parts]
            assert sorted(parts) == sorted((p.spec.id, p.instance, p.amount) for p in hold.parts)
        kinds: dict[str | None, Tally[EntryKind]] = {}
        for entry in entries:
            kinds.setdefault(entry.reservation_id, Tally())[entry.kind] += 1
        assert set(kinds) - {None} == set(holds)
        for rid, hold in holds.items():
            tally = kinds[rid]
            ends = tally[EntryKind.COMMIT] + tally[EntryKind.RELEASE] + tally[EntryKind.EXPIRE]
            assert tally[EntryKind.HOLD] == 1
            assert ends == (0 if hold.status == "held" else 1), (rid, hold.status, tally)
            assert tally[EntryKind.EXPIRE] == int(hold.status == "expired" or hold.was_expired)
            assert tally[EntryKind.LATE_COMMIT] == int(hold.was_expired and hold.status == "committed")

    @invariant()
    def ledger_rebuild_equals_counters(self) -> None:
        if self.model is None:
            return
        report = self.engine.check(self.tenant)
        assert report.is_consistent, report.mismatches


def _examples(variable: str, default: int) -> int:
    """How many examples to run; a soak raises it (REMIT_STATEFUL_EXAMPLES, REMIT_STATEFUL_PG_EXAMPLES)."""
    return int(os.environ.get(variable, str(default)))


def run(make_machine: Callable[[], LedgerMachine], examples: int, steps: int) -> None:
    run_state_machine_as_test(
        make_machine,
        settings=settings(
            max_examples=examples,
            stateful_step_count=steps,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
            print_blob=True,
        ),
    )


@pytest.mark.slow
def test_ledger_invariants_on_sqlite(tmp_path: Path) -> None:
    files = (tmp_path / f"example-{n}.db" for n in itertools.count())

    def make_machine() -> LedgerMachine:
        store = open_store(f"sqlite:///{next(files)}")
        return LedgerMachine(store, is_shared=False)

    run(make_machine, examples=_examples("REMIT_STATEFUL_EXAMPLES", 80), steps=40)


@pytest.fixture(scope="module")
def pg_store() -> Iterator[Store]:
    """One PostgreSQL database for the module; each example is a fresh tenant in it."""
    require_postgres()
    name = f"remit_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    store = None
    try:
        store = open_store(_with_database(PG_ADMIN_URL, name))
        yield store
    finally:
        if store is not None:
            store.close()
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.slow
@pytest.mark.postgres
def test_ledger_invariants_on_postgres(pg_store: Store) -> None:
    run(lambda: LedgerMachine(pg_store, is_shared=True), examples=_examples("REMIT_STATEFUL_PG_EXAMPLES", 40), steps=40)
