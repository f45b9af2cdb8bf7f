"""The embedded store: one SQLite file in WAL mode.

Batches take the write lock up front (`BEGIN IMMEDIATE`), so two engine processes on one file
serialise instead of failing half-way. `synchronous=NORMAL` in WAL mode survives a killed
process (the crash test proves it); a power cut may lose the last transactions, not corrupt.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from remit.store import migrate
from remit.store.base import Store, Transaction, dumps, load_statements

BUSY_TIMEOUT_MS = 30_000
WAL_AUTOCHECKPOINT_PAGES = 10_000
"""Checkpoint the WAL every ~40 MB instead of SQLite's 4 MB: fewer, larger checkpoints on the write path."""
"""How long a writer waits for another process's write lock before failing."""


class SqliteTransaction(Transaction):
    def __init__(self, connection: sqlite3.Connection, statements: dict[str, str], *, is_read_only: bool) -> None:
        super().__init__(statements)
        self._connection = connection
        self.is_open = True
        connection.execute("BEGIN" if is_read_only else "BEGIN IMMEDIATE")

    def _list(self, values: Sequence[Any]) -> Any:
        return dumps(list(values))

    def _keyed(self, tenant_id: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Any:
        return (tenant_id, dumps([list(row) for row in rows]))

    def _execute(self, name: str, params: Sequence[Any] | Mapping[str, Any]) -> list[tuple[Any, ...]]:
        return self._connection.execute(self._sql[name], params).fetchall()

    def _execute_many(self, name: str, rows: Sequence[Sequence[Any]]) -> None:
        self._connection.executemany(self._sql[name], rows)

    def commit(self) -> None:
        self._connection.execute("COMMIT")
        self.is_open = False


class SqliteStore(Store):
    dialect = "sqlite"

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._statements = load_statements("sqlite")
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def _connection(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = NORMAL")
            connection.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
            connection.execute("PRAGMA foreign_keys = ON")
            self._local.connection = connection
            with self._lock:
                self._connections.append(connection)
        return connection

    def migrate(self) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # WAL first, so the file is in WAL mode before Alembic opens it.
        self._connection()
        migrate.upgrade(f"sqlite:///{self.path}")

    def _begin(self, *, is_read_only: bool = False) -> Transaction:
        return SqliteTransaction(self._connection(), self._statements, is_read_only=is_read_only)

    def _rollback(self, transaction: Transaction) -> None:
        transaction = cast(SqliteTransaction, transaction)  # this store only hands out its own
        if transaction.is_open:
            transaction.is_open = False
            self._connection().execute("ROLLBACK")

    def close(self) -> None:
        with self._lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()
        self._local = threading.local()
