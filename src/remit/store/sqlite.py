"""The embedded store: one SQLite file in WAL mode.

Batches take the write lock up front (`BEGIN IMMEDIATE`), so two engine processes on one file
serialise instead of failing half-way. Before it, a writer takes an exclusive `flock` on
`<file>-writer.lock`: SQLite's own busy handler polls with sleeps of 1, 2, 5 … 100 ms, which
with several server processes (`remit serve --workers`) wasted more time asleep than the batches
took (measured on bench/http.py: p99 471 ms with 2 workers). A waiting writer looks again
within 1 ms of the release (a bounded wait: see `_Connection.lock`), and the kernel releases the
flock if its holder dies. `synchronous=NORMAL` in WAL mode survives a killed
process (the crash test proves it); a power cut may lose the last transactions, not corrupt.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from remit.store import migrate
from remit.store.base import Store, Transaction, dumps, load_statements

BUSY_TIMEOUT_MS = 30_000
"""How long a writer waits for another process's write lock before failing."""
WAL_AUTOCHECKPOINT_PAGES = 10_000
"""Checkpoint the WAL every ~40 MB instead of SQLite's 4 MB: fewer, larger checkpoints on the write path."""
WAL_RESTART_FRAMES = 5_000
"""Once the WAL holds this many frames (~20 MB), the server's checkpointer finishes its checkpoint
with the writers' lock held, so that the next writer starts the WAL afresh (`SqliteStore.checkpoint`)."""
WRITER_LOCK_POLL_SECONDS_MIN = 0.000_05
WRITER_LOCK_POLL_SECONDS_MAX = 0.001
"""A writer waiting for another process's batch looks again after 50 µs, doubling up to every 1 ms."""


class _Connection:
    """One thread's SQLite connection and its own descriptor of the writers' lock file."""

    def __init__(self, path: str) -> None:
        self.sqlite = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        for pragma in (
            f"busy_timeout = {BUSY_TIMEOUT_MS}",
            "journal_mode = WAL",
            "synchronous = NORMAL",
            f"wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}",
            "foreign_keys = ON",
        ):
            self.sqlite.execute(f"PRAGMA {pragma}")
        self.path = path
        self._lock_fd = os.open(f"{path}-writer.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.is_locked = False

    def lock(self) -> None:
        """Take the writers' lock, waiting at most BUSY_TIMEOUT_MS (then "database is locked", retryable).

        A blocking `flock` would wake at once but could wait forever on a stopped holder; polling
        with sleeps growing to 1 ms wakes within 1 ms of a release and keeps the bound.
        """
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        pause = WRITER_LOCK_POLL_SECONDS_MIN
        while True:
            if not self.try_lock():
                if time.monotonic() >= deadline:
                    raise sqlite3.OperationalError(
                        f"database is locked: another writer held {self.path}-writer.lock for {BUSY_TIMEOUT_MS} ms"
                    ) from None
                time.sleep(pause)  # releases the GIL
                pause = min(pause * 2, WRITER_LOCK_POLL_SECONDS_MAX)
                continue
            return

    def try_lock(self) -> bool:
        if not self.is_locked:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            self.is_locked = True
        return True

    def unlock(self) -> None:
        if self.is_locked:
            self.is_locked = False
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def close(self) -> None:
        self.sqlite.close()
        os.close(self._lock_fd)


class SqliteTransaction(Transaction):
    def __init__(self, connection: _Connection, statements: dict[str, str], *, is_read_only: bool) -> None:
        super().__init__(statements)
        self._owner = connection
        self._connection = connection.sqlite
        if not is_read_only:
            connection.lock()
        try:
            self._connection.execute("BEGIN" if is_read_only else "BEGIN IMMEDIATE")
        except BaseException:
            connection.unlock()
            raise
        self.is_open = True

    def _list(self, values: Sequence[Any]) -> Any:
        return dumps(list(values))

    def _keyed(self, tenant_id: str, rows: Sequence[Sequence[Any]]) -> Any:
        return (tenant_id, dumps([list(row) for row in rows]))

    def _execute(self, name: str, params: Sequence[Any] | Mapping[str, Any]) -> list[tuple[Any, ...]]:
        return self._connection.execute(self._sql[name], params).fetchall()

    def _execute_many(self, name: str, rows: Sequence[Sequence[Any]]) -> None:
        self._connection.executemany(self._sql[name], rows)

    def _send(self, name: str, params: Sequence[Any]) -> None:
        self._connection.execute(self._sql[name], params)

    def commit(self) -> None:
        try:
            self._connection.execute("COMMIT")
            self.is_open = False
        finally:
            if not self.is_open:
                self._owner.unlock()

    def rollback(self) -> None:
        if self.is_open:
            self.is_open = False
            try:
                self._connection.execute("ROLLBACK")
            finally:
                self._owner.unlock()


class SqliteStore(Store):
    dialect = "sqlite"
    is_in_process = True

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._statements = load_statements("sqlite")
        self._local = threading.local()
        self._connections: list[_Connection] = []
        self._lock = threading.Lock()

    def _connection(self) -> _Connection:
        connection: _Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = _Connection(self.path)
            self._local.connection = connection
            with self._lock:
                self._connections.append(connection)
        return connection

    def migrate(self) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # WAL first, so the file is in WAL mode before Alembic opens it.
        self._connection()
        migrate.upgrade(f"sqlite:///{self.path}")

    def checkpoint(self) -> None:
        """Copy the WAL into the database, so that no commit has to (servers run this every
        CHECKPOINT_SECONDS from a thread).

        First a passive checkpoint: it copies what it can without waiting for readers or
        writers, who go on meanwhile. Left to SQLite's automatic checkpoint, a commit now and
        then copied ~40 MB itself, which was a paced server's whole p99 (bench/http.py
        --workers 1 --rate 1000: 37 ms, 8–9 ms without).

        The WAL starts afresh only once a writer finds all of it copied, and under steady load
        writers append during every passive checkpoint, so that moment never came. The WAL then
        grew to WAL_AUTOCHECKPOINT_PAGES, and a committing batch ran the automatic checkpoint
        while it held the writers' lock: every server process stalled 20–30 ms, every ~400 ms
        at 3,000 decisions/s. So once the WAL holds WAL_RESTART_FRAMES, a second passive
        checkpoint runs with the writers' lock held. It copies only what was appended during
        the first, and the next writer restarts the WAL (bench/http.py --stores sqlite
        --rate 4000: a lower p99 in 8 of 11 paired runs; 26–28 ms before and 17–23 ms after in
        a fast phase). A reader still on an old snapshot only defers the restart to a later round.
        """
        connection = self._connection()
        _, frames, _ = connection.sqlite.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if frames < WAL_RESTART_FRAMES:
            return
        connection.lock()
        try:
            connection.sqlite.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        finally:
            connection.unlock()

    def try_writer_lock(self) -> bool:
        return self._connection().try_lock()

    def release_writer_lock(self) -> None:
        self._connection().unlock()

    def _begin(self, *, is_read_only: bool = False) -> Transaction:
        return SqliteTransaction(self._connection(), self._statements, is_read_only=is_read_only)

    def _rollback(self, transaction: Transaction) -> None:
        cast(SqliteTransaction, transaction).rollback()  # this store only hands out its own

    def close(self) -> None:
        with self._lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()
        self._local = threading.local()
