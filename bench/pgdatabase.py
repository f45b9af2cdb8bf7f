"""A throw-away PostgreSQL database for one benchmark run, beside REMIT_BENCH_PG (shared by the benches)."""

from __future__ import annotations

import os
import uuid

PG_URL = os.environ.get("REMIT_BENCH_PG", "postgresql://127.0.0.1:5432/postgres")


class PgDatabase:
    """A throw-away database next to REMIT_BENCH_PG."""

    def __init__(self) -> None:
        import psycopg

        self.name = f"remit_bench_{uuid.uuid4().hex[:10]}"
        self._psycopg = psycopg
        with psycopg.connect(PG_URL, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{self.name}"')
        self.url = PG_URL.rpartition("/")[0] + "/" + self.name

    def drop(self) -> None:
        with self._psycopg.connect(PG_URL, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
