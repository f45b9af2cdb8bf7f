"""SQLite's writers' lock: engine processes on one file take turns, never fail, and count exactly.

How: spawned processes (multiprocessing), each with its own SqliteStore and Engine on one file.
Two of them start together at a barrier and loop authorize 1 unit → commit, one small write
transaction each, until the shared budget denies. Proved: no process saw an error (such as
"database is locked"), both committed some, the units they were told about add up to the limit
exactly, the counters say used = limit and held = 0, the ledger rebuilds to the counters, and
`<file>-writer.lock` sits next to the database. Then a process that holds a write transaction
open: another process's reads go on, its writers' lock cannot be taken, and once the holder is
killed (SIGKILL, no clean-up) the kernel has released the lock and the next write goes through.
"""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import threading
import time
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

from conftest import assert_consistent
from remit.bootstrap import open_engine, open_store
from remit.engine import ActionInput, Engine

TENANT = "t-lock"
LIMIT_UNITS = 400
BUDGET = "fleet-units"
AGENTS = ["a0", "a1"]
CONFIG = {
    "meters": {"units": {"kind": "sum"}},
    "scopes": {"fleet": {"budgets": [{"meter": "units", "limit": str(LIMIT_UNITS), "window": "total", "id": BUDGET}]}},
    "agents": {agent: {"scope": "fleet"} for agent in AGENTS},
}
WAIT_SECONDS_MAX = 60.0
"""How long a process may take to start, to fill the budget, or a write to get the lock."""

spawn = multiprocessing.get_context("spawn")


def write_until_full(database_url: str, agent: str, start: Barrier, results: Queue[dict[str, Any]]) -> None:
    """In a child: authorize 1 unit and commit it, one transaction each, until the budget denies."""
    seen: dict[str, Any] = {"agent": agent, "committed_units": 0, "is_denied": False, "errors": []}
    engine = open_engine(database_url)
    try:
        start.wait(WAIT_SECONDS_MAX)
        for _ in range(LIMIT_UNITS + 1):  # at most LIMIT_UNITS allows, then the denial
            decision = engine.authorize(TENANT, ActionInput(agent, "unit.work", {"units": "1"}))
            if not decision.is_allowed:
                seen["is_denied"] = True
                break
            result = engine.commit(TENANT, str(decision.reservation_id))
            seen["committed_units"] += result.committed["units"]
    except Exception as error:  # reported to the test, which fails naming it
        seen["errors"].append(repr(error))
    finally:
        engine.store.close()
        results.put(seen)


def hold_a_write_transaction(database_url: str, holding: Queue[str]) -> None:
    """In a child: open a write transaction (so take the writers' lock) and keep it until killed."""
    store = open_store(database_url)
    with store.transaction():
        holding.put("holding")
        time.sleep(10 * WAIT_SECONDS_MAX)


def configured_engine(database: Path) -> Engine:
    engine = open_engine(f"sqlite:///{database}")
    engine.create_tenant(TENANT)
    engine.apply_config(TENANT, CONFIG, source="test")
    return engine


def counter_of(engine: Engine) -> tuple[int, int]:
    with engine.store.transaction(is_read_only=True) as tx:
        counter = tx.all_counters(TENANT)[(BUDGET, "")]
    return counter.used, counter.held


def test_two_processes_writing_one_file_never_fail_and_count_exactly(tmp_path: Path) -> None:
    database = tmp_path / "remit.db"
    engine = configured_engine(database)
    try:
        start, results = spawn.Barrier(len(AGENTS)), spawn.Queue()
        processes = [
            spawn.Process(target=write_until_full, args=(f"sqlite:///{database}", agent, start, results))
            for agent in AGENTS
        ]
        for process in processes:
            process.start()
        seen = [results.get(timeout=WAIT_SECONDS_MAX) for _ in processes]
        for process in processes:
            process.join(WAIT_SECONDS_MAX)
        assert [process.exitcode for process in processes] == [0] * len(processes)

        assert [s["errors"] for s in seen] == [[]] * len(processes), seen
        assert all(s["is_denied"] for s in seen), seen
        assert all(s["committed_units"] > 0 for s in seen), f"both processes wrote: {seen}"
        assert sum(s["committed_units"] for s in seen) == LIMIT_UNITS, seen
        assert counter_of(engine) == (LIMIT_UNITS, 0)
        assert_consistent(engine, TENANT)
        assert Path(f"{database}-writer.lock").is_file()
    finally:
        engine.store.close()


def test_a_killed_writer_releases_the_lock(tmp_path: Path) -> None:
    database = tmp_path / "remit.db"
    engine = configured_engine(database)
    holding: Queue[str] = spawn.Queue()
    holder = spawn.Process(target=hold_a_write_transaction, args=(f"sqlite:///{database}", holding))
    try:
        holder.start()
        assert holding.get(timeout=WAIT_SECONDS_MAX) == "holding"
        assert counter_of(engine) == (0, 0), "a read does not wait for the writer"
        lock_fd = os.open(f"{database}-writer.lock", os.O_RDWR)
        try:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pass
            else:
                raise AssertionError("the writers' lock was free while another process held a write transaction")
        finally:
            os.close(lock_fd)

        holder.kill()
        holder.join(WAIT_SECONDS_MAX)
        committed: list[int] = []

        def write() -> None:
            decision = engine.authorize(TENANT, ActionInput(AGENTS[0], "unit.work", {"units": "1"}))
            committed.append(engine.commit(TENANT, str(decision.reservation_id)).committed["units"])

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        writer.join(WAIT_SECONDS_MAX)
        assert not writer.is_alive(), f"a write still waited {WAIT_SECONDS_MAX}s after the lock holder died"
        assert committed == [1] and counter_of(engine) == (1, 0)
        assert_consistent(engine, TENANT)
    finally:
        if holder.is_alive():
            holder.kill()
            holder.join()
        engine.store.close()
