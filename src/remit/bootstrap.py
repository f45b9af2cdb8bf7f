"""Builds stores and engines from a database URL. Importing this module does no I/O."""

from __future__ import annotations

import gc
import re
import sys
from pathlib import Path

from remit.engine import Clock, Engine, system_clock
from remit.errors import InvalidRequest, Unavailable
from remit.store.base import Store

DEFAULT_DATABASE_URL = "sqlite:///remit.db"


def sqlite_path(database_url: str) -> Path | None:
    """The file of a SQLite URL (`sqlite:///path` or a bare path), None for any other URL."""
    if database_url.startswith("sqlite:///") or "://" not in database_url:
        return Path(database_url.removeprefix("sqlite:///"))
    return None


def open_store(database_url: str = DEFAULT_DATABASE_URL, *, migrate: bool = True) -> Store:
    """`sqlite:///path/to/file.db` (or a bare path) or `postgresql://…`; migrated unless told not to."""
    store: Store
    if database_url.startswith(("postgresql://", "postgres://")):
        from remit.store.postgres import PostgresStore

        try:
            store = PostgresStore(database_url)
        except Exception as error:
            raise Unavailable(f"cannot open {redact(database_url)}: {_first_line(error)}") from error
    elif (path := sqlite_path(database_url)) is not None:
        from remit.store.sqlite import SqliteStore

        store = SqliteStore(path)
    else:
        raise InvalidRequest(
            f"unsupported database URL {database_url!r}: use sqlite:///FILE or postgresql://…",
            code="invalid_database_url",
        )
    if migrate:
        try:
            store.migrate()
        except Exception as error:
            store.close()
            raise Unavailable(f"cannot open {redact(database_url)}: {_first_line(error)}") from error
    return store


def redact(database_url: str) -> str:
    """The URL without its password, for messages and logs."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", database_url)


def _first_line(error: BaseException) -> str:
    text = str(getattr(error, "orig", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__


GC_THRESHOLDS = (50_000, 50, 100)
"""Generation thresholds for a long-running engine process (CPython's default is 700, 10, 10).

A batch allocates tens of thousands of short-lived objects; with the default thresholds the
cyclic collector runs dozens of times per batch and scans every long-lived object each time
it reaches the oldest generation (measured: a third of a 1,000-request batch's time).
"""


SWITCH_INTERVAL_SECONDS = 0.0005
"""How long a thread may keep the GIL while another waits (CPython's default: 5 ms).

A server's batch thread gives the GIL up at every store call and then waits for the event loop
to hand it back, while holding the store's write lock (or tenant row lock) that every other
process waits for. At 0.5 ms instead of 5 ms, bench/http.py with PostgreSQL gained 4-8 % in
each of four paired runs (one and two worker processes); 0.1 ms lost ~11 % (two paired runs, two workers).
"""


def tune_gc_for_service() -> None:
    """Freeze what start-up allocated and collect less often, and hand the GIL over sooner;
    for servers and benchmarks only."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)


def open_engine(database_url: str = DEFAULT_DATABASE_URL, *, clock: Clock = system_clock) -> Engine:
    return Engine(open_store(database_url), clock=clock)
