"""The production store: PostgreSQL through psycopg 3 and a connection pool.

Every transaction runs in pipeline mode with its `BEGIN` sent ahead of its first statement
(`PostgresTransaction`): statements whose answers nobody waits for (a batch's writes, its
commit) share one round trip.

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

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, cast

import psycopg
from psycopg_pool import ConnectionPool

from remit.store import migrate
from remit.store.base import Store, TenantMoved, Transaction, dumps, load_statements

POOL_SIZE_MAX = 8
CONNECT_TIMEOUT_SECONDS = 10
STATEMENT_TIMEOUT_MS = 30_000
LOCK_TIMEOUT_MS = 10_000
TENANT_MOVED_SQLSTATE = "RM001"
"""Raised by remit_tenant_moved() (migration 0004) when an owned claim finds another writer came first."""


class PostgresTransaction(Transaction):
    """One transaction, all of it in pipeline mode on an autocommit connection, `BEGIN` sent by
    hand ahead of its first statement: a read takes one round trip, and a batch's writes and
    commit (with an owned batch's claim) one more, or the only one.

    psycopg, left to begin transactions itself, waits for the answer to `BEGIN` before it sends
    a pipeline's first statement: a round trip of its own in every transaction (~135 µs here,
    more on a busy machine, the tenant's lock held through it).
    """

    def __init__(self, connection: psycopg.Connection[Any], statements: dict[str, str]) -> None:
        super().__init__(statements)
        self.connection = connection
        self.is_open = True
        self._cursor = connection.cursor()
        self._pipeline: contextlib.ExitStack | None = None
        self._pipe: psycopg.Pipeline | None = None

    def _list(self, values: Sequence[Any]) -> Any:
        return list(values)

    def _keyed(self, tenant_id: str, rows: Sequence[Sequence[Any]]) -> Any:
        return (dumps(rows), tenant_id)

    def _execute(self, name: str, params: Sequence[Any] | Mapping[str, Any]) -> list[tuple[Any, ...]]:
        cursor = self._pipelined()
        with _tenant_moved_as_such():
            cursor.execute(self._sql[name], params, prepare=True)
            assert self._pipe is not None  # _pipelined entered it
            self._pipe.sync()  # waits for this statement's rows (and any writes sent before it)
        return cursor.fetchall() if cursor.description is not None else []

    def _send(self, name: str, params: Sequence[Any]) -> None:
        with _tenant_moved_as_such():
            self._pipelined().execute(self._sql[name], params, prepare=True)

    def _execute_many(self, name: str, rows: Sequence[Sequence[Any]]) -> None:
        """One set-based statement for all rows, which go as one JSON array (see postgres.sql)."""
        if rows:
            with _tenant_moved_as_such():
                self._pipelined().execute(self._sql[name], (dumps(rows),), prepare=True)

    def claim_owned(self, claims: Sequence[tuple[str, int, int]]) -> None:
        # Sent, not awaited: the statement fails the transaction itself if a tenant moved, and
        # its answer comes with the writes' and the commit's (see commit).
        rows = sorted(claims)
        self._send("claim_owned_tenants", ([row[0] for row in rows], dumps([list(row) for row in rows]), len(rows)))

    def _pipelined(self) -> psycopg.Cursor[Any]:
        """The transaction's cursor, in pipeline mode and inside the transaction from the first
        statement on, until commit or rollback."""
        if self._pipeline is None:
            stack = contextlib.ExitStack()
            self._pipe = stack.enter_context(self.connection.pipeline())
            self._pipeline = stack
            self._cursor.execute("BEGIN")  # sent with the first statement: no round trip of its own
        return self._cursor

    def commit(self) -> None:
        if self._pipeline is not None:
            with _tenant_moved_as_such():
                self._cursor.execute("COMMIT")
                self._end_pipeline()  # leaving pipeline mode waits for every answer, the commit's last
        self.is_open = False

    def rollback(self) -> None:
        """End the transaction without applying it (whatever the pipeline still reports is moot).

        ROLLBACK goes in the pipeline, answered with what is still outstanding: one round trip.
        Whatever state that leaves (the pipeline aborted, or a failed COMMIT that closed it
        already), the server's own transaction status decides whether another ROLLBACK is due:
        the connection goes back to the pool idle."""
        if not self.is_open:
            return
        self.is_open = False
        if self._pipeline is not None:
            with contextlib.suppress(psycopg.Error):  # an aborted pipeline reports its error again here
                self._cursor.execute("ROLLBACK")
            with contextlib.suppress(psycopg.Error):
                self._end_pipeline()
        if self.connection.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            self.connection.execute("ROLLBACK")

    def _end_pipeline(self) -> None:
        pipeline, self._pipeline, self._pipe = self._pipeline, None, None
        if pipeline is not None:
            pipeline.close()


@contextlib.contextmanager
def _tenant_moved_as_such() -> Iterator[None]:
    """An owned claim's refusal reaches the client with whichever pipelined call fetches its
    answer (a later write, a read, the commit): it is `TenantMoved` wherever it surfaces."""
    try:
        yield
    except psycopg.Error as error:
        if error.sqlstate == TENANT_MOVED_SQLSTATE:
            raise TenantMoved(str(error).splitlines()[0]) from error
        raise


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
                "autocommit": True,  # transactions begin by hand (PostgresTransaction)
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
            transaction.rollback()
        finally:
            self._pool.putconn(transaction.connection)

    def close(self) -> None:
        self._pool.close()
