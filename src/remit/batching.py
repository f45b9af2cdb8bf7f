"""The asyncio front of the engine: coroutines submit operations, one task runs the batches.

Derived from the synchronous core. On PostgreSQL a batch runs in a worker thread
(`Engine.execute`), so the event loop keeps accepting requests while the batch waits on the
database; on SQLite, all CPU, it runs on the loop's own thread once it can start at once
(`Engine.try_execute`; see `AsyncBatcher._execute`). Either way, everything that arrives
meanwhile forms the next batch.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from remit.domain.decisions import Decision
from remit.engine import ActionInput, Engine, Operation, Result, expect_result
from remit.errors import Overloaded, batch_failure
from remit.limits import LEASE_SECONDS_DEFAULT, QUEUE_LENGTH_MAX, QUEUE_LENGTH_PER_TENANT_MAX
from remit.operations import Act
from remit.results import CommitResult, ExtendResult, ReleaseResult, UsageResult

IN_LOOP_WAIT_SECONDS_MAX = 1.0
"""How long an in-process batch keeps looking for a free writers' lock from the loop before the
worker thread waits for it (bounded by the store's own timeout)."""
IN_LOOP_RETRY_SECONDS_MIN = 0.000_05
IN_LOOP_RETRY_SECONDS_MAX = 0.001
"""The loop looks again after 50 µs, doubling up to every 1 ms."""


class AsyncBatcher:
    """Batches operations from many coroutines into `Engine.execute` calls, one at a time."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._pending: list[tuple[Operation, asyncio.Future[Result]]] = []
        self._waiting_by_tenant: Counter[str] = Counter()
        """Requests of each tenant in `_pending`: one tenant cannot fill the whole queue."""
        self._is_draining = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="remit-batch")
        self._idle = asyncio.Event()
        self._idle.set()
        self._drainer: asyncio.Task[None] | None = None
        """Held so the running drain task is not garbage-collected mid-batch."""

    @property
    def queue_length(self) -> int:
        return len(self._pending)

    async def submit(self, operation: Operation) -> Result:
        self._check_room(operation)
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._enqueue(operation, future)
        return await future

    def enqueue_all(self, operations: Sequence[Operation]) -> list[asyncio.Future[Result]]:
        """Queue many requests at once without a coroutine each; a future per request, in order
        (the engine host's side of a relayed frame, `remit.relay`). A request refused for room
        gets its error in its future. Cancelling a future whose request was allowed releases
        the hold it got, as for any cancelled caller (`_answer`)."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Result]] = []
        for operation in operations:
            future: asyncio.Future[Result] = loop.create_future()
            try:
                self._check_room(operation)
            except Overloaded as error:
                future.set_exception(error)
            else:
                self._enqueue(operation, future)
            futures.append(future)
        return futures

    def _check_room(self, operation: Operation) -> None:
        if len(self._pending) >= QUEUE_LENGTH_MAX:
            raise Overloaded(f"more than {QUEUE_LENGTH_MAX} requests are waiting; retry shortly")
        if self._waiting_by_tenant[operation.tenant_id] >= QUEUE_LENGTH_PER_TENANT_MAX:
            raise Overloaded(
                f"more than {QUEUE_LENGTH_PER_TENANT_MAX} requests of this tenant are waiting; retry shortly"
            )

    def _enqueue(self, operation: Operation, future: asyncio.Future[Result]) -> None:
        self._pending.append((operation, future))
        self._waiting_by_tenant[operation.tenant_id] += 1
        if not self._is_draining:
            self._is_draining = True
            self._idle.clear()
            self._drainer = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch = self._take_batch()
                try:
                    results = await self._execute([op for op, _ in batch], loop)
                except BaseException as error:  # every caller of the failed batch hears of it
                    self._fail(batch, error)
                    if not isinstance(error, Exception):
                        raise
                    continue
                self._answer(batch, results)
        finally:
            self._is_draining = False
            self._idle.set()

    def _take_batch(self) -> list[tuple[Operation, asyncio.Future[Result]]]:
        """The oldest waiting requests, as many as one batch takes, out of the queue."""
        size = self.engine.batch_size_max
        batch, self._pending = self._pending[:size], self._pending[size:]
        for operation, _ in batch:
            self._waiting_by_tenant[operation.tenant_id] -= 1
            if not self._waiting_by_tenant[operation.tenant_id]:
                del self._waiting_by_tenant[operation.tenant_id]
        return batch

    @staticmethod
    def _fail(batch: list[tuple[Operation, asyncio.Future[Result]]], error: BaseException) -> None:
        for _, future in batch:
            if not future.done():
                future.set_exception(batch_failure(error))

    async def _execute(
        self, operations: list[Operation], loop: asyncio.AbstractEventLoop
    ) -> list[Result | BaseException]:
        """A store across the network is waited on from the worker thread. An in-process one
        (SQLite) is all CPU: its batch runs right here on the event loop's thread once it can
        start without waiting, which spares the batch thread's wait for the GIL at every store
        call (up to the switch interval each, some ten per batch, while holding the write lock
        every other process waits for). Busy, it looks again after 50 µs, doubling to every
        1 ms, and after IN_LOOP_WAIT_SECONDS_MAX hands the batch to the thread's bounded wait.
        """
        engine = self.engine
        if not engine.store.is_in_process:
            return await loop.run_in_executor(self._executor, engine.execute, operations)
        deadline = loop.time() + IN_LOOP_WAIT_SECONDS_MAX
        pause = IN_LOOP_RETRY_SECONDS_MIN
        while (results := engine.try_execute(operations)) is None:
            if loop.time() >= deadline:
                return await loop.run_in_executor(self._executor, engine.execute, operations)
            await asyncio.sleep(pause)
            pause = min(pause * 2, IN_LOOP_RETRY_SECONDS_MAX)
        return results

    def _answer(
        self, batch: list[tuple[Operation, asyncio.Future[Result]]], results: list[Result | BaseException]
    ) -> None:
        for (operation, future), result in zip(batch, results, strict=True):
            if future.done():  # the caller was cancelled while its batch ran
                self.release_unheard(operation, result)
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

    def release_unheard(self, operation: Operation, result: Result | BaseException) -> None:
        """Release at once (queued like any request) a hold whose caller will never hear of it:
        it would block room until its lease ran out. Not if the request carried an idempotency
        key: its retry gets this same hold back (and a replayed answer may be another caller's
        live hold)."""
        is_keyless = isinstance(operation, Act) and operation.idempotency_key is None
        if is_keyless and isinstance(result, Decision) and result.reservation_id is not None:
            release = self.engine.release_operation(operation.tenant_id, result.reservation_id)
            orphan: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
            orphan.add_done_callback(_ignore_outcome)
            self._enqueue(release, orphan)

    async def drain(self) -> None:
        """Wait until every submitted operation has been decided (for graceful shutdown)."""
        await self._idle.wait()

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    # -- the engine's request methods, awaited -------------------------------------------------
    async def authorize(self, tenant_id: str, request: ActionInput) -> Decision:
        return expect_result(await self.submit(self.engine.authorize_operation(tenant_id, request)), Decision)

    async def report_usage(self, tenant_id: str, request: ActionInput) -> UsageResult:
        return expect_result(await self.submit(self.engine.usage_operation(tenant_id, request)), UsageResult)

    async def commit(
        self,
        tenant_id: str,
        reservation_id: str,
        amounts: Mapping[str, str | int] | None = None,
        *,
        outcome: str = "success",
        idempotency_key: str | None = None,
        agent: str | None = None,
    ) -> CommitResult:
        operation = self.engine.commit_operation(
            tenant_id, reservation_id, amounts, outcome=outcome, idempotency_key=idempotency_key, agent=agent
        )
        return expect_result(await self.submit(operation), CommitResult)

    async def release(
        self, tenant_id: str, reservation_id: str, *, idempotency_key: str | None = None, agent: str | None = None
    ) -> ReleaseResult:
        operation = self.engine.release_operation(
            tenant_id, reservation_id, idempotency_key=idempotency_key, agent=agent
        )
        return expect_result(await self.submit(operation), ReleaseResult)

    async def extend(
        self,
        tenant_id: str,
        reservation_id: str,
        lease_seconds: int = LEASE_SECONDS_DEFAULT,
        *,
        agent: str | None = None,
    ) -> ExtendResult:
        operation = self.engine.extend_operation(tenant_id, reservation_id, lease_seconds, agent=agent)
        return expect_result(await self.submit(operation), ExtendResult)


def _ignore_outcome(future: asyncio.Future[Result]) -> None:
    """Retrieve an orphan release's outcome so asyncio does not log it as never retrieved."""
    if not future.cancelled():
        future.exception()
