"""`remit serve --workers 2`: one supervisor, two worker processes on one port, on both stores.

How: each test starts the real CLI (`start_server` with `--workers 2`) on a database nothing
has used and reads the process tree from /proc. The supervisor is the process the test
launched; its children that run `multiprocessing.spawn` are the workers (the only other one is
multiprocessing's resource tracker). Which worker answered a request is read from the kernel,
not guessed: the server end of the client's TCP connection (/proc/net/tcp) is a socket that
exactly one worker holds open (/proc/<pid>/fd). Proved:
- the keys are printed once (the supervisor bootstraps; no worker does), both workers answer
  /readyz, and there are exactly two of them (on SQLite and PostgreSQL);
- 64 clients, one keep-alive connection each, racing one 200-unit budget through both workers
  commit exactly 200 units (from the commit answers, GET /v1/headroom and the ledger), no
  answer is an error, both workers decided some, and GET /v1/check finds the counters equal
  to the ledger (on SQLite and PostgreSQL);
- SIGTERM to the supervisor mid-flight: it exits 0 within the stop timeout, no process it
  started is left, and every hold and commit a client was told about is in the ledger;
- a worker killed with SIGKILL mid-flight is replaced, the replacement serves, and the ledger
  still matches the counters;
- the workers of a supervisor killed with SIGKILL stop and free the port;
- on PostgreSQL the engine host's socket sits in a directory only the server's user may enter,
  removed at the stop; SQLite workers make none.
The last four on both stores (on PostgreSQL the workers' decisions go through the supervisor's
engine host, `remit.relay`).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from conftest import fresh_database

from .conftest import STORES
from .servers import (
    EXAMPLE_CONFIG,
    STOP_TIMEOUT_SECONDS,
    RemitServer,
    assert_told_answers_in_ledger,
    client,
    ok,
    running,
)

pytestmark = pytest.mark.slow

WORKERS = 2
WORKERS_ARGS = ("--workers", str(WORKERS))
WAIT_SECONDS_MAX = 60.0
"""How long a condition polled from outside (a worker started, replaced, reached) may take."""
POLL_SECONDS = 0.05
CLIENTS = 64
LIMIT_UNITS = 200
BUDGET = "fleet-units"
AGENTS = [f"agent-{number}" for number in range(4)]
SHARED_CONFIG = {
    # `total` never resets, so a run that crosses midnight cannot get a second window's worth.
    "tenant": {"timezone": "UTC"},
    "meters": {"units": {"kind": "sum"}},
    "scopes": {
        "fleet": {
            "owner": "ops@example.com",
            "budgets": [{"meter": "units", "limit": str(LIMIT_UNITS), "window": "total", "id": BUDGET}],
        }
    },
    "agents": {agent: {"scope": "fleet"} for agent in AGENTS},
}
SPAWNED_WORKER = "multiprocessing.spawn import spawn_main"
RESOURCE_TRACKER = "multiprocessing.resource_tracker import main"
MID_FLIGHT_ANSWERS = 200
"""Answers the clients have seen before the test signals a process."""


# ---------------------------------------------------------------------------------------------
# The process tree, from /proc


@dataclass(frozen=True, slots=True)
class Proc:
    """A process as /proc shows it; `start_ticks` tells it from a later process given the same pid."""

    pid: int
    start_ticks: int
    command: str


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text[text.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses


def proc_of(pid: int) -> Proc | None:
    """The process `pid` if it is alive (a zombie is not), else None."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] in {"Z", "X"}:
        return None
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    return Proc(pid, int(fields[19]), command)


def is_alive(process: Proc) -> bool:
    found = proc_of(process.pid)
    return found is not None and found.start_ticks == process.start_ticks


def live_children(pid: int) -> list[Proc]:
    children: list[Proc] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for child in (task / "children").read_text().split():
                if (found := proc_of(int(child))) is not None:
                    children.append(found)
    return children


def descendants(pid: int) -> list[Proc]:
    found = live_children(pid)
    return found + [grandchild for child in found for grandchild in descendants(child.pid)]


def workers_of(server: RemitServer) -> list[Proc]:
    return [child for child in live_children(server.process.pid) if SPAWNED_WORKER in child.command]


def wait_for(condition: Callable[[], Any], what: str) -> Any:
    """Poll `condition` until it returns something truthy (and return that), for WAIT_SECONDS_MAX."""
    deadline = time.monotonic() + WAIT_SECONDS_MAX
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(POLL_SECONDS)  # polling a condition with a deadline, not waiting for a guess
    raise AssertionError(f"not within {WAIT_SECONDS_MAX}s: {what}")


def wait_for_workers(server: RemitServer, *, without: Collection[int] = ()) -> list[Proc]:
    """The supervisor's workers once there are WORKERS of them, none of them a pid in `without`."""

    def settled() -> list[Proc] | None:
        workers = workers_of(server)
        return workers if len(workers) == WORKERS and not {w.pid for w in workers} & set(without) else None

    found: list[Proc] = wait_for(settled, f"{WORKERS} live workers under {server.process.pid}, none of {without}")
    return found


# ---------------------------------------------------------------------------------------------
# Which worker answered: the server end of the response's connection


def _server_socket_inode(server_port: int, client_port: int) -> int | None:
    local, remote = f"0100007F:{server_port:04X}", f"0100007F:{client_port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local and fields[2] == remote and fields[9] != "0":
            return int(fields[9])
    return None


def worker_of(response: httpx.Response, workers: list[Proc]) -> int | None:
    """The pid of the worker holding the server end of the connection `response` came on (None:
    the connection is gone, or no worker holds it)."""
    stream = response.extensions["network_stream"]
    try:
        client_port = stream.get_extra_info("client_addr")[1]
        server_port = stream.get_extra_info("server_addr")[1]
    except OSError:
        return None
    inode = _server_socket_inode(server_port, client_port)
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for worker in workers:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for fd in os.listdir(f"/proc/{worker.pid}/fd"):
                with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                    if os.readlink(f"/proc/{worker.pid}/fd/{fd}") == target:
                        return worker.pid
    return None


class Attribution:
    """Answers per worker pid (None: not found), looked up once per connection: a keep-alive
    connection stays with the worker that accepted it."""

    def __init__(self, workers: list[Proc]) -> None:
        self.workers = workers
        self.by_worker: collections.Counter[int | None] = collections.Counter()
        self._lock = threading.Lock()

    def recorder(self) -> Callable[[httpx.Response], None]:
        """A callback for one client (one thread): counts each answer for the worker that sent it."""
        known: dict[Any, int | None] = {}

        def record(response: httpx.Response) -> None:
            try:
                connection = response.extensions["network_stream"].get_extra_info("client_addr")
            except OSError:  # the connection is closed already
                connection = None
            if connection is not None and connection not in known:
                known[connection] = worker_of(response, self.workers)
            pid = known.get(connection)
            with self._lock:
                self.by_worker[pid] += 1

        return record

    def workers_seen(self) -> set[int | None]:
        with self._lock:  # the clients' threads count meanwhile
            return set(self.by_worker)


def answered_by_each_worker(server: RemitServer, workers: list[Proc], path: str, key: str | None = None) -> None:
    """Open fresh connections until every worker has answered `path` with 200 (each answer must be 200)."""
    pending = {worker.pid for worker in workers}

    def one_more() -> bool:
        with client(server.url, key) as http:
            response = http.get(path)
            ok(response)
            pending.discard(worker_of(response, workers))
        return not pending

    wait_for(one_more, f"each of the workers {sorted(pending)} answering {path}")


def serving_workers(server: RemitServer) -> list[Proc]:
    """The two workers, once both answer: `start_server` returns when the first one does."""
    workers = wait_for_workers(server)
    answered_by_each_worker(server, workers, "/readyz")
    return workers


# ---------------------------------------------------------------------------------------------
# Servers and clients


@contextlib.contextmanager
def workers_server(store: str, directory: Path, config: Path = EXAMPLE_CONFIG) -> Iterator[RemitServer]:
    with (
        fresh_database(store, directory) as url,
        running(url, directory, config=config, is_logging_requests=False, extra_args=WORKERS_ARGS) as started,
    ):
        assert started.admin_key is not None, started.stdout_lines
        yield started


@dataclass
class Tally:
    """What the clients were told, merged over every thread."""

    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    allowed: set[str] = field(default_factory=set)
    committed: dict[str, int] = field(default_factory=dict)
    """reservation → units the commit answer said were counted."""
    denials: list[dict[str, Any]] = field(default_factory=list)
    overspent: list[dict[str, Any]] = field(default_factory=list)
    transport_errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def answers(self) -> int:
        with self.lock:  # the clients' threads add statuses meanwhile
            return sum(self.statuses.values())


def act_once(
    http: httpx.Client, body: dict[str, Any], tally: Tally, on_answer: Callable[[httpx.Response], Any]
) -> bool:
    """Authorize `body` and commit it if allowed; False once the client should stop (a denial, an error)."""
    answer = http.post("/v1/authorize", json=body)
    on_answer(answer)
    with tally.lock:
        tally.statuses[answer.status_code] += 1
    if answer.status_code != 200:
        return False
    decision = answer.json()
    if decision["decision"] != "allow":
        with tally.lock:
            tally.denials.append(decision)
        return False
    with tally.lock:
        tally.allowed.add(decision["reservation"])
        tally.overspent += [
            row for row in decision["budgets"] if int(row["used"]) + int(row["held"]) > int(row["limit"])
        ]
    commit = http.post(f"/v1/reservations/{decision['reservation']}/commit", json={})
    on_answer(commit)
    with tally.lock:
        tally.statuses[commit.status_code] += 1
        if commit.status_code == 200:
            tally.committed[decision["reservation"]] = sum(int(units) for units in commit.json()["committed"].values())
    return commit.status_code == 200


def run_threads(targets: list[Callable[[], None]]) -> list[threading.Thread]:
    threads = [threading.Thread(target=target, daemon=True) for target in targets]
    for thread in threads:
        thread.start()
    return threads


def join_all(threads: list[threading.Thread]) -> None:
    deadline = time.monotonic() + WAIT_SECONDS_MAX
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not any(thread.is_alive() for thread in threads), "a client was still running"


def ledger_commits(admin: httpx.Client) -> int:
    """Units committed on BUDGET according to the ledger, every page."""
    units, cursor = 0, None
    while True:
        params = {"kind": "commit", "limit": "1000", **({"cursor": cursor} if cursor else {})}
        page = ok(admin.get("/v1/ledger", params=params))
        units += sum(int(p["used"]) for e in page["entries"] for p in e["postings"] if p["budget"] == BUDGET)
        cursor = page["next_cursor"]
        if cursor is None:
            return units


# ---------------------------------------------------------------------------------------------
# The tests


@pytest.mark.parametrize("store", STORES)
def test_two_workers_start_answer_and_print_the_keys_once(store: str, tmp_path: Path) -> None:
    with workers_server(store, tmp_path) as server:
        workers = serving_workers(server)
        answered_by_each_worker(server, workers, "/v1/whoami", server.agent_keys["bot-7"])

        # Each worker has answered, so each finished starting: a worker that bootstrapped would have printed by now.
        keys = [server.admin_key, *server.agent_keys.values()]
        output = "\n".join(server.stdout_lines)
        assert set(server.agent_keys) == {"bot-7", "bot-8", "helper-1"}, output
        assert sum(line.startswith("admin key: ") for line in server.stdout_lines) == 1, output
        assert sum(line.startswith("agent key ") for line in server.stdout_lines) == 3, output
        assert all(output.count(str(key)) == 1 for key in keys), output
        assert sum(line.startswith("remit serving ") for line in server.stdout_lines) == 1, output
        assert f"with {WORKERS} worker processes" in output
        assert "rk_" not in server.log_path.read_text(), "no key in the log"

        # Exactly the two workers (and multiprocessing's resource tracker), none with children of its own.
        children = live_children(server.process.pid)
        assert descendants(server.process.pid) == children
        assert sorted(c.pid for c in children if SPAWNED_WORKER in c.command) == sorted(w.pid for w in workers)
        assert all(SPAWNED_WORKER in c.command or RESOURCE_TRACKER in c.command for c in children), children


@pytest.mark.parametrize("store", STORES)
def test_clients_over_two_workers_spend_a_shared_budget_exactly(store: str, tmp_path: Path) -> None:
    config = tmp_path / "shared.yaml"
    config.write_text(yaml.safe_dump(SHARED_CONFIG))
    with workers_server(store, tmp_path, config) as server:
        assert set(server.agent_keys) == set(AGENTS), server.stdout_lines
        workers = serving_workers(server)
        tally, attribution = Tally(), Attribution(workers)
        start = threading.Barrier(CLIENTS)

        def run_client(number: int) -> None:
            record = attribution.recorder()
            with client(server.url, server.agent_keys[AGENTS[number % len(AGENTS)]]) as http:
                start.wait(WAIT_SECONDS_MAX)
                for attempt in itertools.count():
                    body = {"action": "unit.work", "amounts": {"units": "1"}, "idempotency_key": f"{number}-{attempt}"}
                    try:
                        if not act_once(http, body, tally, record):
                            return
                    except httpx.TransportError as error:
                        with tally.lock:
                            tally.transport_errors.append(repr(error))
                        return

        join_all(run_threads([functools.partial(run_client, number) for number in range(CLIENTS)]))

        assert tally.transport_errors == [] and set(tally.statuses) == {200}, (tally.statuses, tally.transport_errors)
        assert tally.overspent == []
        assert sum(tally.committed.values()) == LIMIT_UNITS and len(tally.committed) == LIMIT_UNITS
        assert len(tally.denials) == CLIENTS, "every client stopped at a denial, none at an error"
        assert all([reason["budget"] for reason in denial["reasons"]] == [BUDGET] for denial in tally.denials)
        # Both workers decided some of them: every answer came on a connection one of the two held.
        assert set(attribution.by_worker) == {w.pid for w in workers}, attribution.by_worker
        assert sum(attribution.by_worker.values()) == tally.answers
        with client(server.url, server.admin_key) as admin:
            row = next(row for row in ok(admin.get("/v1/headroom"))["budgets"] if row["budget"] == BUDGET)
            assert (row["used"], row["held"], row["remaining"]) == (str(LIMIT_UNITS), "0", "0"), row
            check = ok(admin.get("/v1/check"))
            assert check["is_consistent"], check["mismatches"]
            assert ledger_commits(admin) == LIMIT_UNITS


@pytest.mark.parametrize("store", STORES)
def test_sigterm_stops_the_supervisor_and_its_workers_losing_nothing(store: str, tmp_path: Path) -> None:
    with workers_server(store, tmp_path) as server:
        workers = serving_workers(server)
        started = descendants(server.process.pid)
        tally, attribution = Tally(), Attribution(workers)

        def run_agent(number: int) -> None:
            record = attribution.recorder()
            with client(server.url, server.agent_keys["helper-1"]) as http:
                for attempt in itertools.count():
                    body = {"action": "llm.call", "task": "t-1", "amounts": {"tokens": "1"}, "lease_seconds": 300}
                    body["idempotency_key"] = f"{number}-{attempt}"
                    try:
                        if not act_once(http, body, tally, record):
                            return
                    except httpx.TransportError:
                        return  # the server stopped: this agent is done

        threads = run_threads([functools.partial(run_agent, number) for number in range(32)])
        wait_for(lambda: tally.answers >= MID_FLIGHT_ANSWERS, f"{MID_FLIGHT_ANSWERS} answers")
        assert attribution.workers_seen() >= {w.pid for w in workers}, "both workers are mid-flight"
        server.process.send_signal(signal.SIGTERM)
        try:
            code = server.process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the supervisor did not exit within {STOP_TIMEOUT_SECONDS}s of SIGTERM:\n{server.log_tail()}")
        assert code == 0, server.log_tail()
        assert not any(is_alive(worker) for worker in workers), "the supervisor exited before its workers"
        join_all(threads)
        wait_for(lambda: not any(is_alive(p) for p in started), f"every process the supervisor started gone: {started}")

        assert len(tally.allowed) >= MID_FLIGHT_ANSWERS // 4 and set(tally.committed) <= tally.allowed
        # Read while the database still exists (a PostgreSQL one is dropped as the block ends).
        assert_told_answers_in_ledger(server.database_url, tally.allowed, set(tally.committed))


@pytest.mark.parametrize("store", STORES)
def test_a_killed_worker_is_replaced_and_serving_goes_on(store: str, tmp_path: Path) -> None:
    with workers_server(store, tmp_path) as server:
        workers = serving_workers(server)
        victim = workers[0]
        tally = Tally()
        stop = threading.Event()

        def run_agent(number: int) -> None:
            with client(server.url, server.agent_keys["helper-1"]) as http:
                for attempt in itertools.count():
                    if stop.is_set():
                        return
                    body = {"action": "llm.call", "task": "t-1", "amounts": {"tokens": "1"}, "lease_seconds": 300}
                    body["idempotency_key"] = f"{number}-{attempt}"
                    try:
                        act_once(http, body, tally, lambda answer: None)
                    except httpx.TransportError as error:  # the connections the killed worker held
                        with tally.lock:
                            tally.transport_errors.append(repr(error))

        threads = run_threads([functools.partial(run_agent, number) for number in range(8)])
        try:
            wait_for(lambda: tally.answers >= MID_FLIGHT_ANSWERS, f"{MID_FLIGHT_ANSWERS} answers")
            os.kill(victim.pid, signal.SIGKILL)
            replaced = wait_for_workers(server, without={victim.pid})
            survivor = next(w for w in workers if w.pid != victim.pid)
            assert survivor in replaced and is_alive(survivor), "the other worker was left alone"
            replacement = next(w for w in replaced if w.pid != survivor.pid)
            answers_at_replacement = tally.answers
            wait_for(
                lambda: tally.answers >= answers_at_replacement + MID_FLIGHT_ANSWERS, "answers after the replacement"
            )
        finally:
            stop.set()
            join_all(threads)
        assert set(tally.statuses) == {200}, tally.statuses  # the only failures were dropped connections

        # The replacement serves (each fresh connection lands on either worker; every answer is 200).
        answered_by_each_worker(server, [replacement, survivor], "/v1/whoami", server.agent_keys["helper-1"])
        with client(server.url, server.agent_keys["helper-1"]) as http:
            after = Tally()
            body = {"action": "llm.call", "task": "t-1", "amounts": {"tokens": "1"}, "lease_seconds": 300}
            assert all(
                act_once(http, body | {"idempotency_key": f"after-{n}"}, after, lambda a: None) for n in range(20)
            )
        with client(server.url, server.admin_key) as admin:
            check = ok(admin.get("/v1/check"))
            assert check["is_consistent"], check["mismatches"]
        assert {w.pid for w in workers_of(server)} == {w.pid for w in replaced}, "no worker was lost since"


@pytest.mark.parametrize("store", STORES)
def test_workers_of_a_killed_supervisor_stop_and_free_the_port(store: str, tmp_path: Path) -> None:
    with workers_server(store, tmp_path) as server:
        workers = serving_workers(server)
        os.kill(server.process.pid, signal.SIGKILL)  # no chance to stop its workers itself
        server.process.wait(timeout=STOP_TIMEOUT_SECONDS)
        wait_for(lambda: not any(is_alive(worker) for worker in workers), "the orphaned workers to stop")
        port = int(server.url.rsplit(":", 1)[1])
        with socket.socket() as probe:  # nothing listens there any more: a new server could start
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", port))


@pytest.mark.parametrize("store", STORES)
def test_the_engine_hosts_socket_is_private_and_removed(
    store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL the workers reach the node's engine over a Unix socket whose frames are
    pickles: only the server's user may enter its directory, which goes with the server. SQLite
    workers decide their own requests and make none."""
    private = tmp_path / "tmp"
    private.mkdir()
    monkeypatch.setenv("TMPDIR", str(private))  # the server's tempfile.mkdtemp makes the directory here
    with workers_server(store, tmp_path) as server:
        serving_workers(server)
        made = sorted(private.glob("remit-engine-*"))
        if store == "sqlite":
            assert made == []
        else:
            assert len(made) == 1, made
            assert made[0].stat().st_mode & 0o777 == 0o700
            assert (made[0] / "engine.sock").is_socket()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=STOP_TIMEOUT_SECONDS) == 0, server.log_tail()
        assert sorted(private.glob("remit-engine-*")) == []
