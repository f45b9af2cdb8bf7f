"""The server's SQLite checkpoint: past WAL_RESTART_FRAMES it finishes under the writers' lock,
so that the next writer starts the WAL afresh; below that it never waits for the lock.

How: an engine on a fresh file writes a few authorize → commit pairs. The test's thread takes
the writers' lock on its own connection (`Store.try_writer_lock`, the `flock` another server
process would hold) and runs `SqliteStore.checkpoint` in another thread. Over the threshold
(lowered to 1 frame) the checkpoint is still waiting 0.3 s later and ends once the lock is
released; then one more write, and a passive checkpoint from another connection reports only
that write's frames in the WAL: it started afresh. Under the threshold (raised past the WAL's
size) the checkpoint ends at once, although the lock is held.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from remit.bootstrap import open_engine
from remit.engine import ActionInput, Engine
from remit.store import sqlite as sqlite_store

TENANT = "t-wal"
CONFIG = {
    "meters": {"units": {"kind": "sum"}},
    "scopes": {"fleet": {"budgets": [{"meter": "units", "limit": "1000000", "window": "total"}]}},
    "agents": {"a0": {"scope": "fleet"}},
}
WAIT_SECONDS = 0.3
"""How long a checkpoint that should wait for the lock is watched still waiting."""
FINISH_SECONDS_MAX = 10.0


@pytest.fixture
def database(tmp_path: Path) -> Path:
    return tmp_path / "wal.db"


@pytest.fixture
def engine(database: Path) -> Iterator[Engine]:
    engine = open_engine(f"sqlite:///{database}")
    engine.create_tenant(TENANT)
    engine.apply_config(TENANT, CONFIG)
    try:
        yield engine
    finally:
        engine.store.close()


def write_pairs(engine: Engine, pairs: int) -> None:
    for _ in range(pairs):
        decision = engine.authorize(TENANT, ActionInput("a0", "unit.work", {"units": "1"}))
        assert decision.is_allowed
        engine.commit(TENANT, str(decision.reservation_id))


def wal_frames(database: Path) -> int:
    """The frames now in the WAL, read by a connection of its own (a passive checkpoint's report)."""
    connection = sqlite3.connect(database)
    try:
        _, frames, _ = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return int(frames)
    finally:
        connection.close()


def checkpoint_in_thread(engine: Engine) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            engine.store.checkpoint()
        except BaseException as error:  # reported to the test
            errors.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def test_past_the_threshold_the_checkpoint_finishes_under_the_lock_and_the_wal_restarts(
    engine: Engine, database: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "WAL_RESTART_FRAMES", 1)
    write_pairs(engine, 20)
    assert engine.store.try_writer_lock()
    try:
        thread, errors = checkpoint_in_thread(engine)
        thread.join(WAIT_SECONDS)
        assert thread.is_alive(), "over the threshold, the checkpoint waits for the writers' lock"
    finally:
        engine.store.release_writer_lock()
    thread.join(FINISH_SECONDS_MAX)
    assert not thread.is_alive() and not errors, errors
    frames_before = wal_frames(database)
    write_pairs(engine, 1)
    frames_after = wal_frames(database)
    assert frames_before > 0
    assert frames_after < frames_before, "the next writer starts the WAL afresh"


def test_under_the_threshold_the_checkpoint_never_waits_for_the_lock(
    engine: Engine, database: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_pairs(engine, 20)
    monkeypatch.setattr(sqlite_store, "WAL_RESTART_FRAMES", wal_frames(database) + 1_000)
    assert engine.store.try_writer_lock()
    try:
        thread, errors = checkpoint_in_thread(engine)
        thread.join(FINISH_SECONDS_MAX)
        assert not thread.is_alive(), "under the threshold, the checkpoint ended although the lock is held"
        assert not errors, errors
    finally:
        engine.store.release_writer_lock()
