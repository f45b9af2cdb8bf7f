"""Real `remit serve` processes for the end-to-end tests, the databases they run on, HTTP helpers.

`start_server` launches `python -m remit.cli serve` on a free port, reads the keys it prints
(only the process that bootstraps a tenant prints any), and returns once /readyz answers 200.
Several servers may share one database: a second tenant (`--tenant other`, which prints that
tenant's keys) or a second process of the same tenant (which prints none). `database` yields a
fresh SQLite file or a fresh PostgreSQL database (skipped when PostgreSQL is unreachable, a
failure under CI). conftest.py builds its `server` / `module_server` fixtures from these.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from conftest import fresh_database, fresh_pg_database
from remit.api.app import Api, routes
from remit.bootstrap import open_engine

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_CONFIG = ROOT / "examples" / "remit.yaml"
START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 20.0
_READY_POLL_SECONDS = 0.05
_ADMIN_LINE = re.compile(r"^admin key: (rk_\S+)$")
_AGENT_LINE = re.compile(r"^agent key (\S+): (rk_\S+)$")
_SERVING_LINE = "remit serving "


postgres_database = fresh_pg_database
"""A fresh, empty PostgreSQL database other processes can open; dropped afterwards."""
database = fresh_database
"""A database URL for `kind` ("sqlite" or "postgres") that nothing has used yet."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class RemitServer:
    """One running `remit serve`. Keys are None / empty unless this process bootstrapped its tenant."""

    url: str
    database_url: str
    tenant: str
    admin_key: str | None
    agent_keys: dict[str, str]
    stdout_lines: list[str]
    log_path: Path
    process: subprocess.Popen[str] = field(repr=False)
    _reader: threading.Thread = field(repr=False)

    def client(self, key: str | None = None) -> httpx.Client:
        return client(self.url, key)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM (a graceful drain), then SIGKILL if it hangs; idempotent."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(timeout=STOP_TIMEOUT_SECONDS)
        if self.process.stdout is not None:
            self.process.stdout.close()


def start_server(
    database_url: str,
    log_dir: Path,
    *,
    tenant: str = "default",
    config: Path | None = EXAMPLE_CONFIG,
    is_bootstrapping: bool = True,
    is_logging_requests: bool = True,
    extra_args: tuple[str, ...] = (),
) -> RemitServer:
    """Start `remit serve` and return once it answers /readyz (its stderr goes to a file in `log_dir`)."""
    port = free_port()
    args = [sys.executable, "-m", "remit.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    args += ["--database-url", database_url, "--tenant", tenant]
    args += ["--config", str(config)] if config is not None else []
    args += [] if is_bootstrapping else ["--no-bootstrap"]
    args += [] if is_logging_requests else ["--no-log-requests"]
    args += list(extra_args)
    env = {key: value for key, value in os.environ.items() if not key.startswith("REMIT_")}
    log_path = log_dir / f"remit-serve-{tenant}-{port}.log"
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=log_file, text=True, env=env, cwd=ROOT, bufsize=1
        )
    lines: list[str] = []
    serving = threading.Event()

    def read_stdout() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith(_SERVING_LINE):
                serving.set()
        serving.set()  # EOF: the process ended; the readiness loop reports why

    reader = threading.Thread(target=read_stdout, name=f"remit-serve-{port}", daemon=True)
    reader.start()
    server = RemitServer(f"http://127.0.0.1:{port}", database_url, tenant, None, {}, lines, log_path, process, reader)
    try:
        _wait_until_ready(server, serving)
    except BaseException:
        server.stop()
        raise
    for line in lines:
        if match := _ADMIN_LINE.match(line):
            server.admin_key = match.group(1)
        elif match := _AGENT_LINE.match(line):
            server.agent_keys[match.group(1)] = match.group(2)
    return server


def _wait_until_ready(server: RemitServer, serving: threading.Event) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    if not serving.wait(START_TIMEOUT_SECONDS) or server.process.poll() is not None:
        server.process.wait(timeout=STOP_TIMEOUT_SECONDS)
        raise RuntimeError(
            f"remit serve exited ({server.process.returncode}) before serving:\n"
            + "\n".join(server.stdout_lines)
            + "\n"
            + server.log_tail()
        )
    with httpx.Client(base_url=server.url, timeout=5.0) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise RuntimeError(f"remit serve exited ({server.process.returncode}):\n{server.log_tail()}")
            with contextlib.suppress(httpx.TransportError):
                if client.get("/readyz").status_code == 200:
                    return
            time.sleep(_READY_POLL_SECONDS)  # polling a condition with a deadline, not waiting for a guess
    raise RuntimeError(f"remit serve at {server.url} was not ready in {START_TIMEOUT_SECONDS}s:\n{server.log_tail()}")


@contextlib.contextmanager
def running(database_url: str, log_dir: Path, **options: Any) -> Iterator[RemitServer]:
    server = start_server(database_url, log_dir, **options)
    try:
        yield server
    finally:
        server.stop()


def client(url: str, key: str | None = None) -> httpx.Client:
    """An HTTP client for one server, authenticated with `key` (none: anonymous)."""
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=url, headers=headers, timeout=httpx.Timeout(30.0))


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The `error` object of an error response (fails the test if the body is not in that shape)."""
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert set(error) == {"code", "message", "details"}, error
    assert isinstance(error["message"], str) and error["message"], error
    return error


def served_routes() -> list[tuple[str, str]]:
    """Every (path, method) the app serves, read from the route table itself."""
    table = routes(Api(None, None, None))  # type: ignore[arg-type]  # only paths and methods are read
    return [(route.path, method) for route in table for method in sorted((route.methods or set()) - {"HEAD"})]


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, f"{response.request.method} {response.request.url}: {response.text}"
    return response.json()


def refused(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, f"{response.request.method} {response.request.url}: {response.text}"
    error = error_of(response)
    assert error["code"] == code, error
    return error


def tenant_state(admin: httpx.Client, tenant: str = "default") -> tuple[Any, ...]:
    """Everything of a tenant a refused or foreign request must leave as it was: balances, the
    whole ledger (consistent with the counters), the config and the keys."""
    balances = {
        row["budget"]: (row["limit"], row["used"], row["held"], row["remaining"])
        for row in ok(admin.get("/v1/headroom"))["budgets"]
    }
    ledger = ok(admin.get("/v1/ledger", params={"limit": "1000"}))
    assert ledger["next_cursor"] is None
    check = ok(admin.get("/v1/check"))
    assert check["is_consistent"] and check["tenant"] == tenant
    return balances, ledger["entries"], ok(admin.get("/v1/config")), ok(admin.get("/v1/keys"))


def assert_told_answers_in_ledger(database_url: str, allowed: set[str], committed: set[str]) -> None:
    """After a server stopped: the ledger is consistent, holds every reservation a client was
    told was allowed, and a commit of every one a client was told was committed."""
    engine = open_engine(database_url)
    try:
        assert engine.check("default").is_consistent
        with engine.store.transaction(is_read_only=True) as tx:
            kinds: dict[str, set[str]] = {}
            for entry in tx.ledger_entries("default"):
                if entry.reservation_id:
                    kinds.setdefault(entry.reservation_id, set()).add(entry.kind.value)
        assert allowed <= set(kinds), "every hold a client was told about is in the ledger"
        assert all("commit" in kinds[rid] for rid in committed), "every commit a client was told about landed"
    finally:
        engine.store.close()
