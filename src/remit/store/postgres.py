"""The production store: PostgreSQL through psycopg 3 and a connection pool.

Batches run at READ COMMITTED and lock what they touch explicitly (`SELECT … FOR UPDATE` in
key order), so several engine processes against one database stay correct and cannot
deadlock on each other's counters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import psycopg
from psycopg_pool import ConnectionPool

from remit.store import migrate
from remit.store.base import BatchWrite, Store, Transaction, load_statements

POOL_SIZE_MAX = 8
CONNECT_TIMEOUT_SECONDS = 10
STATEMENT_TIMEOUT_MS = 30_000
LOCK_TIMEOUT_MS = 10_000


class PostgresTransaction(Transaction):
    def __init__(self, connection: psycopg.Connection[Any], statements: dict[str, str]) -> None:
        super().__init__(statements)
        self.connection = connection
        self.is_open = True
        self._cursor = connection.cursor()

    def _list(self, values: Sequence[Any]) -> Any:
        return list(values)

    def _keyed(self, tenant_id: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Any:
        params: dict[str, Any] = {"tenant": tenant_id}
        for index, column in enumerate(columns):
            params[column] = [row[index] for row in rows]
        return params

    def _execute(self, name: str, params: Sequence[Any] | Mapping[str, Any]) -> list[tuple[Any, ...]]:
        cursor = self._cursor.execute(self._sql[name], params, prepare=True)
        return cursor.fetchall() if cursor.description is not None else []

    def _execute_many(self, name: str, rows: Sequence[Sequence[Any]]) -> None:
        """One set-based statement for all rows: each column goes as one array (see postgres.sql)."""
        if rows:
            self._cursor.execute(self._sql[name], [list(column) for column in zip(*rows, strict=True)])

    def write(self, tenant_id: str, batch: BatchWrite) -> None:
        # Pipeline mode sends the batch's writes without waiting for each answer: one round trip.
        with self.connection.pipeline():
            super().write(tenant_id, batch)

    def commit(self) -> None:
        self.connection.commit()
        self.is_open = False


class PostgresStore(Store):
    dialect = "postgres"

    def __init__(self, url: str, *, pool_size_max: int = POOL_SIZE_MAX) -> None:
        self.url = url
        self._statements = load_statements("postgres")
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size_max,
            open=True,
            timeout=CONNECT_TIMEOUT_SECONDS,
            kwargs={
                "autocommit": False,
                "connect_timeout": CONNECT_TIMEOUT_SECONDS,
                "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS} -c lock_timeout={LOCK_TIMEOUT_MS}"
                " -c default_transaction_isolation=read\\ committed",
            },
        )

    def migrate(self) -> None:
        url = self.url
        for prefix in ("postgresql://", "postgres://"):
            if url.startswith(prefix):
                url = "postgresql+psycopg://" + url[len(prefix) :]
        migrate.upgrade(url)

    def _begin(self, *, is_read_only: bool = False) -> Transaction:
        connection = self._pool.getconn()
        return PostgresTransaction(connection, self._statements)

    def _rollback(self, transaction: Transaction) -> None:
        transaction = cast(PostgresTransaction, transaction)  # this store only hands out its own
        try:
            if transaction.is_open:
                transaction.is_open = False
                transaction.connection.rollback()
        finally:
            self._pool.putconn(transaction.connection)

    def close(self) -> None:
        self._pool.close()
