"""When the store fails mid-request, callers hear a clear error and nothing is half-written.

A real PostgreSQL backend is terminated under the engine (pg_terminate_backend), so the next
batch fails on a dead connection: every caller gets its own `Unavailable` (code `unavailable`),
the ledger and counters are as before, and the engine decides the following request normally.
"""

from __future__ import annotations

import threading
from pathlib import Path

import psycopg
import pytest

from conftest import EXAMPLE_CONFIG, allowed, assert_consistent
from remit.bootstrap import open_store
from remit.config import load_file
from remit.engine import ActionInput, Engine
from remit.errors import RemitError, Unavailable
from remit.store.base import Store


def _ledger_length(store: Store) -> int:
    with store.transaction() as tx:
        return len(list(tx.ledger_entries("t1")))


def _kill_backends(url: str) -> int:
    name = url.rpartition("/")[2]
    with psycopg.connect(url, autocommit=True) as connection:
        rows = connection.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchall()
    return len(rows)


@pytest.mark.postgres
def test_a_dead_connection_fails_the_batch_cleanly_and_the_next_one_works(pg_url: str) -> None:
    store = open_store(pg_url)
    try:
        engine = Engine(store)
        engine.create_tenant("t1", timezone="America/New_York")
        engine.apply_config("t1", load_file(EXAMPLE_CONFIG))
        request = ActionInput(agent="bot-7", action="crm.discount.apply", amounts={"usd": "10"})
        allowed(engine.authorize("t1", request))
        before = _ledger_length(store)
        assert _kill_backends(pg_url) >= 1

        errors: list[BaseException] = []

        def call() -> None:
            try:
                engine.authorize("t1", request)
            except RemitError as error:
                errors.append(error)

        threads = [threading.Thread(target=call) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        # The batch that met the dead connection failed for every caller in it, each with an
        # exception of its own; batches after it (a fresh connection) may have succeeded.
        assert errors, "no caller saw the dead connection"
        assert all(isinstance(error, Unavailable) and error.code == "unavailable" for error in errors)
        assert len({id(error) for error in errors}) == len(errors)
        assert all(isinstance(error.__cause__, psycopg.OperationalError) for error in errors)
        allowed(engine.authorize("t1", request))
        assert _ledger_length(store) == before + (8 - len(errors)) + 1
        assert_consistent(engine)
    finally:
        store.close()


def test_an_unreachable_store_is_a_clear_error_without_the_password() -> None:
    with pytest.raises(Unavailable) as caught:
        open_store("postgresql://remit:s3cret@127.0.0.1:1/nowhere")
    assert caught.value.code == "unavailable"
    assert "postgresql://remit:***@127.0.0.1:1/nowhere" in caught.value.message
    assert "s3cret" not in caught.value.message


def test_an_unwritable_sqlite_path_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(RemitError) as caught:
        open_store(f"sqlite:///{blocker / 'remit.db'}")
    assert str(blocker) in caught.value.message
