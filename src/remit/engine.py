"""The engine: authorize / commit / release / extend / expire, decided in batches.

Requests that arrive together are decided in one store transaction: for each tenant the
batch claims idempotency keys, locks the reservations it resolves, then locks the counters of
every budget it touches in key order, decides each request in arrival order against those
counters, and writes counters, reservations and ledger entries once. Callers are answered
after the commit, so an answer is never given for work the store could still lose.

The batch core (`execute`) is synchronous. `submit` lets many threads share it (one of them
leads a batch while the others wait for their answers); `remit.batching.AsyncBatcher` derives
the asyncio front from the same core.
"""

from __future__ import annotations

import hashlib
import itertools
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson

from remit import config as config_io
from remit.domain.amounts import parse_amount
from remit.domain.budgets import Budget, Counter, CounterKey
from remit.domain.decisions import (
    Decision,
    Outcome,
    Priority,
    decision_from_record,
    decision_to_record,
)
from remit.domain.evaluation import (
    Consulted,
    evaluate_authorize,
    measure,
    post_usage,
    release_hold,
    report,
)
from remit.domain.ledger import EntryKind, LedgerEntry, Posting, rebuild_counters
from remit.domain.reservations import HoldPart, Reservation, Status
from remit.domain.tenant import Agent, TenantConfig
from remit.domain.windows import US_PER_SECOND, BoundsCache, rolling_floor
from remit.errors import Conflict, InvalidRequest, InvariantViolation, NotFound, Overloaded, RemitError
from remit.limits import (
    BATCH_SIZE_MAX,
    CONTEXT_BYTES_MAX,
    EXPIRY_BATCH_SIZE_MAX,
    IDEMPOTENCY_KEY_LENGTH_MAX,
    LEASE_SECONDS_DEFAULT,
    LEASE_SECONDS_MAX,
    LEASE_SECONDS_MIN,
    METERS_PER_REQUEST_MAX,
    NAME_LENGTH_MAX,
    QUEUE_LENGTH_MAX,
    TOUCHES_PER_REQUEST_MAX,
)
from remit.results import CheckReport, CommitResult, ExtendResult, ReleaseResult, UsageResult
from remit.store.base import BatchWrite, Store, Transaction, dumps

Clock = Callable[[], int]
"""Returns now in integer microseconds since the Unix epoch."""

BATCH_ATTEMPTS_MAX = 5
"""A batch that loses a deadlock or lock wait to another process is retried this many times."""


_AMOUNT_CACHE: dict[tuple[object, int], int] = {}
"""Decimal parsing is the slowest part of reading a request; agents repeat the same amounts."""
_AMOUNT_CACHE_SIZE_MAX = 10_000


def system_clock() -> int:
    return time.time_ns() // 1000


@dataclass(slots=True)
class ActionInput:
    """An action as a caller describes it: amounts as decimal strings in each meter's unit."""

    agent: str
    action: str
    amounts: Mapping[str, str | int] = field(default_factory=dict)
    touches: Mapping[str, Sequence[str]] = field(default_factory=dict)
    task: str | None = None
    context: Mapping[str, Any] = field(default_factory=dict)
    priority: str | None = None
    lease_seconds: int = LEASE_SECONDS_DEFAULT
    idempotency_key: str | None = None


@dataclass(slots=True)
class _Act:
    """A parsed authorize (or post-hoc usage) request."""

    tenant_id: str
    agent: Agent
    action: str
    amounts: dict[str, int]
    touches: dict[str, tuple[str, ...]]
    task: str | None
    context: Mapping[str, Any]
    priority: Priority
    lease_us: int
    idempotency_key: str | None
    fingerprint: str
    is_usage: bool = False
    consulted: list[tuple[Budget, str]] | None = None
    """The budgets (and instances) this request consults, once the batch has worked them out."""


@dataclass(slots=True)
class _Resolve:
    """A request about an existing reservation: commit, release, extend or expire."""

    tenant_id: str
    kind: str
    reservation_id: str
    amounts: dict[str, int] | None = None
    outcome: str | None = None
    idempotency_key: str | None = None
    lease_us: int = 0


Operation = _Act | _Resolve
Result = Decision | CommitResult | ReleaseResult | ExtendResult | UsageResult | None


class _Waiter:
    __slots__ = ("error", "is_finished", "is_leader", "operation", "result", "signal")

    def __init__(self, operation: Operation) -> None:
        self.operation = operation
        self.result: Result = None
        self.error: BaseException | None = None
        self.is_finished = False
        self.is_leader = False
        self.signal = threading.Event()
        """Set once: either the answer is in, or this waiter was made the next leader."""


_T = TypeVar("_T")


def expect_result(result: Result, kind: type[_T]) -> _T:
    if not isinstance(result, kind):
        raise InvariantViolation(f"expected a {kind.__name__}, the batch answered {type(result).__name__}")
    return result


def _check_name(value: object, field_name: str) -> str:
    if not isinstance(value, str) or not value or len(value) > NAME_LENGTH_MAX:
        raise InvalidRequest(
            f"{field_name} must be a non-empty string of at most {NAME_LENGTH_MAX} characters",
            code="invalid_field",
            field=field_name,
        )
    return value


def _lease_us(lease_seconds: object) -> int:
    if isinstance(lease_seconds, bool) or not isinstance(lease_seconds, int):
        raise InvalidRequest(
            "lease_seconds must be a whole number of seconds", code="invalid_field", field="lease_seconds"
        )
    if not LEASE_SECONDS_MIN <= lease_seconds <= LEASE_SECONDS_MAX:
        raise InvalidRequest(
            f"lease_seconds must be between {LEASE_SECONDS_MIN} and {LEASE_SECONDS_MAX}",
            code="invalid_field",
            field="lease_seconds",
        )
    return lease_seconds * US_PER_SECOND


def _check_context(context: object) -> dict[str, Any]:
    if not isinstance(context, Mapping):
        raise InvalidRequest("context must be an object", code="invalid_field", field="context")
    if not context:
        return {}
    try:
        size = len(orjson.dumps(context))
    except (TypeError, orjson.JSONEncodeError):
        raise InvalidRequest(
            "context must be JSON (string keys; strings, numbers, lists, objects)",
            code="invalid_field",
            field="context",
        ) from None
    if size > CONTEXT_BYTES_MAX:
        raise InvalidRequest(f"context is over {CONTEXT_BYTES_MAX} bytes", code="invalid_field", field="context")
    return dict(context)


def _check_key(key: object) -> str | None:
    if key is None:
        return None
    if not isinstance(key, str) or not key or len(key) > IDEMPOTENCY_KEY_LENGTH_MAX:
        raise InvalidRequest(
            f"idempotency_key must be a string of 1 to {IDEMPOTENCY_KEY_LENGTH_MAX} characters",
            code="invalid_field",
            field="idempotency_key",
        )
    return key


class Engine:
    """Decides actions against the budgets in a store. Thread-safe; one per process is enough."""

    def __init__(self, store: Store, *, clock: Clock = system_clock, batch_size_max: int = BATCH_SIZE_MAX) -> None:
        self.store = store
        self.clock = clock
        self.batch_size_max = batch_size_max
        self._configs: dict[str, TenantConfig] = {}
        self._bounds = BoundsCache()
        self._states: dict[str, _TenantState] = {}
        self._execute_lock = threading.Lock()
        """One batch at a time per engine: the in-memory tenant state has a single writer."""
        self._queue: list[_Waiter] = []
        self._queue_lock = threading.Lock()
        self._is_leading = False
        self._id_prefix = secrets.token_hex(8)
        self._id_sequence = itertools.count(1)
        self.batches_executed = 0
        self.batch_sizes_total = 0

    # == tenants and configuration ==============================================================
    def create_tenant(self, tenant_id: str, *, name: str | None = None, timezone: str = "UTC") -> None:
        _check_name(tenant_id, "tenant")
        with self.store.transaction() as tx:
            tx.create_tenant(tenant_id, name or tenant_id, timezone, self.clock())
            tx.commit()

    def apply_config(self, tenant_id: str, document: Mapping[str, Any], *, source: str = "<config>") -> TenantConfig:
        """Validate and apply a config document. Counters of budgets that keep their id keep their usage."""
        parsed = config_io.parse_document(document, source=source)
        now_us = self.clock()
        for _ in range(BATCH_ATTEMPTS_MAX):
            try:
                with self.store.transaction() as tx:
                    row = tx.load_tenant(tenant_id)
                    if row is None:
                        raise NotFound(f"tenant {tenant_id!r} does not exist")
                    canonical = dumps(parsed.document)
                    if row.config == canonical and row.timezone == parsed.timezone:
                        return self._load_tenant(tx, tenant_id)  # unchanged: nothing to apply or record
                    version = tx.save_config(tenant_id, parsed.timezone, canonical)
                    tenant = config_io.build_tenant(tenant_id, parsed.document, version)
                    tx.lock_counters(tenant_id, [(b.id, "") for b in tenant.budgets if not b.is_per_task])
                    entry = LedgerEntry(
                        EntryKind.CONFIG,
                        tenant_id,
                        now_us,
                        detail={"version": version, "sha256": hashlib.sha256(canonical.encode()).hexdigest()},
                    )
                    tx.write(tenant_id, BatchWrite(entries=[entry]))
                    tx.commit()
            except Exception as error:
                if not self._is_retryable(error):
                    raise
                continue
            self._configs[tenant_id] = tenant
            return tenant
        raise Overloaded("could not apply the config: the store stayed busy")

    def tenant_config(self, tenant_id: str) -> TenantConfig:
        """The tenant's config as this process last loaded it (loaded now if never)."""
        tenant = self._configs.get(tenant_id)
        if tenant is None:
            with self.store.transaction() as tx:
                tenant = self._load_tenant(tx, tenant_id)
        return tenant

    def _load_tenant(self, tx: Transaction, tenant_id: str) -> TenantConfig:
        row = tx.load_tenant(tenant_id)
        if row is None:
            raise NotFound(f"tenant {tenant_id!r} does not exist")
        tenant = config_io.build_tenant(tenant_id, orjson.loads(row.config), row.config_version)
        self._configs[tenant_id] = tenant
        return tenant

    # == requests ===============================================================================
    def authorize(self, tenant_id: str, request: ActionInput) -> Decision:
        """Hold on every budget of the agent's path that selects the action, or deny saying why."""
        return expect_result(self.submit(self.authorize_operation(tenant_id, request)), Decision)

    def report_usage(self, tenant_id: str, request: ActionInput) -> UsageResult:
        """Count usage that was never held (post-hoc). It may pass a limit; the excess is flagged."""
        return expect_result(self.submit(self.usage_operation(tenant_id, request)), UsageResult)

    def commit(
        self,
        tenant_id: str,
        reservation_id: str,
        amounts: Mapping[str, str | int] | None = None,
        *,
        outcome: str = "success",
        idempotency_key: str | None = None,
    ) -> CommitResult:
        """Post actual amounts (held amounts where omitted); the rest of the hold is released."""
        operation = self.commit_operation(
            tenant_id, reservation_id, amounts, outcome=outcome, idempotency_key=idempotency_key
        )
        return expect_result(self.submit(operation), CommitResult)

    def release(self, tenant_id: str, reservation_id: str, *, idempotency_key: str | None = None) -> ReleaseResult:
        operation = self.release_operation(tenant_id, reservation_id, idempotency_key=idempotency_key)
        return expect_result(self.submit(operation), ReleaseResult)

    def extend(self, tenant_id: str, reservation_id: str, lease_seconds: int = LEASE_SECONDS_DEFAULT) -> ExtendResult:
        """Push the lease deadline to now + lease_seconds (a heartbeat for long actions)."""
        return expect_result(self.submit(self.extend_operation(tenant_id, reservation_id, lease_seconds)), ExtendResult)

    # -- operations: validated requests, ready for a batch (the async front submits these too) --
    def authorize_operation(self, tenant_id: str, request: ActionInput) -> Operation:
        return self._parse_act(tenant_id, request, is_usage=False)

    def usage_operation(self, tenant_id: str, request: ActionInput) -> Operation:
        return self._parse_act(tenant_id, request, is_usage=True)

    def commit_operation(
        self,
        tenant_id: str,
        reservation_id: str,
        amounts: Mapping[str, str | int] | None = None,
        *,
        outcome: str = "success",
        idempotency_key: str | None = None,
    ) -> Operation:
        parsed = None if amounts is None else self._parse_amounts(self.tenant_config(tenant_id), amounts, "amounts")
        return _Resolve(
            tenant_id,
            "commit",
            _check_name(reservation_id, "reservation"),
            parsed,
            outcome,
            _check_key(idempotency_key),
        )

    def release_operation(
        self, tenant_id: str, reservation_id: str, *, idempotency_key: str | None = None
    ) -> Operation:
        return _Resolve(
            tenant_id,
            "release",
            _check_name(reservation_id, "reservation"),
            idempotency_key=_check_key(idempotency_key),
        )

    def extend_operation(
        self, tenant_id: str, reservation_id: str, lease_seconds: int = LEASE_SECONDS_DEFAULT
    ) -> Operation:
        return _Resolve(
            tenant_id, "extend", _check_name(reservation_id, "reservation"), lease_us=_lease_us(lease_seconds)
        )

    def expire_holds(self, limit: int = EXPIRY_BATCH_SIZE_MAX) -> int:
        """Expire holds whose lease has run out; returns how many. Safe to run in every process."""
        now_us = self.clock()
        with self.store.transaction() as tx:
            due = tx.due_reservations(now_us, limit)
        if not due:
            return 0
        results = self.execute([_Resolve(tenant, "expire", rid) for tenant, rid in due])
        return sum(1 for result in results if isinstance(result, ReleaseResult))

    # == parsing (before anything is queued: bad input never reaches the store) =================
    def _parse_act(self, tenant_id: str, request: ActionInput, *, is_usage: bool) -> _Act:
        tenant = self.tenant_config(tenant_id)
        agent_name = _check_name(request.agent, "agent")
        agent = tenant.agents.get(agent_name)
        if agent is None:
            raise InvalidRequest(f"agent {agent_name!r} is not configured", code="unknown_agent", field="agent")
        action = _check_name(request.action, "action")
        task = None if request.task is None else _check_name(request.task, "task")
        amounts = self._parse_amounts(tenant, request.amounts, "amounts")
        touches = self._parse_touches(tenant, request.touches)
        try:
            priority = agent.priority if request.priority is None else Priority(request.priority)
        except ValueError:
            raise InvalidRequest(
                f"priority {request.priority!r} is not one of interactive, scheduled, background",
                code="invalid_field",
                field="priority",
            ) from None
        context = _check_context(request.context)
        key = _check_key(request.idempotency_key)
        fingerprint = ""
        if key is not None:
            canonical = orjson.dumps(
                [
                    agent_name,
                    task,
                    action,
                    sorted(amounts.items()),
                    sorted(touches.items()),
                    priority.value,
                    request.lease_seconds,
                    is_usage,
                    context,
                ],
                option=orjson.OPT_SORT_KEYS,
            )
            fingerprint = hashlib.sha256(canonical).hexdigest()
        return _Act(
            tenant_id,
            agent,
            action,
            amounts,
            touches,
            task,
            context,
            priority,
            _lease_us(request.lease_seconds),
            key,
            fingerprint,
            is_usage,
        )

    @staticmethod
    def _parse_amounts(tenant: TenantConfig, amounts: Mapping[str, str | int], field_name: str) -> dict[str, int]:
        if not isinstance(amounts, Mapping):
            raise InvalidRequest(
                f"{field_name} must be an object of meter → amount", code="invalid_field", field=field_name
            )
        if len(amounts) > METERS_PER_REQUEST_MAX:
            raise InvalidRequest(
                f"{field_name} has more than {METERS_PER_REQUEST_MAX} meters", code="invalid_field", field=field_name
            )
        parsed = {}
        for name, text in amounts.items():
            meter = tenant.meters.get(name)
            where = f"{field_name}.{name}"
            if meter is None:
                raise InvalidRequest(f"{where}: meter {name!r} does not exist", code="unknown_meter", field=where)
            if meter.is_distinct:
                raise InvalidRequest(
                    f"{where}: {name!r} is a distinct meter; list entities in touches",
                    code="invalid_field",
                    field=where,
                )
            cache_key = (text, meter.scale)
            amount = _AMOUNT_CACHE.get(cache_key) if type(text) is str else None
            if amount is None:
                amount = parse_amount(text, meter.scale, field=where)
                if len(_AMOUNT_CACHE) < _AMOUNT_CACHE_SIZE_MAX:
                    _AMOUNT_CACHE[cache_key] = amount
            parsed[name] = amount
        return parsed

    @staticmethod
    def _parse_touches(tenant: TenantConfig, touches: Mapping[str, Sequence[str]]) -> dict[str, tuple[str, ...]]:
        if not isinstance(touches, Mapping):
            raise InvalidRequest(
                "touches must be an object of meter → entity list", code="invalid_field", field="touches"
            )
        parsed = {}
        count = 0
        for name, entities in touches.items():
            meter = tenant.meters.get(name)
            where = f"touches.{name}"
            if meter is None:
                raise InvalidRequest(f"{where}: meter {name!r} does not exist", code="unknown_meter", field=where)
            if not meter.is_distinct:
                raise InvalidRequest(
                    f"{where}: {name!r} is a sum meter; give it in amounts", code="invalid_field", field=where
                )
            if not isinstance(entities, (list, tuple)):
                raise InvalidRequest(f"{where} must be a list of entity ids", code="invalid_field", field=where)
            for entity in entities:
                if type(entity) is not str or not entity or len(entity) > NAME_LENGTH_MAX:
                    _check_name(entity, where)
            unique = tuple(dict.fromkeys(entities))
            count += len(unique)
            parsed[name] = unique
        if count > TOUCHES_PER_REQUEST_MAX:
            raise InvalidRequest(
                f"touches lists more than {TOUCHES_PER_REQUEST_MAX} entities", code="invalid_field", field="touches"
            )
        return parsed

    # == batching across threads ================================================================
    def submit(self, operation: Operation) -> Result:
        """Decide one request, in a batch with whatever other threads submit at the same time.

        The first thread to find no batch running leads one; the others wait. A leader leaves as
        soon as its own answer is in, handing the lead to the oldest waiter, so no caller works
        for others longer than the batches ahead of its own request.
        """
        waiter = _Waiter(operation)
        with self._queue_lock:
            if len(self._queue) >= QUEUE_LENGTH_MAX:
                raise Overloaded(f"more than {QUEUE_LENGTH_MAX} requests are waiting; retry shortly")
            self._queue.append(waiter)
            if not self._is_leading:
                self._is_leading = True
                waiter.is_leader = True
        if not waiter.is_leader:
            waiter.signal.wait()
        if not waiter.is_finished:
            self._lead(waiter)
        if waiter.error is not None:
            raise waiter.error
        return waiter.result

    def _lead(self, own: _Waiter) -> None:
        while not own.is_finished:
            with self._queue_lock:
                batch = self._queue[: self.batch_size_max]
                del self._queue[: self.batch_size_max]
            try:
                results = self.execute([waiter.operation for waiter in batch])
            except BaseException as error:  # every waiter must hear of the failure, then it propagates
                results = [error] * len(batch)
            for waiter, result in zip(batch, results, strict=True):
                if isinstance(result, BaseException):
                    waiter.error = result
                else:
                    waiter.result = result
                waiter.is_finished = True
                if waiter is not own:
                    waiter.signal.set()
        with self._queue_lock:
            if self._queue:
                successor = self._queue[0]
                successor.is_leader = True
                successor.signal.set()
            else:
                self._is_leading = False

    # == the batch ==============================================================================
    def execute(self, operations: Sequence[Operation]) -> list[Result | RemitError | BaseException]:
        """Decide `operations` in one transaction; one answer (or error) per operation, in order."""
        for attempt in range(BATCH_ATTEMPTS_MAX):
            try:
                return self._execute_once(operations)
            except Exception as error:
                if attempt + 1 < BATCH_ATTEMPTS_MAX and self._is_retryable(error):
                    time.sleep(0.001 * (attempt + 1))
                    continue
                raise
        raise Overloaded("the store stayed busy")  # pragma: no cover - the loop returns or raises

    def _is_retryable(self, error: Exception) -> bool:
        name = type(error).__name__
        if name in {"DeadlockDetected", "SerializationFailure", "LockNotAvailable", "UniqueViolation"}:
            return True
        return name == "OperationalError" and "locked" in str(error)

    def _execute_once(self, operations: Sequence[Operation]) -> list[Result | RemitError | BaseException]:
        by_tenant: dict[str, list[int]] = {}
        for index, operation in enumerate(operations):
            by_tenant.setdefault(operation.tenant_id, []).append(index)
        with self._execute_lock:
            try:
                results = self._execute_locked(operations, by_tenant)
            except BaseException:
                # Counters and holds were changed in memory for a transaction that did not commit.
                for tenant_id in by_tenant:
                    self._states.pop(tenant_id, None)
                raise
        self.batches_executed += 1
        self.batch_sizes_total += len(operations)
        return results

    def _execute_locked(
        self, operations: Sequence[Operation], by_tenant: dict[str, list[int]]
    ) -> list[Result | RemitError | BaseException]:
        now_us = self.clock()
        results: list[Result | RemitError | BaseException] = [None] * len(operations)
        done: list[tuple[_TenantBatch, int]] = []
        with self.store.transaction() as tx:
            locked = tx.lock_tenants(list(by_tenant))
            for tenant_id in sorted(by_tenant):
                indexes = by_tenant[tenant_id]
                if tenant_id not in locked:
                    for index in indexes:
                        results[index] = NotFound(f"tenant {tenant_id!r} does not exist")
                    continue
                config_version, write_seq = locked[tenant_id]
                tenant = self._configs.get(tenant_id)
                if tenant is None or tenant.version != config_version:
                    tenant = self._load_tenant(tx, tenant_id)
                state = self._states.get(tenant_id)
                if state is None or state.write_seq != write_seq:
                    state = _TenantState(write_seq)  # someone else wrote: forget what we knew
                    self._states[tenant_id] = state
                batch = _TenantBatch(self, tx, tenant, state, now_us)
                batch.write.write_seq = write_seq + 1
                batch.run([(i, operations[i]) for i in indexes], results)
                done.append((batch, write_seq + 1))
            tx.commit()
        for batch, write_seq in done:
            batch.settle(write_seq)
        return results

    # == ledger check ===========================================================================
    def check(self, tenant_id: str) -> CheckReport:
        """Rebuild every counter from the ledger and compare it with the live one."""
        with self.store.transaction() as tx:
            tenant = self._load_tenant(tx, tenant_id)
            entries = list(tx.ledger_entries(tenant_id))
            live = tx.all_counters(tenant_id)
            counted = tx.all_counted(tenant_id)
            held_parts = tx.held_parts(tenant_id)
        now_us = self.clock()
        rebuilt = rebuild_counters(entries)
        report_ = CheckReport(tenant_id, len(entries), len(live))
        held_live: dict[CounterKey, int] = {}
        for _, parts in held_parts:
            for part in parts:
                held_live[(part.budget_id, part.instance)] = (
                    held_live.get((part.budget_id, part.instance), 0) + part.amount
                )
        for key in sorted(set(live) | set(rebuilt)):
            counter = live.get(key) or Counter(key)
            derived = rebuilt.get(key)
            budget = tenant.budget(key[0])
            held = derived.held if derived else 0
            if counter.held != held:
                report_.mismatches.append(f"{key}: held {counter.held} but the ledger gives {held}")
            if held_live.get(key, 0) != counter.held:
                report_.mismatches.append(f"{key}: held {counter.held} but live holds sum to {held_live.get(key, 0)}")
            windows = derived.windows if derived else {}
            if budget is not None and budget.is_rolling:
                floor = rolling_floor(budget.window, now_us)
                for start in sorted(set(counter.buckets) | set(windows)):
                    if start < floor:
                        continue
                    expected = windows.get(start, [0, 0])
                    actual = [counter.buckets.get(start, 0), counter.overrun_buckets.get(start, 0)]
                    if actual != expected:
                        report_.mismatches.append(f"{key} bucket {start}: {actual} but the ledger gives {expected}")
                continue
            expected = windows.get(counter.window_start, [0, 0])
            if [counter.used, counter.overrun] != expected:
                report_.mismatches.append(
                    f"{key} window {counter.window_start}: used/overrun {[counter.used, counter.overrun]}"
                    f" but the ledger gives {expected}"
                )
            if budget is not None and budget.meter.is_distinct:
                stored = counted.get(key, {}).get(counter.window_start, set())
                posted = derived.entities.get(counter.window_start, set()) if derived else set()
                if stored != posted or len(stored) != counter.used:
                    report_.mismatches.append(
                        f"{key}: {len(stored)} entities stored, {len(posted)} posted, used {counter.used}"
                    )
            if counter.held < 0:
                report_.mismatches.append(f"{key}: held is negative ({counter.held})")
            # used + held <= limit is checked when each hold is placed, against the limit then in
            # force; a limit lowered later may legitimately sit below what was already used.
        return report_

    def new_reservation_id(self) -> str:
        """`res_` + this engine's random 64-bit prefix + a sequence number: unique across processes.

        Cheaper than asking the OS for randomness per hold; ids are not secrets (every look-up
        is confined to the caller's tenant).
        """
        return f"res_{self._id_prefix}{next(self._id_sequence):010x}"

    @property
    def batch_size_mean(self) -> float:
        return self.batch_sizes_total / self.batches_executed if self.batches_executed else 0.0


HOLDS_CACHED_MAX = 200_000
"""Most live holds an engine remembers per tenant; past it, they are read back from the store."""
COUNTERS_CACHED_MAX = 200_000


@dataclass(slots=True)
class _TenantState:
    """What this process knows of a tenant's counters and live holds.

    Exact while the tenant's `write_seq` in the store equals `write_seq` here: every writer
    moves the sequence on under the tenant's row lock, so an equal sequence means nobody else
    wrote since this process did, and the batch need not read what it already has.
    """

    write_seq: int
    counters: dict[CounterKey, Counter] = field(default_factory=dict)
    holds: dict[str, Reservation] = field(default_factory=dict)


class _TenantBatch:
    """One tenant's share of a batch: lock, decide in order, write once."""

    def __init__(self, engine: Engine, tx: Transaction, tenant: TenantConfig, state: _TenantState, now_us: int) -> None:
        self.engine = engine
        self.tx = tx
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

    def run(self, items: list[tuple[int, Operation]], results: list[Result | RemitError | BaseException]) -> None:
        tenant_id = self.tenant.tenant_id
        acts = [op for _, op in items if isinstance(op, _Act)]
        resolves = [op for _, op in items if isinstance(op, _Resolve)]
        keys = [op.idempotency_key for op in acts if op.idempotency_key]
        for key, (fingerprint, response) in self.tx.claim_idempotency(tenant_id, keys, self.now_us).items():
            self.answered_keys[key] = (fingerprint, orjson.loads(response))
        self._lock_reservations(resolves)
        self._lock_counters(acts)
        for rid in self.due_ids:
            reservation = self.reservations.get(rid)
            if reservation is not None and reservation.is_overdue(self.now_us):
                self._expire(reservation)
        for index, operation in items:
            try:
                if isinstance(operation, _Act):
                    results[index] = self._act(operation)
                else:
                    results[index] = self._resolve(operation)
            except RemitError as error:
                if isinstance(error, InvariantViolation):
                    raise
                results[index] = error
        self.write.counters = [counter for counter in self.counters.values() if counter.is_dirty]
        self.tx.write(tenant_id, self.write)

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

    # -- locking -------------------------------------------------------------------------------
    def _lock_reservations(self, resolves: list[_Resolve]) -> None:
        held = self.state.holds
        ids = {op.reservation_id for op in resolves}
        # Holds whose lease ran out are expired by the first batch that finds them, so an
        # abandoned hold stops blocking room at its deadline, not at the next sweep.
        self.due_ids = self.tx.due_reservation_ids(self.tenant.tenant_id, self.now_us, EXPIRY_BATCH_SIZE_MAX)
        ids.update(self.due_ids)
        self.reservations = {rid: held[rid] for rid in ids if rid in held}
        missing = [rid for rid in ids if rid not in held]
        if missing:
            self.reservations.update(self.tx.lock_reservations(self.tenant.tenant_id, missing))

    def _consulted_budgets(self, act: _Act) -> list[tuple[Budget, str]]:
        if act.consulted is not None:
            return act.consulted
        chosen = []
        for budget in self.tenant.budgets_on_path(act.agent, act.action):
            meter = budget.meter.name
            if meter not in act.amounts and meter not in act.touches:
                continue
            if budget.is_per_task:
                if act.task is None:
                    continue
                chosen.append((budget, act.task))
            else:
                chosen.append((budget, ""))
        act.consulted = chosen
        return chosen

    def _lock_counters(self, acts: list[_Act]) -> None:
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
        loaded = self.tx.lock_counters(tenant_id, missing) if missing else {}
        rolling = [c for key, c in loaded.items() if (b := self.tenant.budget(key[0])) and b.is_rolling]
        if rolling:
            self.tx.load_buckets(tenant_id, rolling)
        cached.update(loaded)
        self.counters = {key: cached[key] for key in keys}
        for key, counter in self.counters.items():
            budget = self.tenant.budget(key[0])
            if budget is not None:
                counter.advance(budget, self.now_us, self.tenant.timezone, self.engine._bounds)
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
        self.tx.load_counted(tenant_id, wanted)

    # -- authorize and post-hoc usage ----------------------------------------------------------
    def _act(self, act: _Act) -> Decision | UsageResult:
        key = act.idempotency_key
        if key is not None and key in self.answered_keys:
            fingerprint, record = self.answered_keys[key]
            if fingerprint != act.fingerprint:
                raise Conflict(f"idempotency key {key!r} was used for a different request", code="idempotency_mismatch")
            if act.is_usage:
                return _usage_from_record(record)
            return decision_from_record(record)
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

    def _hold(self, act: _Act, consulted: list[Consulted]) -> Decision:
        tz, cache = self.tenant.timezone, self.engine._bounds
        decision, parts, postings = evaluate_authorize(consulted, self.now_us, tz, cache)
        if decision.outcome is not Outcome.ALLOW:
            return decision
        reservation = Reservation(
            tenant_id=act.tenant_id,
            id=self.engine.new_reservation_id(),
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

    def _usage(self, act: _Act, consulted: list[Consulted]) -> UsageResult:
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
        reports = [report(item, self.now_us, self.tenant.timezone, self.engine._bounds) for item in consulted]
        return UsageResult(reports, overrun)

    # -- commit, release, extend, expire -------------------------------------------------------
    def _resolve(self, op: _Resolve) -> Result:
        reservation = self.reservations.get(op.reservation_id)
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

    def _resolved_already(self, reservation: Reservation, op: _Resolve) -> Result:
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

    def _check_actuals(self, reservation: Reservation, op: _Resolve) -> dict[str, int]:
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

    def _commit(self, reservation: Reservation, op: _Resolve) -> CommitResult:
        actuals = self._check_actuals(reservation, op)
        postings, committed, overrun = self._post_actuals(reservation, actuals, is_releasing=True)
        released = {meter: max(0, held - actuals[meter]) for meter, held in reservation.amounts.items()}
        result = CommitResult(reservation.id, "committed", committed, released, overrun)
        self._finish(reservation, Status.COMMITTED, op, result.to_record())
        detail: dict[str, Any] = {"amounts": actuals, "outcome": op.outcome}
        if overrun:
            detail["overrun"] = overrun
        self._entry(EntryKind.COMMIT, reservation, postings, detail)
        return result

    def _commit_late(self, reservation: Reservation, op: _Resolve) -> CommitResult:
        """The hold expired but the work happened: count it now, as usage that was never held."""
        actuals = self._check_actuals(reservation, op)
        postings, committed, overrun = self._post_actuals(reservation, actuals, is_releasing=False)
        result = CommitResult(reservation.id, "committed", committed, {}, overrun, is_late=True)
        self._finish(reservation, Status.COMMITTED, op, result.to_record())
        reservation.was_expired = True
        detail: dict[str, Any] = {"amounts": actuals, "outcome": op.outcome, "late": True}
        if overrun:
            detail["overrun"] = overrun
        self._entry(EntryKind.LATE_COMMIT, reservation, postings, detail)
        return result

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
                committed[meter] = actuals[meter]
            if posting.overrun:
                overrun[meter] = max(overrun.get(meter, 0), posting.overrun)
        return postings, committed, overrun

    def _release(self, reservation: Reservation, op: _Resolve) -> ReleaseResult:
        postings = [
            self._release_part(self.tenant.budget(part.budget_id), self.counters[(part.budget_id, part.instance)], part)
            for part in reservation.parts
        ]
        result = ReleaseResult(reservation.id, "released", dict(reservation.amounts))
        self._finish(reservation, Status.RELEASED, op, result.to_record())
        self._entry(EntryKind.RELEASE, reservation, postings, {})
        return result

    def _expire(self, reservation: Reservation) -> None:
        postings = [
            self._release_part(self.tenant.budget(part.budget_id), self.counters[(part.budget_id, part.instance)], part)
            for part in reservation.parts
        ]
        reservation.status = Status.EXPIRED
        reservation.resolved_at_us = self.now_us
        self.expired_ids.add(reservation.id)
        self._changed(reservation)
        self._entry(EntryKind.EXPIRE, reservation, postings, {"lease_expires_at_us": reservation.lease_expires_at_us})

    def _release_part(self, budget: Budget | None, counter: Counter, part: HoldPart) -> Posting:
        if budget is None:
            counter.held -= part.amount
            counter.is_dirty = True
            return Posting(part.budget_id, part.instance, counter.window_start, held=-part.amount)
        return release_hold(budget, counter, part, self.now_us)

    def _finish(self, reservation: Reservation, status: Status, op: _Resolve, record: dict[str, Any]) -> None:
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


def _resolve_fingerprint(op: _Resolve) -> str:
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
