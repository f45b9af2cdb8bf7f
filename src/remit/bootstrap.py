"""Builds stores and engines from a database URL. Importing this module does no I/O."""

from __future__ import annotations

from pathlib import Path

from remit.engine import Clock, Engine, system_clock
from remit.errors import InvalidRequest
from remit.store.base import Store

DEFAULT_DATABASE_URL = "sqlite:///remit.db"


def open_store(database_url: str = DEFAULT_DATABASE_URL, *, migrate: bool = True) -> Store:
    """`sqlite:///path/to/file.db` (or a bare path) or `postgresql://…`; migrated unless told not to."""
    store: Store
    if database_url.startswith(("postgresql://", "postgres://")):
        from remit.store.postgres import PostgresStore

        store = PostgresStore(database_url)
    elif database_url.startswith("sqlite:///") or "://" not in database_url:
        from remit.store.sqlite import SqliteStore

        path = database_url.removeprefix("sqlite:///")
        store = SqliteStore(Path(path))
    else:
        raise InvalidRequest(
            f"unsupported database URL {database_url!r}: use sqlite:///FILE or postgresql://…",
            code="invalid_database_url",
        )
    if migrate:
        store.migrate()
    return store


def open_engine(database_url: str = DEFAULT_DATABASE_URL, *, clock: Clock = system_clock) -> Engine:
    return Engine(open_store(database_url), clock=clock)
