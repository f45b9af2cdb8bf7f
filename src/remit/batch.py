"""One tenant's share of a batch: lock what it touches, decide in arrival order, write once."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from remit.domain.budgets import Budget, Counter, CounterKey
from remit.domain.decisions import Decision, Outcome, decision_from_record, decision_to_record
from remit.domain.evaluation import Consulted, evaluate_authorize, measure, post_usage, release_hold, report
from remit.domain.ledger import EntryKind, LedgerEntry, Posting
from remit.domain.reservations import HoldPart, Reservation, Status
from remit.domain.tenant import TenantConfig
from remit.domain.windows import BoundsCache
from remit.errors import Conflict, InvalidRequest, InvariantViolation, NotFound, RemitError
from remit.limits import EXPIRY_BATCH_SIZE_MAX
from remit.operations import Act, Operation, Resolve, Result, expect_result
from remit.results import CommitResult, ExtendResult, ReleaseResult, UsageResult
from remit.store.base import BatchWrite, Transaction, dumps

HOLDS_CACHED_MAX = 200_000
"""Most live holds an engine remembers per tenant; past it, they are read back from the store."""
COUNTERS_CACHED_MAX = 200_000
NO_HOLD_DUE_US = 2**62
"""The bound on hold deadlines of a tenant without live holds: never."""


@dataclass(slots=True)
class TenantState:
    """What this process knows of a tenant's counters and live holds.

    Exact while the tenant's `write_seq` in the store equals `write_seq` here: every writer
    moves the sequence on under the tenant's row lock, so an equal sequence means nobody else
    wrote since this process did, and the batch need not read what it already has.
    """

    write_seq: int
    counters: dict[CounterKey, Counter] = field(default_factory=dict)
    holds: dict[str, Reservation] = field(default_factory=dict)
    is_owned: bool = False
    """This engine wrote the tenant's last two batches in a row: no other writer is about, so
    the next batch may decide from memory and claim the tenant as it writes
    (`Engine._execute_owned`). A new state (another writer came in between) starts without."""
    next_due_us: int = 0
    """The tenant's bound on hold deadlines as this engine last wrote it."""
    config_version: int = -1
    """The config version this engine's last batch of the tenant decided with."""


class NeedsRead(Exception):
    """An owned batch (decided from memory) came to a read it cannot make: it is run again the
    ordinary way. `TenantBatch.reads_needed` should have said so first."""


class TenantBatch:
    """One tenant's share of a batch: lock, decide in order, write once."""

    tx: Transaction
    """The transaction `run` writes in (given to `run`: an owned batch is planned before one is open)."""

    def __init__(
        self,
        tenant: TenantConfig,
        state: TenantState,
        now_us: int,
        *,
        next_due_us: int,
        bounds: BoundsCache,
        new_reservation_id: Callable[[], str],
        is_owned: bool = False,
    ) -> None:
        self.is_owned = is_owned
        """Decided from memory (`reads_needed` was False): any read is refused (`NeedsRead`)."""
        self.claimed_next_due_us = next_due_us
        self.next_due_us = next_due_us
        """No live hold of the tenant runs out before this (see `TenantClaim.next_due_us`)."""
        self.bounds = bounds
        self.new_reservation_id = new_reservation_id
        self.tenant = tenant
        self.state = state
        self.now_us = now_us
        self.counters: dict[CounterKey, Counter] = {}
        self.reservations: dict[str, Reservation] = {}
        self.answered_keys: dict[str, tuple[str, Any]] = {}
        self.due_ids: list[str] = []
        self.expired_ids: set[str] = set()
        self.touched_reservations: set[str] = set()
        """Ids already queued for writing (new or changed), so each is written once."""
        self.write = BatchWrite()

    def run(
        self, tx: Transaction, items: list[tuple[int, Operation]], results: list[Result | RemitError | BaseException]
    ) -> None:
        self.tx = tx
        tenant_id = self.tenant.tenant_id
        acts = [op for _, op in items if isinstance(op, Act)]
        if not self.is_owned:  # `reads_needed` worked them out just now, under this batch's config
            for act in acts:  # a retried batch decides afresh, against the config loaded now
                act.consulted = None
                act.problem = None
        resolves = [op for _, op in items if isinstance(op, Resolve)]
        keys = [op.idempotency_key for op in acts if op.idempotency_key]
        if keys:
            self._reading()
        for key, (fingerprint, response) in self.tx.claim_idempotency(tenant_id, keys, self.now_us).items():
            if response is not None:
                self.answered_keys[key] = (fingerprint, orjson.loads(response))
        self._lock_reservations(resolves)
        self._lock_counters(acts)
        for rid in self.due_ids:
            reservation = self.reservations.get(rid)
            if reservation is not None and reservation.is_overdue(self.now_us):
                self._expire(reservation)
        for index, operation in items:
            try:
                if isinstance(operation, Act):
                    results[index] = self._act(operation)
                else:
                    results[index] = self._resolve(operation)
            except RemitError as error:
                if isinstance(error, InvariantViolation):
                    raise
                results[index] = error
                if isinstance(operation, Act) and operation.idempotency_key not in (None, *self.answered_keys):
                    self.write.unclaimed.append(operation.idempotency_key or "")
        self.write.counters = [counter for counter in self.counters.values() if counter.is_dirty]
        next_due_us = min(
            [self.next_due_us]
            + [
                reservation.lease_expires_at_us
                for reservation in self.write.new_reservations + self.write.changed_reservations
                if reservation.status is Status.HELD
            ]
        )
        if next_due_us != self.claimed_next_due_us:
            self.write.next_due_us = next_due_us
        self.next_due_us = next_due_us
        self.tx.write(tenant_id, self.write)

    def reads_needed(self, items: list[tuple[int, Operation]]) -> bool:
        """Whether deciding `items` needs anything of the store that the tenant's state lacks:
        idempotency claims, overdue holds, holds or counters not in memory, counted entities
        (reach is always read). False means an owned batch can decide them from memory."""
        if self.now_us >= self.next_due_us:
            return True
        holds = self.state.holds
        counters = self.state.counters
        for _, operation in items:
            if isinstance(operation, Resolve):
                reservation = holds.get(operation.reservation_id)
                if reservation is None:
                    return True
                if any(part.entities or (part.budget_id, part.instance) not in counters for part in reservation.parts):
                    return True
                continue
            if operation.idempotency_key is not None or operation.touches:
                return True
            if any((budget.id, instance) not in counters for budget, instance in self._consulted_budgets(operation)):
                return True
        return False

    def _reading(self) -> None:
        if self.is_owned:
            raise NeedsRead(f"tenant {self.tenant.tenant_id!r}: an owned batch came to a read")

    def settle(self, write_seq: int) -> None:
        """After the commit: remember live holds and counters as written, then the new sequence."""
        state = self.state
        for reservation in self.write.new_reservations + self.write.changed_reservations:
            if reservation.status is Status.HELD:
                state.holds[reservation.id] = reservation
            else:
                state.holds.pop(reservation.id, None)
        for counter in self.write.counters:
            counter.is_dirty = False
            counter.has_advanced = False
        if len(state.holds) > HOLDS_CACHED_MAX:
            state.holds.clear()
        if len(state.counters) > COUNTERS_CACHED_MAX:
            state.counters.clear()
        state.write_seq = write_seq
        state.next_due_us = self.next_due_us
        state.config_version = self.tenant.version

    # -- locking -------------------------------------------------------------------------------
    def _lock_reservations(self, resolves: list[Resolve]) -> None:
        held = self.state.holds
        ids = {op.reservation_id for op in resolves}
        # Holds whose lease ran out are expired by the first batch that finds them, so an
        # abandoned hold stops blocking room at its deadline, not at the next sweep. Until the
        # tenant's bound on deadlines is reached, none can have run out: no need to look.
        if self.now_us >= self.next_due_us:
            self._find_due()
        ids.update(self.due_ids)
        self.reservations = {rid: held[rid] for rid in ids if rid in held}
        missing = [rid for rid in ids if rid not in held]
        if missing:
            self._reading()
            self.reservations.update(self.tx.lock_reservations(self.tenant.tenant_id, missing))

    def _find_due(self) -> None:
        """The overdue holds (up to EXPIRY_BATCH_SIZE_MAX), and the new bound: the deadline of
        the first live hold after them (itself overdue if more were due than were taken)."""
        self._reading()
        first = self.tx.first_holds(self.tenant.tenant_id, EXPIRY_BATCH_SIZE_MAX + 1)
        self.due_ids = [rid for rid, deadline_us in first[:EXPIRY_BATCH_SIZE_MAX] if deadline_us <= self.now_us]
        self.next_due_us = first[len(self.due_ids)][1] if len(first) > len(self.due_ids) else NO_HOLD_DUE_US

    def _consulted_budgets(self, act: Act) -> list[tuple[Budget, str]]:
        """The budgets (and instances) `act` is decided against, under the config this batch loaded.

        The request was validated against the config its process knew then; another process may
        have changed it since. What no longer holds is recorded as the request's problem, and the
        request is refused when its turn comes.
        """
        if act.consulted is not None:
            return act.consulted
        act.consulted = []
        agent = self.tenant.agents.get(act.agent.name)
        if agent is None:
            act.problem = InvalidRequest(
                f"agent {act.agent.name!r} is not configured", code="unknown_agent", field="agent"
            )
            return act.consulted
        missing = [name for name in (*act.amounts, *act.touches) if name not in self.tenant.meters]
        if missing:
            where = f"amounts.{missing[0]}" if missing[0] in act.amounts else f"touches.{missing[0]}"
            act.problem = InvalidRequest(
                f"{where}: meter {missing[0]!r} does not exist", code="unknown_meter", field=where
            )
            return act.consulted
        chosen = []
        for budget in self.tenant.budgets_on_path(agent, act.action):
            meter = budget.meter.name
            if meter not in act.amounts and meter not in act.touches:
                continue
            if not budget.is_per_task:
                chosen.append((budget, ""))
            elif act.task is not None:
                chosen.append((budget, act.task))
            else:  # a per-task cap must not fail open for work that names no task
                act.problem = InvalidRequest(
                    f"task is required: budget {budget.id} limits each task", code="task_required", field="task"
                )
                return act.consulted
        act.consulted = chosen
        return chosen

    def _lock_counters(self, acts: list[Act]) -> None:
        # A request whose idempotency key is already answered is replayed or refused without
        # counters: locking (and so creating) its per-task counters would grow the store on retries.
        acts = [act for act in acts if act.idempotency_key is None or act.idempotency_key not in self.answered_keys]
        keys: set[CounterKey] = set()
        for act in acts:
            keys.update((budget.id, instance) for budget, instance in self._consulted_budgets(act))
        for reservation in self.reservations.values():
            keys.update((part.budget_id, part.instance) for part in reservation.parts)
        if not keys:
            return
        tenant_id = self.tenant.tenant_id
        cached = self.state.counters
        missing = [key for key in keys if key not in cached]
        if missing:
            self._reading()
        loaded = self.tx.lock_counters(tenant_id, missing) if missing else {}
        rolling = [c for key, c in loaded.items() if (b := self.tenant.budget(key[0])) and b.is_rolling]
        if rolling:
            self.tx.load_buckets(tenant_id, rolling)
        cached.update(loaded)
        self.counters = {key: cached[key] for key in keys}
        for key, counter in self.counters.items():
            budget = self.tenant.budget(key[0])
            if budget is not None:
                counter.advance(budget, self.now_us, self.tenant.timezone, self.bounds)
        wanted: list[tuple[Counter, str]] = []
        for act in acts:
            for budget, instance in self._consulted_budgets(act):
                if budget.meter.is_distinct:
                    counter = self.counters[(budget.id, instance)]
                    counted = counter.counted_entities
                    wanted.extend((counter, e) for e in act.touches.get(budget.meter.name, ()) if e not in counted)
        for reservation in self.reservations.values():
            for part in reservation.parts:
                counter = self.counters[(part.budget_id, part.instance)]
                wanted.extend((counter, e) for e in part.entities if e not in counter.counted_entities)
        if wanted:
            self._reading()
        self.tx.load_counted(tenant_id, wanted)

    # -- authorize and post-hoc usage ----------------------------------------------------------
    def _act(self, act: Act) -> Decision | UsageResult:
        key = act.idempotency_key
        if key is not None and key in self.answered_keys:
            fingerprint, record = self.answered_keys[key]
            if fingerprint != act.fingerprint:
                raise Conflict(
                    f"idempotency key {key.partition('/')[2]!r} was used for a different request of this agent",
                    code="idempotency_mismatch",
                )
            if act.is_usage:
                return _usage_from_record(record)
            return decision_from_record(record)
        self._consulted_budgets(act)
        if act.problem is not None:
            raise act.problem
        consulted = [
            Consulted(budget, self.counters[(budget.id, instance)]) for budget, instance in self._consulted_budgets(act)
        ]
        for item in consulted:
            measure(item, act.amounts, act.touches)
        result: Decision | UsageResult = self._usage(act, consulted) if act.is_usage else self._hold(act, consulted)
        if key is not None:
            record = _usage_to_record(result) if act.is_usage else decision_to_record(expect_result(result, Decision))
            self.answered_keys[key] = (act.fingerprint, record)
            self.write.idempotency.append((key, act.fingerprint, dumps(record)))
        return result

    def _hold(self, act: Act, consulted: list[Consulted]) -> Decision:
        tz, cache = self.tenant.timezone, self.bounds
        decision, parts, postings = evaluate_authorize(consulted, self.now_us, tz, cache)
        if decision.outcome is not Outcome.ALLOW:
            return decision
        reservation = Reservation(
            tenant_id=act.tenant_id,
            id=self.new_reservation_id(),
            status=Status.HELD,
            agent=act.agent.name,
            action=act.action,
            task=act.task,
            amounts=act.amounts,
            parts=parts,
            lease_expires_at_us=self.now_us + act.lease_us,
            created_at_us=self.now_us,
        )
        decision.reservation_id = reservation.id
        decision.lease_expires_at_us = reservation.lease_expires_at_us
        self.reservations[reservation.id] = reservation
        self.touched_reservations.add(reservation.id)
        self.write.new_reservations.append(reservation)
        detail: dict[str, Any] = {
            "priority": act.priority.value,
            "lease_expires_at_us": reservation.lease_expires_at_us,
        }
        if act.task is not None:
            detail["task"] = act.task
        if act.context:
            detail["context"] = act.context
        if decision.reasons:
            detail["shadow_denials"] = [reason.budget for reason in decision.reasons]
        self._entry(EntryKind.HOLD, reservation, postings, detail)
        return decision

    def _usage(self, act: Act, consulted: list[Consulted]) -> UsageResult:
        postings = []
        overrun: dict[str, int] = {}
        for item in consulted:
            entities = act.touches.get(item.budget.meter.name, ())
            amount = act.amounts.get(item.budget.meter.name, 0)
            posting = post_usage(item.budget, item.counter, self.now_us, amount, entities)
            postings.append(posting)
            if posting.overrun:
                meter = item.budget.meter.name
                overrun[meter] = max(overrun.get(meter, 0), posting.overrun)
        detail: dict[str, Any] = {"priority": act.priority.value, "amounts": act.amounts}
        if act.task is not None:
            detail["task"] = act.task
        if overrun:
            detail["overrun"] = overrun
        self.write.entries.append(
            LedgerEntry(EntryKind.USAGE, act.tenant_id, self.now_us, None, act.agent.name, act.action, postings, detail)
        )
        reports = [report(item, self.now_us, self.tenant.timezone, self.bounds) for item in consulted]
        return UsageResult(reports, overrun)

    # -- commit, release, extend, expire -------------------------------------------------------
    def _resolve(self, op: Resolve) -> Result:
        reservation = self.reservations.get(op.reservation_id)
        if reservation is not None and op.agent is not None and reservation.agent != op.agent:
            reservation = None  # an agent key cannot see another agent's holds
        if reservation is None:
            if op.kind == "expire":
                return None
            raise NotFound(f"reservation {op.reservation_id!r} does not exist")
        if reservation.is_overdue(self.now_us):
            self._expire(reservation)
        if op.kind == "expire":
            return ReleaseResult(reservation.id, "expired", {}) if reservation.id in self.expired_ids else None
        if reservation.status is Status.HELD:
            if op.kind == "commit":
                return self._commit(reservation, op)
            if op.kind == "release":
                return self._release(reservation, op)
            reservation.lease_expires_at_us = self.now_us + op.lease_us
            self._changed(reservation)
            self._entry(EntryKind.EXTEND, reservation, [], {"lease_expires_at_us": reservation.lease_expires_at_us})
            return ExtendResult(reservation.id, "held", reservation.lease_expires_at_us)
        return self._resolved_already(reservation, op)

    def _resolved_already(self, reservation: Reservation, op: Resolve) -> Result:
        record = reservation.result or {}
        if op.idempotency_key is not None and op.idempotency_key == reservation.resolve_key:
            if record.get("kind") != op.kind or record.get("request") != _resolve_fingerprint(op):
                raise Conflict(
                    f"idempotency key {op.idempotency_key!r} was used for a different request",
                    code="idempotency_mismatch",
                )
            if op.kind == "commit":
                return CommitResult.from_record(reservation.id, record)
            return ReleaseResult(reservation.id, "released", record["released"])
        if reservation.status is Status.EXPIRED:
            if op.kind == "commit":
                return self._commit_late(reservation, op)
            raise Conflict(
                f"reservation {reservation.id} expired at its lease deadline",
                code="expired",
                details={"lease_expires_at_us": reservation.lease_expires_at_us},
            )
        code = "already_committed" if reservation.status is Status.COMMITTED else "already_released"
        raise Conflict(
            f"reservation {reservation.id} is {reservation.status.value} already",
            code=code,
            details={"status": reservation.status.value},
        )

    def _check_actuals(self, reservation: Reservation, op: Resolve) -> dict[str, int]:
        actuals = dict(reservation.amounts)
        for meter, amount in (op.amounts or {}).items():
            if meter not in reservation.amounts:
                raise InvalidRequest(
                    f"amounts.{meter}: the reservation held no {meter}; report it as usage instead",
                    code="meter_not_held",
                    field=f"amounts.{meter}",
                )
            actuals[meter] = amount
        return actuals

    def _commit(self, reservation: Reservation, op: Resolve) -> CommitResult:
        actuals = self._check_actuals(reservation, op)
        postings, committed, overrun = self._post_actuals(reservation, actuals, is_releasing=True)
        released = {meter: max(0, held - actuals[meter]) for meter, held in reservation.amounts.items()}
        result = CommitResult(reservation.id, "committed", committed, released, overrun)
        self._finish(reservation, Status.COMMITTED, op, result.to_record())
        detail = self._commit_detail(reservation, actuals, op, overrun)
        self._entry(EntryKind.COMMIT, reservation, postings, detail)
        return result

    def _commit_late(self, reservation: Reservation, op: Resolve) -> CommitResult:
        """The hold expired but the work happened: count it now, as usage that was never held."""
        actuals = self._check_actuals(reservation, op)
        postings, committed, overrun = self._post_actuals(reservation, actuals, is_releasing=False)
        result = CommitResult(reservation.id, "committed", committed, {}, overrun, is_late=True)
        self._finish(reservation, Status.COMMITTED, op, result.to_record())
        reservation.was_expired = True
        detail = self._commit_detail(reservation, actuals, op, overrun)
        detail["late"] = True
        self._entry(EntryKind.LATE_COMMIT, reservation, postings, detail)
        return result

    def _commit_detail(
        self, reservation: Reservation, actuals: dict[str, int], op: Resolve, overrun: dict[str, int]
    ) -> dict[str, Any]:
        """The commit's ledger detail; flags every excess (over a limit, over a per-action maximum)."""
        detail: dict[str, Any] = {"amounts": actuals, "outcome": op.outcome}
        if overrun:
            detail["overrun"] = overrun
        over_max = []
        for part in reservation.parts:
            budget = self.tenant.budget(part.budget_id)
            if budget is None or budget.per_action_max is None or budget.meter.is_distinct:
                continue
            if actuals.get(budget.meter.name, 0) > budget.per_action_max:
                over_max.append(budget.id)
        if over_max:
            detail["over_per_action_max"] = over_max
        return detail

    def _post_actuals(
        self, reservation: Reservation, actuals: dict[str, int], *, is_releasing: bool
    ) -> tuple[list[Posting], dict[str, int], dict[str, int]]:
        """Count a commit's actuals on each budget it held on; release the holds first if still live.

        Returns the postings (one per budget), what was committed per meter and the overrun per
        meter (the largest over that meter's budgets).
        """
        postings: list[Posting] = []
        committed: dict[str, int] = {}
        overrun: dict[str, int] = {}
        for part in reservation.parts:
            counter = self.counters[(part.budget_id, part.instance)]
            budget = self.tenant.budget(part.budget_id)
            released = self._release_part(budget, counter, part) if is_releasing else None
            if budget is None:
                if released is not None:
                    postings.append(released)
                continue  # the budget was removed from the config: its hold is released, nothing counted
            meter = budget.meter.name
            posting = post_usage(budget, counter, self.now_us, actuals.get(meter, 0), part.entities)
            if released is not None:
                posting.held = released.held  # one posting per budget: the hold goes, the usage comes
            postings.append(posting)
            if budget.meter.is_distinct:
                committed[meter] = max(committed.get(meter, 0), posting.used)
            else:
                committed[meter] = actuals.get(meter, 0)
            if posting.overrun:
                overrun[meter] = max(overrun.get(meter, 0), posting.overrun)
        return postings, committed, overrun

    def _release(self, reservation: Reservation, op: Resolve) -> ReleaseResult:
        postings = self._release_all(reservation)
        result = ReleaseResult(reservation.id, "released", dict(reservation.amounts))
        self._finish(reservation, Status.RELEASED, op, result.to_record())
        self._entry(EntryKind.RELEASE, reservation, postings, {})
        return result

    def _expire(self, reservation: Reservation) -> None:
        postings = self._release_all(reservation)
        reservation.status = Status.EXPIRED
        reservation.resolved_at_us = self.now_us
        self.expired_ids.add(reservation.id)
        self._changed(reservation)
        self._entry(EntryKind.EXPIRE, reservation, postings, {"lease_expires_at_us": reservation.lease_expires_at_us})

    def _release_all(self, reservation: Reservation) -> list[Posting]:
        """Give back everything the reservation holds (a release or an expiry)."""
        return [
            self._release_part(self.tenant.budget(part.budget_id), self.counters[(part.budget_id, part.instance)], part)
            for part in reservation.parts
        ]

    def _release_part(self, budget: Budget | None, counter: Counter, part: HoldPart) -> Posting:
        if budget is None:
            counter.held -= part.amount
            counter.is_dirty = True
            return Posting(part.budget_id, part.instance, counter.window_start, held=-part.amount)
        return release_hold(budget, counter, part, self.now_us)

    def _finish(self, reservation: Reservation, status: Status, op: Resolve, record: dict[str, Any]) -> None:
        reservation.status = status
        reservation.resolved_at_us = self.now_us
        if op.idempotency_key is not None:
            record["request"] = _resolve_fingerprint(op)
        reservation.result = record
        reservation.resolve_key = op.idempotency_key
        self._changed(reservation)

    def _changed(self, reservation: Reservation) -> None:
        if reservation.id in self.touched_reservations:
            return
        self.touched_reservations.add(reservation.id)
        self.write.changed_reservations.append(reservation)

    def _entry(
        self, kind: EntryKind, reservation: Reservation, postings: list[Posting], detail: dict[str, Any]
    ) -> None:
        self.write.entries.append(
            LedgerEntry(
                kind,
                reservation.tenant_id,
                self.now_us,
                reservation.id,
                reservation.agent,
                reservation.action,
                postings,
                detail,
            )
        )


def _resolve_fingerprint(op: Resolve) -> str:
    """What a retried commit or release must repeat exactly to get the first answer back."""
    amounts = sorted(op.amounts.items()) if op.amounts is not None else None
    return hashlib.sha256(orjson.dumps([op.kind, amounts, op.outcome])).hexdigest()[:32]


def _usage_to_record(result: Decision | UsageResult) -> dict[str, Any]:
    usage = expect_result(result, UsageResult)
    decision = decision_to_record(Decision(Outcome.ALLOW, usage.budgets))
    return {"budgets": decision["budgets"], "overrun": usage.overrun}


def _usage_from_record(record: dict[str, Any]) -> UsageResult:
    decision = decision_from_record(
        {
            **record,
            "outcome": "allow",
            "reasons": [],
            "reservation_id": None,
            "lease_expires_at_us": None,
            "retry_after_seconds": None,
        }
    )
    return UsageResult(decision.budgets, record["overrun"])
