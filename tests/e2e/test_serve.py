"""`remit serve` as a process: first start, restart, port clash, request log, graceful shutdown.

How: each test starts the real console script on a free port over a temporary SQLite file,
reads what it prints, talks to it over HTTP and stops it with a signal. The shutdown test stops
the server while clients are mid-flight and then reopens the database: every answer a client
received is in the ledger, nothing is half-written, and the counters rebuild from the ledger.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from .servers import assert_told_answers_in_ledger

REMIT = str(Path(sys.executable).with_name("remit"))
START_TIMEOUT_SECONDS = 30


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Served:
    def __init__(self, database: Path, port: int, *extra: str) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = database.with_suffix(f".{port}.log")
        self._log_file = self.log.open("wb")
        self.process = subprocess.Popen(
            [REMIT, "serve", "--port", str(port), "--database-url", f"sqlite:///{database}", *extra],
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: list[str] = []
        assert self.process.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            line = self.process.stdout.readline().decode()
            if not line:
                raise AssertionError(f"remit serve exited: {self.log.read_text()}")
            self.lines.append(line.rstrip("\n"))
            if line.startswith("remit serving"):
                break
        self._wait_ready(deadline)

    def _wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        raise AssertionError("remit serve did not become ready")

    @property
    def keys(self) -> dict[str, str]:
        found = {}
        for line in self.lines:
            if line.startswith("admin key: "):
                found["admin"] = line.split(": ", 1)[1]
            elif line.startswith("agent key "):
                name, key = line.removeprefix("agent key ").split(": ", 1)
                found[name] = key
        return found

    def stop(self, sig: int | None = signal.SIGTERM) -> int:
        """Signal the server (None: it was signalled already) and wait for its exit code."""
        if sig is not None and self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout=30)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            assert self.process.stdout is not None
            self.process.stdout.close()
            self._log_file.close()
        return code


@pytest.fixture
def database(tmp_path: Path) -> Path:
    return tmp_path / "remit.db"


def test_first_start_prints_keys_once_and_a_restart_prints_none(database: Path) -> None:
    first = Served(database, free_port())
    try:
        keys = first.keys
        assert set(keys) == {"admin", "bot-7", "bot-8", "helper-1"}
        who = httpx.get(f"{first.url}/v1/whoami", headers={"authorization": f"Bearer {keys['bot-7']}"}).json()
        assert who["role"] == "agent" and who["agent"] == "bot-7" and who["tenant"] == "default"
    finally:
        assert first.stop() == 0
    second = Served(database, free_port())
    try:
        assert second.keys == {}
        assert any("already has keys" in line for line in second.lines)
        # The keys of the first start still work, and the config was not re-applied (same version).
        config = httpx.get(f"{second.url}/v1/config", headers={"authorization": f"Bearer {keys['admin']}"}).json()
        assert config["version"] == 1
    finally:
        assert second.stop() == 0


def test_a_taken_port_is_one_line_and_exit_2(database: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [REMIT, "serve", "--port", str(port), "--database-url", f"sqlite:///{database}"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert not database.exists(), "nothing is created when the server cannot listen"


def test_every_request_logs_one_json_line(database: Path) -> None:
    served = Served(database, free_port())
    key = served.keys["bot-7"]
    body = {"action": "crm.discount.apply", "amounts": {"usd": "1.00"}}
    answers = [
        httpx.post(f"{served.url}/v1/authorize", json=body, headers={"authorization": f"Bearer {key}"}),
        httpx.post(f"{served.url}/v1/authorize", json=body),
        httpx.get(f"{served.url}/nowhere"),
    ]
    served.stop()
    assert [a.status_code for a in answers] == [200, 401, 404]
    records = [orjson.loads(line) for line in served.log.read_text().splitlines() if line.startswith("{")]
    requests = [(r["method"], r["path"], r["status"]) for r in records]
    assert requests[-3:] == [("POST", "/v1/authorize", 200), ("POST", "/v1/authorize", 401), ("GET", "/nowhere", 404)]
    assert records[-3]["tenant"] == "default" and records[-3]["duration_ms"] > 0
    assert {r["pid"] for r in records[-3:]} == {served.process.pid}  # one process: it answered all three


async def _agent_loop(url: str, key: str, answers: list[dict[str, Any]], stop: asyncio.Event) -> None:
    headers = {"authorization": f"Bearer {key}"}
    body = {"action": "llm.call", "task": "t-1", "amounts": {"tokens": "1"}, "lease_seconds": 300}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=10) as client:
        while not stop.is_set():
            try:
                decision = (await client.post("/v1/authorize", json=body)).json()
                answers.append(decision)
                if decision["decision"] == "allow":
                    commit = await client.post(f"/v1/reservations/{decision['reservation']}/commit", json={})
                    answers.append({"committed": decision["reservation"], "status": commit.status_code})
            except httpx.TransportError:
                return  # the server stopped listening: this agent is done


def test_sigterm_mid_flight_loses_nothing(database: Path) -> None:
    served = Served(database, free_port(), "--no-log-requests")
    key = served.keys["helper-1"]
    answers: list[dict[str, Any]] = []

    async def run() -> None:
        stop = asyncio.Event()
        agents = [asyncio.create_task(_agent_loop(served.url, key, answers, stop)) for _ in range(32)]
        while len(answers) < 200:
            await asyncio.sleep(0.01)
        served.process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(asyncio.gather(*agents), timeout=30)

    asyncio.run(run())
    assert served.stop(None) == 0, served.log.read_text()
    allowed = {a["reservation"] for a in answers if a.get("decision") == "allow"}
    committed = {a["committed"] for a in answers if a.get("status") == 200}
    assert len(allowed) >= 50 and committed <= allowed
    assert_told_answers_in_ledger(f"sqlite:///{database}", allowed, committed)


def _ledger_rows_in_the_main_file(database: Path) -> int:
    """Ledger rows in the database file itself, ignoring the write-ahead log (`immutable=1`)."""
    connection = sqlite3.connect(f"file:{database}?immutable=1", uri=True)
    try:
        return int(connection.execute("SELECT count(*) FROM ledger").fetchone()[0])
    finally:
        connection.close()


def test_a_server_checkpoints_the_wal_itself(database: Path) -> None:
    """Commits leave their entries in the WAL (SQLite's own checkpoint waits for ~40 MB of it):
    the server's checkpointer moves them into the database file within a moment. Fails without it."""
    served = Served(database, free_port())
    try:
        headers = {"authorization": f"Bearer {served.keys['bot-7']}"}
        body = {"action": "crm.discount.apply", "amounts": {"usd": "1.00"}}
        for _ in range(5):
            decision = httpx.post(f"{served.url}/v1/authorize", json=body, headers=headers).json()
            commit = httpx.post(
                f"{served.url}/v1/reservations/{decision['reservation']}/commit", json={}, headers=headers
            )
            assert commit.status_code == 200
        reader = sqlite3.connect(database)  # through the WAL, as the server sees it
        committed = int(reader.execute("SELECT count(*) FROM ledger").fetchone()[0])
        reader.close()
        deadline = time.monotonic() + 5
        while _ledger_rows_in_the_main_file(database) < committed:
            assert time.monotonic() < deadline, "the committed entries stayed in the WAL"
            time.sleep(0.05)
    finally:
        served.stop()
