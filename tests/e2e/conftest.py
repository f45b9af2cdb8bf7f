"""Fixtures for end-to-end tests: a real `remit serve` over SQLite or a fresh PostgreSQL database.

`server` (one per test) and `module_server` (one per module and store, for suites that keep
their tests apart themselves) are parametrised over ["sqlite", "postgres"]. Each is a
`RemitServer` (tests/e2e/servers.py: `.url`, `.admin_key`, `.agent_keys`, `.database_url`,
`.stop()`) started by `start_server` on a database nothing has used, with the demo config
(examples/remit.yaml); the fixture fails unless the server printed its keys, and on teardown
stops the process (SIGTERM, then SIGKILL) and drops the database. PostgreSQL follows
tests/conftest.py: skipped when unreachable, a failure under CI.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import fresh_database

from .servers import RemitServer, running

STORES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def store_of(server: RemitServer) -> str:
    return "sqlite" if server.database_url.startswith("sqlite") else "postgres"


@contextlib.contextmanager
def first_server(store: str, directory: Path) -> Iterator[RemitServer]:
    """The first server of a fresh database: it bootstraps the tenant and prints its keys."""
    with fresh_database(store, directory) as url, running(url, directory, is_logging_requests=False) as started:
        if started.admin_key is None:
            pytest.fail("remit serve printed no admin key:\n" + "\n".join(started.stdout_lines))
        yield started


@pytest.fixture(params=STORES)
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RemitServer]:
    """A fresh server (and database) for one test."""
    with first_server(request.param, tmp_path) as started:
        yield started


@pytest.fixture(scope="module", params=STORES)
def module_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RemitServer]:
    """One server per test module and store: its tests must not depend on each other's state."""
    with first_server(request.param, tmp_path_factory.mktemp(f"server-{request.param}")) as started:
        yield started
