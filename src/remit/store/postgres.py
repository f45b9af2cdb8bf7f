"""The production store: PostgreSQL through psycopg 3 and a connection pool.

Batches run at READ COMMITTED and lock what they touch explicitly (`SELECT … FOR UPDATE` in
key order), so several engine processes against one database stay correct and cannot
deadlock on each other's counters.

Statements are prepared (parsed once per connection) but planned afresh on every run
(`plan_cache_mode=force_custom_plan`). Left to choose, PostgreSQL switches a prepared statement
to a generic plan after five runs, costed against the table sizes of that moment: planned on a
new database's near-empty tables, finding 32 reservations by key became a scan of the whole
table, kept for the connection's life while the table grew (tests/contract/test_postgres_plans.py).
A generic plan also costs `tenant_id = $1` for the average tenant, not the one asking. Planning
these small statements costs far less than the one scan it avoids.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import psycopg
from psycopg_pool import ConnectionPool

from remit.store import migrate
from remit.store.base import BatchWrite, Store, Transaction, dumps, load_statements

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

    def _keyed(self, tenant_id: str, rows: Sequence[Sequence[Any]]) -> Any:
        return (dumps(rows), tenant_id)

    def _execute(self, name: str, params: Sequence[Any] | Mapping[str, Any]) -> list[tuple[Any, ...]]:
        cursor = self._cursor.execute(self._sql[name], params, prepare=True)
        return cursor.fetchall() if cursor.description is not None else []

    def _execute_many(self, name: str, rows: Sequence[Sequence[Any]]) -> None:
        """One set-based statement for all rows, which go as one JSON array (see postgres.sql)."""
        if rows:
            self._cursor.execute(self._sql[name], (dumps(rows),), prepare=True)

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
                " -c default_transaction_isolation=read\\ committed -c plan_cache_mode=force_custom_plan",
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
