"""SQLite batches run on the event loop's thread, and only when they can start without waiting.

How: an `AsyncBatcher` over a real SQLite file, with a second connection (another thread, as
another worker process would) holding the writers' lock in an open write transaction. Proved:
`Engine.try_execute` refuses at once (answering None, changing nothing) while the lock or the
engine's own batch lock is taken, and decides normally once free, leaving the lock free after;
a batch submitted while the lock is held waits without blocking the loop (a ticker coroutine
keeps running) and is decided once the holder commits; past `IN_LOOP_WAIT_SECONDS_MAX` the
batch is handed to the worker thread's bounded wait and still decided. Once it has the lock,
`try_execute` never lets it go and waits for it again (a discarded owned attempt opens no
transaction; a refused owned claim retakes the lock without waiting; another retryable failure
answers None rather than sleeping on the loop). PostgreSQL is not
in-process: its batches keep going through the worker thread.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import assert_consistent
from remit import batching
from remit import engine as engine_module
from remit.batching import AsyncBatcher
from remit.bootstrap import open_engine
from remit.domain.decisions import Decision
from remit.engine import ActionInput, Engine
from remit.store import sqlite as sqlite_store
from remit.store.base import Store, Transaction

TENANT = "t-loop"
CONFIG = {
    "meters": {"units": {"kind": "sum"}},
    "scopes": {"fleet": {"budgets": [{"meter": "units", "limit": "1000", "window": "total", "id": "units"}]}},
    "agents": {"a": {"scope": "fleet"}},
}
HOLD_SECONDS = 0.3
"""How long the other writer keeps the lock: long against a batch, short for a test."""


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    opened = open_engine(f"sqlite:///{tmp_path / 'loop.db'}")
    opened.create_tenant(TENANT)
    opened.apply_config(TENANT, CONFIG)
    yield opened
    opened.store.close()


def _authorize(engine: Engine) -> list[object]:
    return [engine.authorize_operation(TENANT, ActionInput("a", "unit.work", {"units": "1"}))]


def _hold_writer_lock(store: Store, holding: threading.Event, release: threading.Event) -> None:
    """In another thread (its own connection): an open write transaction, as another process's batch."""
    with store.transaction() as tx:
        holding.set()
        release.wait(10)
        tx.commit()


def test_try_execute_refuses_at_once_while_another_writer_holds_the_lock(engine: Engine) -> None:
    holding, release = threading.Event(), threading.Event()
    holder = threading.Thread(target=_hold_writer_lock, args=(engine.store, holding, release))
    holder.start()
    try:
        assert holding.wait(10)
        assert engine.try_execute(_authorize(engine)) is None  # type: ignore[arg-type]
    finally:
        release.set()
        holder.join(10)
    results = engine.try_execute(_authorize(engine))  # type: ignore[arg-type]
    assert results is not None and isinstance(results[0], Decision) and results[0].is_allowed
    assert engine.store.try_writer_lock()  # the batch let its lock go (this thread takes it again)
    engine.store.release_writer_lock()
    assert engine.check(TENANT).is_consistent
    assert_consistent(engine, TENANT)


def test_try_execute_refuses_while_the_engine_runs_a_batch(engine: Engine) -> None:
    engine._execute_lock.acquire()  # another thread's batch of this engine, as far as it can tell
    try:
        assert engine.try_execute(_authorize(engine)) is None  # type: ignore[arg-type]
    finally:
        engine._execute_lock.release()
    assert engine.batches_executed == 0
    assert engine.store.try_writer_lock()  # refused before taking the store's lock, or it let it go
    engine.store.release_writer_lock()


def _refuse_waits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """From now on every wait for the writers' lock fails the test; counts the transactions begun."""
    original_lock = sqlite_store._Connection.lock
    original_begin = sqlite_store.SqliteStore._begin
    begun: list[int] = []

    def lock(self: sqlite_store._Connection) -> None:
        assert self.is_locked, "a batch on the loop's thread waited for the writers' lock"
        original_lock(self)

    def begin(self: sqlite_store.SqliteStore, *, is_read_only: bool = False) -> Transaction:
        begun.append(1)
        return original_begin(self, is_read_only=is_read_only)

    monkeypatch.setattr(sqlite_store._Connection, "lock", lock)
    monkeypatch.setattr(sqlite_store.SqliteStore, "_begin", begin)
    return begun


def test_try_execute_never_waits_for_a_lock_it_let_go(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once free, the lock is taken without waiting and never let go before the batch is decided:
    a batch that is not owned opens one transaction (none for a discarded owned attempt), and
    an owned claim that another process made stale is run again at once, taking the lock afresh."""
    url = f"sqlite:///{tmp_path / 'owned.db'}"
    first, other = open_engine(url), open_engine(url)  # two processes' engines on one file
    try:
        first.create_tenant(TENANT)
        first.apply_config(TENANT, CONFIG)
        batches = [_authorize(first) for _ in range(3)]
        between = _authorize(other)  # each engine has its config before the timed part
        waits_refused = _refuse_waits(monkeypatch)
        for batch in batches[:2]:  # the first batch reads, the second finds it wrote last: owned from then on
            results = first.try_execute(batch)  # type: ignore[arg-type]
            assert results is not None and isinstance(results[0], Decision) and results[0].is_allowed
        assert len(waits_refused) == 2, "one transaction per batch that is not owned yet"
        assert first._states[TENANT].is_owned
        assert other.try_execute(between) is not None  # type: ignore[arg-type]  # another process writes in between
        waits_refused.clear()
        results = first.try_execute(batches[2])  # type: ignore[arg-type]
        assert results is not None and isinstance(results[0], Decision) and results[0].is_allowed
        assert len(waits_refused) == 2, "the refused owned claim, then the ordinary batch"
        assert first.store.try_writer_lock()  # the batch let its lock go
        first.store.release_writer_lock()
        monkeypatch.undo()  # the check below takes the lock the ordinary way
        assert_consistent(first, TENANT)
    finally:
        first.store.close()
        other.store.close()


def test_try_execute_leaves_a_busy_store_to_the_callers_backoff(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retryable failure (rolled back, nothing applied) answers None at once instead of
    sleeping on the loop's thread; the batcher looks again later."""
    failures = [sqlite3.OperationalError("database is locked")]
    original = engine._execute_once

    def failing_once(operations: list[object]) -> list[object]:
        if failures:
            raise failures.pop()
        return original(operations)  # type: ignore[arg-type]

    monkeypatch.setattr(engine, "_execute_once", failing_once)
    sleeps: list[float] = []
    monkeypatch.setattr(engine_module.time, "sleep", sleeps.append)
    assert engine.try_execute(_authorize(engine)) is None  # type: ignore[arg-type]
    assert sleeps == [] and engine.batches_executed == 0
    assert engine.store.try_writer_lock()  # the failed attempt let its lock go
    engine.store.release_writer_lock()
    results = engine.try_execute(_authorize(engine))  # type: ignore[arg-type]
    assert results is not None and isinstance(results[0], Decision) and results[0].is_allowed
    assert_consistent(engine, TENANT)


async def _decide_while_locked(engine: Engine) -> tuple[Decision, int, int]:
    """Submit while another writer holds the lock; count ticks of the loop meanwhile."""
    batcher = AsyncBatcher(engine)
    holding, release = threading.Event(), threading.Event()
    holder = threading.Thread(target=_hold_writer_lock, args=(engine.store, holding, release))
    holder.start()
    await asyncio.get_running_loop().run_in_executor(None, holding.wait, 10)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.005)

    ticking = asyncio.create_task(ticker())
    decision_task = asyncio.create_task(batcher.authorize(TENANT, ActionInput("a", "unit.work", {"units": "1"})))
    await asyncio.sleep(HOLD_SECONDS)
    ticks_while_locked = ticks
    is_decided_while_locked = decision_task.done()
    release.set()
    decision = await asyncio.wait_for(decision_task, 30)
    ticking.cancel()
    holder.join(10)
    batcher.close()
    assert not is_decided_while_locked
    return decision, ticks_while_locked, engine.batches_executed


def _record_threaded_batches(engine: Engine) -> list[str]:
    """Names of the threads that ran `Engine.execute` (the worker thread's way; the loop's is `try_execute`)."""
    names: list[str] = []
    original = engine.execute

    def recording(operations: list[object]) -> list[object]:
        names.append(threading.current_thread().name)
        return original(operations)  # type: ignore[arg-type]

    engine.execute = recording  # type: ignore[method-assign]
    return names


def test_a_batch_waits_for_the_lock_without_blocking_the_loop(engine: Engine) -> None:
    threaded = _record_threaded_batches(engine)
    decision, ticks_while_locked, _ = asyncio.run(_decide_while_locked(engine))
    assert decision.is_allowed
    assert threaded == []  # decided on the loop's thread
    # A blocked loop would not have ticked at all while the other writer held the lock.
    assert ticks_while_locked >= 10
    assert engine.check(TENANT).is_consistent


def test_past_the_in_loop_wait_the_thread_takes_the_batch(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batching, "IN_LOOP_WAIT_SECONDS_MAX", 0.02)
    threaded = _record_threaded_batches(engine)
    decision, _, _ = asyncio.run(_decide_while_locked(engine))
    assert decision.is_allowed
    assert len(threaded) == 1 and threaded[0].startswith("remit-batch")
    assert engine.check(TENANT).is_consistent


def test_postgres_batches_stay_on_the_worker_thread(pg_url: str) -> None:
    engine = open_engine(pg_url)
    try:
        assert not engine.store.is_in_process
        engine.create_tenant(TENANT)
        engine.apply_config(TENANT, CONFIG)
        threads = _record_threaded_batches(engine)

        async def decide() -> Decision:
            batcher = AsyncBatcher(engine)
            try:
                return await batcher.authorize(TENANT, ActionInput("a", "unit.work", {"units": "1"}))
            finally:
                batcher.close()

        assert asyncio.run(decide()).is_allowed
        assert len(threads) == 1 and threads[0].startswith("remit-batch")
    finally:
        engine.store.close()
