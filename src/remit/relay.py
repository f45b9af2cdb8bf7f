"""Decisions of a node's worker processes, relayed to one engine (`remit serve --workers N`).

Each worker used to decide its own batches. The workers of one node then took turns on every
hot tenant's row lock, each batch re-reading the counters and holds the other worker had just
written, and each worker's batch thread waited for the GIL behind its own process's HTTP work
while it held that lock. Here the workers still parse, authenticate and validate requests and
format the answers; the validated operations go over a Unix socket to the node's engine host —
a thread of the supervisor with its own store, engine and `AsyncBatcher`, which also runs the
expiry sweep and checkpoints — and it decides what all workers send in shared batches, keeping
each tenant's counters and holds in memory between them. Several nodes on one database still
order their batches by the tenant row lock, as any writers do.

Frames are a 4-byte big-endian length and a pickle. Worker → host: a list of operations. Host →
worker: their answers in order (a result or a RemitError each) and the sizes of the batches the
host ran since its last frame (the worker's `/metrics`). Frames are answered in the order sent,
so they carry no ids; a worker keeps a few in flight (`RelayBatcher`).

Unpickling runs whatever code the stream names, so only the node's own processes may reach the
socket: it lives in a directory only the server's user can enter (`server.py` makes it 0700).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import pickle
import struct
import threading
from typing import Any, cast

import uvloop

from remit.batching import AsyncBatcher
from remit.bootstrap import open_store
from remit.domain.decisions import BudgetReport, Decision, Outcome, Priority, Reason, ReasonCode
from remit.domain.tenant import Agent
from remit.engine import Engine, Operation, Result
from remit.errors import Overloaded, RemitError, Unavailable, batch_failure
from remit.limits import (
    EXPIRY_SWEEP_SECONDS_DEFAULT,
    RELAY_FRAME_BYTES_MAX,
    RELAY_FRAMES_IN_FLIGHT_MAX,
    SHUTDOWN_GRACE_SECONDS_MAX,
)
from remit.operations import Act, Resolve
from remit.upkeep import start_upkeep

log = logging.getLogger("remit.requests")

_HEADER = struct.Struct(">I")
HOST_STOP_SECONDS_MAX = 6 * SHUTDOWN_GRACE_SECONDS_MAX
"""How long stopping the host waits for its last batches and its store (statement timeouts bound both)."""

Answer = Result | RemitError
Pending = tuple[Operation, "asyncio.Future[Result]"]


def encode_frame(payload: object) -> bytes:
    data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    if len(data) > RELAY_FRAME_BYTES_MAX:
        raise Overloaded(f"a batch of over {RELAY_FRAME_BYTES_MAX} bytes cannot be relayed; send smaller requests")
    return _HEADER.pack(len(data)) + data


async def read_frame(reader: asyncio.StreamReader) -> Any:
    """The next frame's payload; None once the other side has closed the stream between frames."""
    try:
        header = await reader.readexactly(_HEADER.size)
    except asyncio.IncompleteReadError as error:
        if not error.partial:
            return None
        raise
    (length,) = _HEADER.unpack(header)
    if length > RELAY_FRAME_BYTES_MAX:
        raise ConnectionError(f"a relay frame says it holds {length} bytes: the stream is broken")
    return pickle.loads(await reader.readexactly(length))


# Acts and decisions, the bulk of the traffic, go as plain tuples: pickling their dataclasses
# field by field cost ~16 µs per authorize there and back, the tuples ~2 µs (measured with 64 of each).
_ACT = 0
_DECISION = 1


def pack_operation(operation: Operation) -> object:
    if not isinstance(operation, Act):
        return operation
    agent = operation.agent
    return (
        _ACT,
        operation.tenant_id,
        (agent.name, agent.scope, agent.priority.value, agent.owner),
        operation.action,
        operation.amounts,
        operation.touches,
        operation.task,
        operation.context,
        operation.priority.value,
        operation.lease_us,
        operation.idempotency_key,
        operation.fingerprint,
        operation.is_usage,
    )


def unpack_operation(packed: Any) -> Operation:
    if not isinstance(packed, tuple):
        if not isinstance(packed, Act | Resolve):
            raise ConnectionError(f"a relay frame holds a {type(packed).__name__}, not an operation")
        return packed
    (_, tenant_id, (name, scope, agent_priority, owner), action, amounts, touches, task, context,
     priority, lease_us, idempotency_key, fingerprint, is_usage) = packed  # fmt: skip
    return Act(
        tenant_id,
        Agent(name, scope, Priority(agent_priority), owner),
        action,
        amounts,
        touches,
        task,
        context,
        Priority(priority),
        lease_us,
        idempotency_key,
        fingerprint,
        is_usage,
    )


def pack_answer(answer: Answer) -> object:
    if not isinstance(answer, Decision):
        return answer
    return (
        _DECISION,
        answer.outcome.value,
        [_report_fields(report) for report in answer.budgets],
        [(reason.code.value, reason.budget, reason.message) for reason in answer.reasons],
        answer.reservation_id,
        answer.lease_expires_at_us,
        answer.retry_after_seconds,
    )


def _report_fields(r: BudgetReport) -> tuple[Any, ...]:
    return (r.budget, r.scope, r.meter, r.window, r.scale, r.limit, r.used, r.held, r.requested, r.remaining,
            r.resets_at_us, r.is_shadow)  # fmt: skip


def unpack_answer(packed: Any) -> Result | BaseException:
    if not isinstance(packed, tuple):
        return cast(Result | BaseException, packed)
    _, outcome, budgets, reasons, reservation_id, lease_expires_at_us, retry_after_seconds = packed
    return Decision(
        Outcome(outcome),
        [BudgetReport(*report) for report in budgets],
        [Reason(ReasonCode(code), budget, message) for code, budget, message in reasons],
        reservation_id,
        lease_expires_at_us,
        retry_after_seconds,
    )


def _portable(answer: Result | BaseException) -> Answer:
    """What a worker can be sent: results and Remit's own errors as they are, anything else as
    the `unavailable` a caller of a failed batch gets in a single process."""
    if isinstance(answer, RemitError) or not isinstance(answer, BaseException):
        return answer
    if isinstance(answer, Exception):
        return cast(RemitError, batch_failure(answer))  # an Exception always becomes a RemitError
    return Unavailable(f"the request was not decided ({type(answer).__name__}); retry")


class RelayBatcher(AsyncBatcher):
    """A worker's batcher: its batches are decided by the engine host at `path`.

    Up to RELAY_FRAMES_IN_FLIGHT_MAX frames are out at once, answered in the order sent: while the
    host decides one, the worker answers the previous one's callers and reads new requests, so
    neither side waits for the other. With one frame at a time both sides took turns idling
    (bench/http.py on PostgreSQL: the host's batch thread was idle a third of the time).
    The queue limits and the release of holds whose caller is gone are `AsyncBatcher`'s.
    """

    def __init__(self, engine: Engine, path: str) -> None:
        super().__init__(engine)
        self.path = path
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._in_flight: collections.deque[list[Pending]] = collections.deque()
        self._frame_answered = asyncio.Event()

    async def _drain(self) -> None:
        try:
            while self._pending:
                if len(self._in_flight) >= RELAY_FRAMES_IN_FLIGHT_MAX:
                    self._frame_answered.clear()
                    await self._frame_answered.wait()
                    continue
                batch = self._take_batch()
                try:
                    await self._send(batch)
                except BaseException as error:
                    self._fail(batch, error)
                    if not isinstance(error, Exception):
                        raise
        finally:
            self._is_draining = False
            self._set_idle_if_done()

    async def _send(self, batch: list[Pending]) -> None:
        frame = encode_frame([pack_operation(operation) for operation, _ in batch])
        try:
            if self._writer is None:
                reader, self._writer = await asyncio.open_unix_connection(self.path)
                self._reader_task = asyncio.get_running_loop().create_task(self._read_answers(reader))
            self._writer.write(frame)
            self._in_flight.append(batch)
            await self._writer.drain()
        except OSError as error:
            self._disconnect(error)
            raise _unreachable(error) from error

    async def _read_answers(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                reply = await read_frame(reader)
                if reply is None:
                    raise ConnectionResetError("the engine host closed the connection")
                answers, batch_sizes = reply
                unpacked = [unpack_answer(answer) for answer in answers]
                if not self._in_flight or len(unpacked) != len(self._in_flight[0]):
                    # Left in flight, the frame is failed with the others by _disconnect.
                    raise ConnectionError("the engine host's answers do not fit the frame sent")
                self._answer(self._in_flight.popleft(), unpacked)
                self._frame_answered.set()
                if self.engine.batch_observer is not None:
                    for size in batch_sizes:
                        self.engine.batch_observer(size)
                self._set_idle_if_done()
        except (Exception, EOFError) as error:  # a broken stream, or answers that do not fit what was sent
            self._disconnect(error)
        except asyncio.CancelledError:
            self._disconnect(ConnectionAbortedError("the worker is stopping"))
            raise

    def _disconnect(self, error: BaseException) -> None:
        """Drop the stream (a frame half sent or half read leaves it unusable); every frame still
        out is answered `unavailable` — its requests may or may not have been decided."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._reader_task is not None and self._reader_task is not asyncio.current_task():
            self._reader_task.cancel()
        self._reader_task = None
        while self._in_flight:
            self._fail(self._in_flight.popleft(), _unreachable(error))
        self._frame_answered.set()
        self._set_idle_if_done()

    def _set_idle_if_done(self) -> None:
        if not self._pending and not self._in_flight and not self._is_draining:
            self._idle.set()

    def close(self) -> None:
        self._disconnect(ConnectionAbortedError("the worker is stopping"))
        super().close()


def _unreachable(error: BaseException) -> Unavailable:
    return Unavailable(f"the node's engine host did not answer ({type(error).__name__}: {error}); retry")


class EngineHost:
    """The node's engine for relayed decisions: a store, an engine and a batcher on an event loop
    of their own, in a thread of the process that calls `start` (the supervisor of the workers)."""

    def __init__(
        self, database_url: str, path: str, *, expiry_sweep_seconds: float = EXPIRY_SWEEP_SECONDS_DEFAULT
    ) -> None:
        self.database_url = database_url
        self.path = path
        self.expiry_sweep_seconds = expiry_sweep_seconds
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._batch_sizes: collections.deque[int] = collections.deque()
        """Sizes of batches run and not yet reported to a worker (appended by the batch thread)."""

    def start(self) -> None:
        """Open the store and listen on `path`; returns once workers can connect, or raises why not."""
        self._thread = threading.Thread(target=self._run, name="remit-engine-host", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise self._failure

    def stop(self) -> None:
        """Decide what was sent, stop the sweep, close the store. Call once the workers are gone."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(HOST_STOP_SECONDS_MAX)
            if self._thread.is_alive():
                log.error("the engine host did not stop within %s s", HOST_STOP_SECONDS_MAX)

    def _run(self) -> None:
        try:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(self._main())
        except BaseException as error:
            if self._ready.is_set():
                log.exception("the engine host stopped on an error")
            self._failure = error
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = stop = asyncio.Event()
        store = open_store(self.database_url)  # before `ready`: a store that fails stops the start
        try:
            engine = Engine(store)
            engine.batch_observer = self._batch_sizes.append
            batcher = AsyncBatcher(engine)
            connections: set[asyncio.Task[None]] = set()

            async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                task = asyncio.current_task()
                assert task is not None  # a connection handler always runs in a task
                connections.add(task)
                try:
                    await self._serve(batcher, reader, writer)
                finally:
                    connections.discard(task)

            server = await asyncio.start_unix_server(serve, path=self.path)
            upkeep = start_upkeep(engine, self.expiry_sweep_seconds, stop)
            self._ready.set()
            await stop.wait()
            server.close()
            await asyncio.gather(*upkeep)
            await batcher.drain()
            for task in list(connections):
                task.cancel()
            await asyncio.gather(*connections, return_exceptions=True)
            batcher.close()
        finally:
            store.close()

    async def _serve(self, batcher: AsyncBatcher, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One worker's frames: each queued as it arrives, answered in the order they came.

        If the worker goes away with frames unanswered, their requests are cancelled: a hold
        nobody will hear of is released as soon as its batch decides it (`AsyncBatcher._answer`).
        """
        replies: collections.deque[tuple[asyncio.Task[None], list[asyncio.Future[Result]]]] = collections.deque()
        try:
            while (payload := await read_frame(reader)) is not None:
                operations = _operations(payload)
                futures = batcher.enqueue_all(operations)
                previous = replies[-1][0] if replies else None
                reply = self._reply(batcher, previous, operations, futures, writer)
                task = asyncio.get_running_loop().create_task(reply)
                task.add_done_callback(lambda _: replies.popleft())
                replies.append((task, futures))
        except (OSError, EOFError):
            pass
        finally:
            for _, futures in replies:
                for future in futures:
                    future.cancel()
            writer.close()

    async def _reply(
        self,
        batcher: AsyncBatcher,
        previous: asyncio.Task[None] | None,
        operations: list[Operation],
        futures: list[asyncio.Future[Result]],
        writer: asyncio.StreamWriter,
    ) -> None:
        """Write one frame's answers once all are decided and the frame before it was answered.

        If they cannot be written (the worker went away, or the frame before failed), the
        connection is closed, so the worker fails every frame it still awaits rather than
        pairing a later frame's answers with an earlier one; and the holds nobody will hear
        of are released."""
        answers: list[Result | BaseException] = await asyncio.gather(*futures, return_exceptions=True)
        if previous is not None:
            await asyncio.wait([previous])  # frames are answered in the order they came
        try:
            if writer.is_closing():  # the worker went, or a frame before this one was not written
                raise ConnectionAbortedError("the answers cannot be written")
            sizes = [self._batch_sizes.popleft() for _ in range(len(self._batch_sizes))]
            try:
                frame = encode_frame(([pack_answer(_portable(answer)) for answer in answers], sizes))
            except Overloaded as error:  # the worker still hears of each request, in order
                frame = encode_frame(([error] * len(answers), sizes))
            writer.write(frame)
        except BaseException as error:
            writer.close()  # so every later frame of this worker lands here too
            for operation, answer in zip(operations, answers, strict=True):
                batcher.release_unheard(operation, answer)
            if not isinstance(error, Exception):
                raise
            if not isinstance(error, ConnectionAbortedError):
                log.error("the answers to a worker's frame could not be sent: %r", error)


def _operations(payload: object) -> list[Operation]:
    if not isinstance(payload, list):
        raise ConnectionError(f"a relay frame holds a {type(payload).__name__}, not a list of operations")
    return [unpack_operation(packed) for packed in payload]
