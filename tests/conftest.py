"""Shared fixtures: a store per backend, an engine on it with a controllable clock.

PostgreSQL tests use REMIT_TEST_PG (default postgresql://127.0.0.1:5432/postgres); each test
gets a fresh database created from it. They are skipped when PostgreSQL is unreachable,
except under CI (CI=true), where that is a failure: `.ci/run` also checks nothing was skipped.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import pytest

from remit.bootstrap import open_store
from remit.config import load_file
from remit.domain.decisions import Decision, Outcome
from remit.engine import Engine
from remit.store.base import Store

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_CONFIG = ROOT / "examples" / "remit.yaml"
WORKERS_PATH = ROOT / "tests" / "contract" / "workers.py"
PG_ADMIN_URL = os.environ.get("REMIT_TEST_PG", "postgresql://127.0.0.1:5432/postgres")
START_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z


class FakeClock:
    """A clock the test moves by hand; returns integer microseconds."""

    def __init__(self, now_us: int = START_US) -> None:
        self.now_us = now_us

    def __call__(self) -> int:
        return self.now_us

    def advance(self, seconds: float) -> None:
        self.now_us += int(seconds * 1_000_000)


def _pg_available() -> bool:
    try:
        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


_PG_OK: bool | None = None


def require_postgres() -> None:
    global _PG_OK
    if _PG_OK is None:
        _PG_OK = _pg_available()
    if not _PG_OK:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL at {PG_ADMIN_URL} is unreachable; CI must run the PostgreSQL tests")
        pytest.skip(f"PostgreSQL at {PG_ADMIN_URL} is unreachable")


def _with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


@contextlib.contextmanager
def fresh_pg_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database (other processes may open it too); dropped afterwards.

    Skipped when PostgreSQL is unreachable; a failure under CI.
    """
    require_postgres()
    name = f"remit_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _with_database(PG_ADMIN_URL, name)
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def fresh_database(kind: str, directory: Path) -> Iterator[str]:
    """A database URL nothing has used: a new SQLite file in `directory`, or a new PostgreSQL database."""
    if kind == "sqlite":
        yield f"sqlite:///{directory / f'remit-{uuid.uuid4().hex[:8]}.db'}"
        return
    with fresh_pg_database() as url:
        yield url


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test; dropped afterwards."""
    with fresh_pg_database() as url:
        yield url


def make_store(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Store:
    if kind == "sqlite":
        return open_store(f"sqlite:///{tmp_path / 'remit.db'}")
    url: str = request.getfixturevalue("pg_url")
    return open_store(url)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """Every contract test runs against each store."""
    opened = make_store(request.param, tmp_path, request)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def engine(store: Store, clock: FakeClock) -> Engine:
    """An engine with tenant `t1` configured from examples/remit.yaml."""
    engine = Engine(store, clock=clock)
    engine.create_tenant("t1", timezone="America/New_York")
    engine.apply_config("t1", load_file(EXAMPLE_CONFIG), source=str(EXAMPLE_CONFIG))
    return engine


def config(**overrides: Any) -> dict[str, Any]:
    """A small config document for tests: one meter `usd` (scale 2), scope `ops`, agent `a1`."""
    document: dict[str, Any] = {
        "tenant": {"timezone": "UTC"},
        "meters": {"usd": {"kind": "sum", "scale": 2}, "accounts": {"kind": "distinct"}},
        "scopes": {"ops": {"budgets": [{"meter": "usd", "limit": "100", "window": "day"}]}},
        "agents": {"a1": {"scope": "ops"}, "a2": {"scope": "ops"}},
    }
    document.update(overrides)
    return document


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL other processes can open too; PostgreSQL gets a fresh database (pg_url → require_postgres)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'remit.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


def load_workers() -> ModuleType:
    """tests/contract/workers.py, which child processes also run as a script.

    Loaded by path, so it works whether or not tests/ is a package and whatever pytest's
    import mode.
    """
    spec = importlib.util.spec_from_file_location("remit_contract_workers", WORKERS_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def assert_consistent(engine: Engine, tenant: str = "t1") -> None:
    """The ledger rebuilds to exactly the live counters."""
    report = engine.check(tenant)
    assert report.is_consistent, report.mismatches


def allowed(decision: Decision) -> str:
    """The reservation id of an allowed decision (fails the test on any other outcome)."""
    assert decision.outcome is Outcome.ALLOW, decision.reasons
    assert decision.reservation_id is not None
    return decision.reservation_id
