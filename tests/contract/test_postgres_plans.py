"""PostgreSQL: a batch finds rows by key, however small the tables were when its connection
first ran the statement.

psycopg prepares the batch statements, and after five runs PostgreSQL may switch a prepared
statement to a generic plan, costed against the table sizes of that moment. Planned against a
near-empty table, `update_reservation` became a sequential scan of the whole reservations table
and `lock_reservations` a scan of every reservation of the tenant, and the connections kept those
plans while the tables grew (until autovacuum happened to analyze them): every batch got slower
with every reservation ever made. The store's connections now plan each run with its values.
"""

from __future__ import annotations

import time

import orjson
import psycopg
import pytest

from conftest import FakeClock, allowed, config
from remit.bootstrap import open_store
from remit.engine import ActionInput, Engine
from remit.store.base import load_statements

HISTORY_ROWS = 30_000
"""Reservations added behind the connections' backs; one full scan reads at least this many."""
BACKENDS_EXIT_SECONDS_MAX = 10


def _table_reads(url: str) -> dict[str, int]:
    """Rows of `reservations` read so far by connections that have ended (a backend hands its
    counts to the statistics views when it exits, which happens a moment after its client closed)."""
    with psycopg.connect(url, autocommit=True) as connection:
        others = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        deadline = time.monotonic() + BACKENDS_EXIT_SECONDS_MAX
        while connection.execute(others).fetchone() != (0,):
            assert time.monotonic() < deadline, "the engines' backends did not exit: their counts are not in yet"
            time.sleep(0.05)
        row = connection.execute(
            "SELECT seq_tup_read, idx_tup_fetch FROM pg_stat_user_tables WHERE relname = 'reservations'"
        ).fetchone()
    assert row is not None
    return {"seq_tup_read": int(row[0]), "idx_tup_fetch": int(row[1] or 0)}


def _pair(engine: Engine, settler: Engine) -> None:
    request = ActionInput(agent="a1", action="crm.update", amounts={"usd": "0.01"})
    settler.commit("t1", allowed(engine.authorize("t1", request)), {"usd": "0.01"})


@pytest.mark.postgres
def test_commits_find_reservations_by_key_after_the_table_grew(pg_url: str) -> None:
    clock = FakeClock()
    # Two engines, as two server processes: each commit is of the other's hold, so every batch
    # looks its reservations up in the database rather than in the engine's memory.
    first, second = Engine(open_store(pg_url), clock=clock), Engine(open_store(pg_url), clock=clock)
    try:
        first.create_tenant("t1")
        first.apply_config("t1", config())
        for _ in range(12):  # past the five custom plans, on near-empty tables
            _pair(first, second)
            _pair(second, first)
        with psycopg.connect(pg_url, autocommit=True) as connection:
            connection.execute(
                """INSERT INTO reservations (tenant_id, reservation_id, status, agent, action, task, amounts, parts,
                                             lease_expires_at_us, created_at_us, resolved_at_us, result, resolve_key,
                                             was_expired)
                   SELECT 't1', 'res_history_' || n, 'committed', 'a1', 'crm.update', NULL, '{}', '[]', 0, 0, 0,
                          NULL, NULL, false
                   FROM generate_series(1, %s) AS n""",
                (HISTORY_ROWS,),
            )
        for _ in range(5):  # the same connections, now on a large table
            _pair(first, second)
            _pair(second, first)
    finally:
        first.store.close()  # a backend's statistics reach the views when it exits
        second.store.close()
    read = _table_reads(pg_url)
    assert read["idx_tup_fetch"] > 0, read  # the statistics were collected: the bounds below mean something
    assert read["seq_tup_read"] < HISTORY_ROWS, read
    assert read["idx_tup_fetch"] < HISTORY_ROWS, read


@pytest.mark.postgres
def test_an_owned_claim_locks_its_tenants_by_key_in_id_order(pg_url: str) -> None:
    """Among thousands of tenants, the owned claim finds its rows by key and locks them in id
    order (LockRows over the primary key), as the ordinary claim does: no scan of the table."""
    open_store(pg_url).close()  # migrated
    claim = load_statements("postgres")["claim_owned_tenants"]
    with psycopg.connect(pg_url, autocommit=True, options="-c plan_cache_mode=force_custom_plan") as connection:
        connection.execute(
            "INSERT INTO tenants (tenant_id, write_seq, config_version, created_at_us, next_due_us, lineage, config,"
            " name, timezone) SELECT 't' || g, 1, 1, 0, 0, '', '', '', 'UTC' FROM generate_series(1, 5000) AS g"
        )
        connection.execute("ANALYZE tenants")
        rows = [["t17", 1, 1], ["t4242", 1, 1]]
        with connection.transaction(force_rollback=True):
            plan = "\n".join(
                line
                for (line,) in connection.execute(
                    "EXPLAIN (COSTS OFF) " + claim, ([row[0] for row in rows], orjson.dumps(rows).decode(), 2)
                )
            )
            connection.execute(claim, ([row[0] for row in rows], orjson.dumps(rows).decode(), 2))  # claims both
    assert "Seq Scan on tenants" not in plan, plan
    assert "LockRows" in plan, plan
    # Rows come to LockRows in the primary key's order (ORDER BY tenant_id), hence no Sort.
    assert "Index Scan using tenants_pkey on tenants" in plan.split("LockRows", 1)[1], plan
