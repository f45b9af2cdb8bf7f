"""The engine: authorize / commit / release / extend / expire, decided in batches.

Requests that arrive together are decided in one store transaction: for each tenant (in id
order) the batch locks the tenant's row, claims idempotency keys, locks the reservations it
resolves, then the counters of every budget it touches, each in key order; decides each request
in arrival order against those counters (`remit.batch`); and writes counters, reservations and
ledger entries once. Callers are answered after the commit, so an answer is never given for
work the store could still lose.

The batch core (`execute`) is synchronous. `submit` lets many threads share it (one of them
leads a batch while the others wait for their answers); `remit.batching.AsyncBatcher` derives
the asyncio front from the same core.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson

from remit import config as config_io
from remit.batch import NeedsRead, TenantBatch, TenantState
from remit.domain.budgets import Counter, CounterKey
from remit.domain.decisions import Decision
from remit.domain.ledger import EntryKind, LedgerEntry, rebuild_counters
from remit.domain.tenant import TenantConfig
from remit.domain.windows import BoundsCache, rolling_floor
from remit.errors import Conflict, InvalidRequest, NotFound, Overloaded, RemitError, batch_failure
from remit.limits import BATCH_SIZE_MAX, EXPIRY_BATCH_SIZE_MAX, LEASE_SECONDS_DEFAULT, QUEUE_LENGTH_MAX
from remit.operations import (
    ActionInput,
    Operation,
    Resolve,
    Result,
    check_key,
    check_name,
    expect_result,
    lease_us,
    parse_act,
    parse_amounts,
)
from remit.results import CheckReport, CommitResult, ExtendResult, ReleaseResult, UsageResult
from remit.store.base import BatchWrite, Store, TenantMoved, Transaction, dumps

__all__ = ["ActionInput", "Clock", "Engine", "Operation", "Result", "expect_result", "system_clock"]

Clock = Callable[[], int]
"""Returns now in integer microseconds since the Unix epoch."""

BATCH_ATTEMPTS_MAX = 5
"""A batch that loses a deadlock or lock wait to another process is retried this many times."""


RESERVATION_IDS_PER_FETCH = 1024
"""Reservation ids whose random parts one call to the OS's random source provides."""


def system_clock() -> int:
    return time.time_ns() // 1000


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


class Engine:
    """Decides actions against the budgets in a store. Thread-safe; one per process is enough."""

    def __init__(self, store: Store, *, clock: Clock = system_clock, batch_size_max: int = BATCH_SIZE_MAX) -> None:
        self.store = store
        self.clock = clock
        self.batch_size_max = batch_size_max
        self._configs: dict[str, TenantConfig] = {}
        self._bounds = BoundsCache()
        self._states: dict[str, TenantState] = {}
        self._execute_lock = threading.Lock()
        """One batch at a time per engine: the in-memory tenant state has a single writer."""
        self._queue: list[_Waiter] = []
        self._queue_lock = threading.Lock()
        self._is_leading = False
        self.batches_executed = 0
        self.batch_sizes_total = 0
        self.batch_observer: Callable[[int], None] | None = None
        """Called with each executed batch's size (the server's metrics)."""
        self._random_parts: list[str] = []
        """Ids' random parts, fetched from the OS RESERVATION_IDS_PER_FETCH at a time (under the batch lock)."""

    # == tenants and configuration ==============================================================
    def create_tenant(self, tenant_id: str, *, name: str | None = None, timezone: str = "UTC") -> None:
        check_name(tenant_id, "tenant")
        if not config_io.is_known_timezone(timezone):
            # A tenant made with it could never load its config: every request would fail.
            raise InvalidRequest(f"unknown IANA time zone {timezone!r}", code="invalid_field", field="timezone")
        with self.store.transaction() as tx:
            tx.create_tenant(tenant_id, name or tenant_id, timezone, self.clock())
            tx.commit()

    def apply_config(
        self,
        tenant_id: str,
        document: Mapping[str, Any],
        *,
        source: str = "<config>",
        is_dry_run: bool = False,
        expected_version: int | None = None,
        on_apply: Callable[[Transaction, TenantConfig, TenantConfig], None] | None = None,
    ) -> TenantConfig:
        """Validate and apply a config document. Counters of budgets that keep their id keep their usage.

        A dry run checks everything an apply would and returns the config it would make,
        changing nothing. `expected_version` refuses the apply (`config_changed`) if another
        writer applied a config since the caller read version `expected_version`. `on_apply(tx,
        old, new)` runs in the apply's own transaction, so what it writes lands with the config or
        not at all (the service revokes removed agents' keys there).
        """
        parsed = config_io.parse_document(document, source=source)
        now_us = self.clock()
        for _ in range(BATCH_ATTEMPTS_MAX):
            try:
                with self.store.transaction() as tx:
                    # The tenant lock orders this change with every batch of the tenant.
                    if tenant_id not in tx.lock_tenants([tenant_id]):
                        raise NotFound(f"tenant {tenant_id!r} does not exist")
                    row = tx.load_tenant(tenant_id)
                    if row is None:
                        raise NotFound(f"tenant {tenant_id!r} does not exist")
                    if expected_version is not None and row.config_version != expected_version:
                        raise Conflict(
                            f"the config changed (version {row.config_version}, expected {expected_version}); "
                            "read it again and retry",
                            code="config_changed",
                        )
                    effective = config_io.with_timezone(parsed, row.timezone)
                    canonical = dumps(effective.document)
                    if orjson.loads(row.config) == effective.document:  # key order does not make a change
                        return self._load_tenant(tx, tenant_id)  # unchanged: nothing to apply or record
                    tenant = config_io.build_tenant(tenant_id, effective.document, row.config_version + 1)
                    old = config_io.build_tenant(
                        tenant_id, orjson.loads(row.config), row.config_version, timezone=row.timezone
                    )
                    has_usage = any(c.used or c.held for c in tx.all_counters(tenant_id).values())
                    lineage = config_io.extend_lineage(orjson.loads(row.lineage), old)
                    problems = config_io.transition_problems(lineage, old, tenant, has_usage=has_usage)
                    if problems:
                        raise config_io.config_error(source, problems)
                    if is_dry_run:
                        return tenant
                    lineage = config_io.extend_lineage(lineage, tenant)
                    version = tx.save_config(tenant_id, tenant.timezone.key, canonical, dumps(lineage))
                    tenant.version = version
                    tx.lock_counters(tenant_id, [(b.id, "") for b in tenant.budgets if not b.is_per_task])
                    entry = LedgerEntry(
                        EntryKind.CONFIG,
                        tenant_id,
                        now_us,
                        detail={"version": version, "sha256": hashlib.sha256(canonical.encode()).hexdigest()},
                    )
                    tx.write(tenant_id, BatchWrite(entries=[entry]))
                    if on_apply is not None:
                        on_apply(tx, old, tenant)
                    tx.commit()
            except Exception as error:
                if not self._is_retryable(error):
                    raise
                continue
            self._configs[tenant_id] = tenant
            return tenant
        raise Overloaded("could not apply the config: the store stayed busy")

    def config_document(self, tenant_id: str) -> tuple[int, dict[str, Any]]:
        """The stored config document (defaults filled in) and its version, read now."""
        with self.store.transaction(is_read_only=True) as tx:
            row = tx.load_tenant(tenant_id)
        if row is None:
            raise NotFound(f"tenant {tenant_id!r} does not exist")
        document: dict[str, Any] = orjson.loads(row.config)
        return row.config_version, document

    def fresh_config(self, tx: Transaction, tenant_id: str) -> TenantConfig:
        """The tenant's config as stored now: the cached one unless another writer applied since."""
        row = tx.load_tenant(tenant_id)
        if row is None:
            raise NotFound(f"tenant {tenant_id!r} does not exist")
        cached = self._configs.get(tenant_id)
        if cached is not None and cached.version == row.config_version:
            return cached
        tenant = config_io.build_tenant(tenant_id, orjson.loads(row.config), row.config_version, timezone=row.timezone)
        self._configs[tenant_id] = tenant
        return tenant

    def store_is_ready(self) -> None:
        """Raises unless the store answers a read now (the server's readiness probe)."""
        with self.store.transaction(is_read_only=True) as tx:
            tx.load_tenant("")

    def holds_live(self) -> int:
        with self.store.transaction(is_read_only=True) as tx:
            return tx.count_held()

    def tenant_config(self, tenant_id: str) -> TenantConfig:
        """The tenant's config as this process last loaded it (loaded now if never)."""
        tenant = self._configs.get(tenant_id)
        if tenant is None:
            with self.store.transaction(is_read_only=True) as tx:  # one row read: no writers' lock
                tenant = self._load_tenant(tx, tenant_id)
        return tenant

    def _load_tenant(self, tx: Transaction, tenant_id: str) -> TenantConfig:
        row = tx.load_tenant(tenant_id)
        if row is None:
            raise NotFound(f"tenant {tenant_id!r} does not exist")
        tenant = config_io.build_tenant(tenant_id, orjson.loads(row.config), row.config_version, timezone=row.timezone)
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

    def _parse_act(self, tenant_id: str, request: ActionInput, *, is_usage: bool) -> Operation:
        tenant = self.tenant_config(check_name(tenant_id, "tenant"))
        try:
            return parse_act(tenant, request, is_usage=is_usage)
        except InvalidRequest as error:
            if error.code not in {"unknown_agent", "unknown_meter"}:
                raise
            # Another process may have added the agent or meter: look once more, from the store.
            with self.store.transaction() as tx:
                fresh = self._load_tenant(tx, tenant_id)
            if fresh.version == tenant.version:
                raise
            return parse_act(fresh, request, is_usage=is_usage)

    def commit_operation(
        self,
        tenant_id: str,
        reservation_id: str,
        amounts: Mapping[str, str | int] | None = None,
        *,
        outcome: str = "success",
        idempotency_key: str | None = None,
        agent: str | None = None,
    ) -> Operation:
        tenant = self.tenant_config(check_name(tenant_id, "tenant"))
        parsed = None if amounts is None else parse_amounts(tenant, amounts, "amounts")
        return Resolve(
            tenant_id,
            "commit",
            check_name(reservation_id, "reservation"),
            parsed,
            check_name(outcome, "outcome"),
            check_key(idempotency_key),
            agent=agent,
        )

    def release_operation(
        self, tenant_id: str, reservation_id: str, *, idempotency_key: str | None = None, agent: str | None = None
    ) -> Operation:
        return Resolve(
            check_name(tenant_id, "tenant"),
            "release",
            check_name(reservation_id, "reservation"),
            idempotency_key=check_key(idempotency_key),
            agent=agent,
        )

    def extend_operation(
        self,
        tenant_id: str,
        reservation_id: str,
        lease_seconds: int = LEASE_SECONDS_DEFAULT,
        *,
        agent: str | None = None,
    ) -> Operation:
        return Resolve(
            check_name(tenant_id, "tenant"),
            "extend",
            check_name(reservation_id, "reservation"),
            lease_us=lease_us(lease_seconds),
            agent=agent,
        )

    def expire_holds(self, limit: int = EXPIRY_BATCH_SIZE_MAX) -> int:
        """Expire holds whose lease has run out; returns how many. Safe to run in every process."""
        now_us = self.clock()
        with self.store.transaction(is_read_only=True) as tx:  # the batch below re-checks under its locks
            due = tx.due_reservations(now_us, limit)
        if not due:
            return 0
        results = self.execute([Resolve(tenant, "expire", rid) for tenant, rid in due])
        return sum(1 for result in results if isinstance(result, ReleaseResult))

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
            try:
                waiter.signal.wait()
            except BaseException:
                self._abandon(waiter)  # interrupted (KeyboardInterrupt): never leave the lead to nobody
                raise
        if not waiter.is_finished:
            self._lead(waiter)
        if waiter.error is not None:
            raise waiter.error
        return waiter.result

    def _abandon(self, waiter: _Waiter) -> None:
        """A waiting thread is leaving: take its request out, and pass the lead on if it had it."""
        with self._queue_lock:
            if waiter in self._queue:
                self._queue.remove(waiter)
            if waiter.is_leader and not waiter.is_finished:
                if self._queue:
                    successor = self._queue[0]
                    successor.is_leader = True
                    successor.signal.set()
                else:
                    self._is_leading = False

    def _lead(self, own: _Waiter) -> None:
        while not own.is_finished:
            with self._queue_lock:
                batch = self._queue[: self.batch_size_max]
                del self._queue[: self.batch_size_max]
            try:
                results = self.execute([waiter.operation for waiter in batch])
            except BaseException as error:  # every waiter must hear of the failure, then it propagates
                results = [batch_failure(error) for _ in batch]
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
        with self._execute_lock:
            return self._execute_with_retries(operations)

    def try_execute(self, operations: Sequence[Operation]) -> list[Result | RemitError | BaseException] | None:
        """`execute` if it can start at once — no batch of this engine running, the store's
        writers' lock free (`Store.try_writer_lock`) — else None, having waited for nothing.

        For a caller that must not block (the asyncio batcher on an in-process store): it
        retries later instead. Taking both locks without waiting keeps their order irrelevant.
        A refused owned claim is run again at once if the writers' lock is still free; any
        other retryable failure (rolled back, nothing applied) also returns None, so the
        caller's backoff, not a sleep here, waits for the store.
        """
        if not self._execute_lock.acquire(blocking=False):
            return None
        try:
            for _ in range(BATCH_ATTEMPTS_MAX):
                # Each attempt takes the lock afresh: the rollback of a failed one let it go.
                if not self.store.try_writer_lock():
                    return None
                try:
                    return self._execute_once(operations)
                except TenantMoved:
                    continue  # nothing was applied; run again at once, the ordinary way
                except Exception as error:
                    if self._is_retryable(error):
                        return None  # nothing was applied; the caller waits (not here) and tries again
                    raise
                finally:
                    self.store.release_writer_lock()  # a no-op once the batch's commit or rollback let it go
            return None
        finally:
            self._execute_lock.release()

    def _execute_with_retries(self, operations: Sequence[Operation]) -> list[Result | RemitError | BaseException]:
        for attempt in range(BATCH_ATTEMPTS_MAX):
            try:
                return self._execute_once(operations)
            except Exception as error:
                if attempt + 1 < BATCH_ATTEMPTS_MAX and self._is_retryable(error):
                    if not isinstance(error, TenantMoved):  # that one is run again at once, reading
                        time.sleep(0.001 * (attempt + 1))
                    continue
                raise
        raise Overloaded("the store stayed busy")  # pragma: no cover - the loop returns or raises

    def _is_retryable(self, error: Exception) -> bool:
        if isinstance(error, TenantMoved):
            return True
        name = type(error).__name__
        if name in {"DeadlockDetected", "SerializationFailure", "LockNotAvailable"}:
            return True
        return name == "OperationalError" and "locked" in str(error)

    def _execute_once(self, operations: Sequence[Operation]) -> list[Result | RemitError | BaseException]:
        """One attempt, under `_execute_lock` (one batch at a time per engine)."""
        by_tenant: dict[str, list[int]] = {}
        for index, operation in enumerate(operations):
            by_tenant.setdefault(operation.tenant_id, []).append(index)
        try:
            results = self._execute_locked(operations, by_tenant)
        except BaseException:
            # Counters and holds were changed in memory for a transaction that did not commit.
            for tenant_id in by_tenant:
                self._states.pop(tenant_id, None)
            raise
        self.batches_executed += 1
        self.batch_sizes_total += len(operations)
        if self.batch_observer is not None:
            self.batch_observer(len(operations))
        return results

    def _execute_locked(
        self, operations: Sequence[Operation], by_tenant: dict[str, list[int]]
    ) -> list[Result | RemitError | BaseException]:
        owned = self._execute_owned(operations, by_tenant)
        if owned is not None:
            return owned
        results: list[Result | RemitError | BaseException] = [None] * len(operations)
        done: list[tuple[TenantBatch, int]] = []
        with self.store.transaction() as tx:
            claims = tx.claim_tenants(list(by_tenant))
            # Read after the tenant locks: a batch that waited for another writer decides at the
            # time it runs, not the time it started waiting.
            now_us = self.clock()
            for tenant_id in sorted(by_tenant):
                indexes = by_tenant[tenant_id]
                claim = claims.get(tenant_id)
                if claim is None:
                    for index in indexes:
                        results[index] = NotFound(f"tenant {tenant_id!r} does not exist")
                    continue
                tenant = self._configs.get(tenant_id)
                if tenant is None or tenant.version != claim.config_version:
                    tenant = self._load_tenant(tx, tenant_id)
                state = self._states.get(tenant_id)
                if state is None or state.write_seq != claim.write_seq:
                    state = TenantState(claim.write_seq)  # someone else wrote: forget what we knew
                    self._states[tenant_id] = state
                else:
                    state.is_owned = True  # nobody else wrote since our last batch either
                batch = self._tenant_batch(tenant, state, now_us, next_due_us=claim.next_due_us)
                batch.run(tx, [(i, operations[i]) for i in indexes], results)
                done.append((batch, claim.write_seq + 1))
            tx.commit()
        for batch, write_seq in done:
            batch.settle(write_seq)
        return results

    def _tenant_batch(
        self,
        tenant: TenantConfig,
        state: TenantState,
        now_us: int,
        *,
        next_due_us: int,
        is_owned: bool = False,
    ) -> TenantBatch:
        return TenantBatch(
            tenant,
            state,
            now_us,
            next_due_us=next_due_us,
            bounds=self._bounds,
            new_reservation_id=self.new_reservation_id,
            is_owned=is_owned,
        )

    def _execute_owned(
        self, operations: Sequence[Operation], by_tenant: dict[str, list[int]]
    ) -> list[Result | RemitError | BaseException] | None:
        """The batch decided from memory, if every tenant of it is owned (`TenantState.is_owned`)
        and has in memory all the batch needs; else None, having sent nothing.

        An ordinary batch claims its tenants first, then reads what it lacks, decides, writes
        and commits: on PostgreSQL five round trips or so, each under the tenant's row lock and
        each a wait for two processes to be scheduled on a busy machine. An owned one decides
        first, then sends the claim, the writes and the commit together: one round trip. The
        claim moves each tenant's `write_seq` on only if it is still the one this engine wrote
        (under the same config); if another writer came in between, the transaction fails
        whole (`TenantMoved`) and `_execute_once` runs the batch again the ordinary way.
        Deciding before the claim is sound for the same reason keeping the state is: no one
        else changed the tenant since this engine's last batch, or nothing is applied.
        """
        now_us = self.clock()
        batches: list[tuple[TenantBatch, list[tuple[int, Operation]]]] = []
        for tenant_id in sorted(by_tenant):  # before any transaction: an ordinary batch opens its own
            state = self._states.get(tenant_id)
            tenant = self._configs.get(tenant_id)
            if state is None or not state.is_owned or tenant is None or tenant.version != state.config_version:
                return None
            batch = self._tenant_batch(tenant, state, now_us, next_due_us=state.next_due_us, is_owned=True)
            items = [(i, operations[i]) for i in by_tenant[tenant_id]]
            if batch.reads_needed(items):
                return None
            batches.append((batch, items))
        results: list[Result | RemitError | BaseException] = [None] * len(operations)
        with self.store.transaction() as tx:
            tx.claim_owned([(b.tenant.tenant_id, b.state.write_seq, b.tenant.version) for b, _ in batches])
            try:
                for batch, items in batches:
                    batch.run(tx, items, results)
            except NeedsRead:
                for batch, _ in batches:  # what it decided so far changed counters in memory
                    self._states.pop(batch.tenant.tenant_id, None)
                return None
            tx.commit()
        for batch, _ in batches:
            batch.settle(batch.state.write_seq + 1)
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
        """`res_` + the millisecond (48 bits) + 80 random bits, in hex: unique across processes,
        and saying nothing of how many holds this process (or any other tenant) made — a
        sequence would leak other tenants' traffic.

        The time leads (as in UUIDv7) so new rows land at the right edge of the reservations'
        primary key instead of on a random page: fully random ids made every batch dirty a page
        per hold, and cost ~20 µs per authorize+commit pair on SQLite (measured in-process,
        128-operation batches).
        """
        if not self._random_parts:
            # One getrandom() per 1,024 ids: a call per id was ~5 % of a batch's time (py-spy, bench/http.py).
            text = secrets.token_hex(10 * RESERVATION_IDS_PER_FETCH)
            self._random_parts = [text[start : start + 20] for start in range(0, len(text), 20)]
        return f"res_{time.time_ns() // 1_000_000 & 0xFFFF_FFFF_FFFF:012x}{self._random_parts.pop()}"

    @property
    def batch_size_mean(self) -> float:
        return self.batch_sizes_total / self.batches_executed if self.batches_executed else 0.0
