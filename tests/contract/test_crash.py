"""Crash: an engine process killed mid-batch loses nothing it acknowledged and half-writes nothing.

A child process (`workers.py crash`) runs one Engine with 48 threads, so batches are large and
always in flight: each thread authorizes (with a 1 s lease), then commits, releases or abandons
the hold, and prints every answer as soon as the engine gives it (`ack <id> <lease deadline>`,
`committed <id>`, `released <id>`). The test SIGKILLs the child at a random moment, three
times, each time starting a new child on the same store, and after each kill opens a new
Engine on it and proves:
- every acknowledged reservation exists, with the status the child was told (or a later one:
  an answer the store kept but the child had no time to print is fine; the reverse is not);
- each reservation has exactly one hold entry, and exactly one resolution entry unless held;
- the counters equal their rebuild from the ledger (`Engine.check`), and the held amounts equal
  the live holds: a batch is all in the store or not at all.
Finally, past every lease, `expire_holds` ends each abandoned hold as expired and nothing is
left held. Real time, real processes and real SIGKILLs; nothing is simulated.
"""

from __future__ import annotations

import collections
import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from conftest import load_workers
from remit.bootstrap import open_store
from remit.domain.ledger import EntryKind
from remit.domain.reservations import Status
from remit.engine import Engine, system_clock
from remit.store.base import Store

WORKERS_PATH = Path(__file__).with_name("workers.py")
TENANT = "t-crash"
CHILD_THREADS = 48
LEASE_SECONDS = 1
KILLS = 3
ACKS_BEFORE_KILL_MIN = 100
ACKS_BEFORE_KILL_MAX = 1500
CHILD_WAIT_SECONDS_MAX = 60
RESOLVED_KINDS = {EntryKind.COMMIT, EntryKind.RELEASE, EntryKind.EXPIRE, EntryKind.LATE_COMMIT}


workers = load_workers()


@dataclass
class Acknowledged:
    """What the killed children were told, from the complete lines they printed."""

    leases: dict[str, int] = field(default_factory=dict)
    """reservation → lease deadline (µs)."""
    committed: set[str] = field(default_factory=set)
    released: set[str] = field(default_factory=set)

    def read(self, line: str) -> None:
        word, *rest = line.split()
        if word == "ack":
            self.leases[rest[0]] = int(rest[1])
        elif word == "committed":
            self.committed.add(rest[0])
        elif word == "released":
            self.released.add(rest[0])
        else:
            pytest.fail(f"the child printed {line!r}")


def _run_and_kill(url: str, acks_before_kill: int, told: Acknowledged) -> int:
    """Start a child, let it acknowledge at least `acks_before_kill` holds, SIGKILL it; returns its acks."""
    child = subprocess.Popen(
        [
            sys.executable,
            str(WORKERS_PATH),
            "crash",
            "--url",
            url,
            "--tenant",
            TENANT,
            "--threads",
            str(CHILD_THREADS),
            "--lease-seconds",
            str(LEASE_SECONDS),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    lines: list[str] = []
    enough = threading.Event()

    def read() -> None:
        assert child.stdout is not None
        acks = 0
        for line in child.stdout:
            lines.append(line)
            acks += line.startswith("ack ")
            if acks >= acks_before_kill:
                enough.set()
        enough.set()  # the child died on its own; the checks below say why

    reader = threading.Thread(target=read, daemon=True)
    try:
        line = child.stdout.readline()
        if line != "ready\n":
            child.kill()
            pytest.fail(f"the child did not start: {line!r}\n{child.communicate()[1]}")
        reader.start()
        child.stdin.write("go\n")
        child.stdin.flush()
        assert enough.wait(CHILD_WAIT_SECONDS_MAX), "the child acknowledged too little in time"
        if child.poll() is not None:
            pytest.fail(f"the child died before it was killed\n{child.communicate()[1]}")
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
        reader.join(5)
        child.stdin.close()
        child.stdout.close()
        if child.stderr is not None:
            child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    complete = [line for line in lines if line.endswith("\n")]  # a line cut by the kill was never told
    for line in complete:
        told.read(line)
    return sum(line.startswith("ack ") for line in complete)


def _stored_reservation_ids(url: str) -> set[str]:
    """Every reservation row of the tenant, read straight from the table (the store API has no such listing)."""
    query = "SELECT reservation_id FROM reservations WHERE tenant_id = "
    if url.startswith("sqlite:///"):
        with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as connection:
            return {row[0] for row in connection.execute(query + "?", (TENANT,))}
    with psycopg.connect(url) as connection:
        return {row[0] for row in connection.execute(query + "%s", (TENANT,))}


def _assert_store_whole(
    url: str, store: Store, engine: Engine, told: Acknowledged, *, now_us: int
) -> dict[str, Status]:
    """The checks after a kill; returns the status of every acknowledged reservation."""
    report = engine.check(TENANT)
    assert report.is_consistent, report.mismatches
    with store.transaction() as tx:
        entries = list(tx.ledger_entries(TENANT))
        reservations = tx.lock_reservations(TENANT, told.leases)
        live = tx.held_parts(TENANT)
        counters = tx.all_counters(TENANT)
    missing = set(told.leases) - set(reservations)
    assert not missing, f"{len(missing)} acknowledged holds are gone, e.g. {sorted(missing)[:3]}"
    status = {rid: reservation.status for rid, reservation in reservations.items()}
    for rid in told.committed:
        assert status[rid] is Status.COMMITTED, (rid, status[rid])
    for rid in told.released:
        assert status[rid] is Status.RELEASED, (rid, status[rid])
    for rid, lease_us in told.leases.items():
        assert reservations[rid].lease_expires_at_us == lease_us
        if status[rid] is Status.EXPIRED:
            assert lease_us <= now_us, f"{rid} expired before its lease ran out"
    # All or nothing per batch: every reservation in the store has its hold entry, and a
    # resolution entry exactly when it is no longer held.
    holds = collections.Counter(str(e.reservation_id) for e in entries if e.kind is EntryKind.HOLD)
    resolutions = collections.Counter(e.reservation_id for e in entries if e.kind in RESOLVED_KINDS)
    with store.transaction() as tx:
        stored = tx.lock_reservations(TENANT, holds)
    rows = _stored_reservation_ids(url)
    assert set(stored) == set(holds) == rows, "a hold entry without its reservation, or the reverse"
    assert set(holds.values()) == {1}
    assert set(resolutions.values()) <= {1}, "a reservation was resolved twice"
    live_ids = {rid for rid, _ in live}
    assert live_ids == {rid for rid, r in stored.items() if r.status is Status.HELD}
    assert set(resolutions) == set(stored) - live_ids
    held_total = sum(part.amount for _, parts in live for part in parts if part.budget_id == "tenant-usd")
    assert counters[("tenant-usd", "")].held == held_total
    return status


def _after_restart(url: str, told: Acknowledged, *, expire: bool = False) -> dict[str, Status]:
    """Open a new engine on the store, as a restarted server would, and check it finds the store whole."""
    store = open_store(url)
    try:
        engine = Engine(store)
        if expire:
            while engine.expire_holds():
                pass
        status = _assert_store_whole(url, store, engine, told, now_us=engine.clock())
        if expire:
            with store.transaction() as tx:
                assert tx.held_parts(TENANT) == [], "a hold outlived its lease and the expiry sweep"
                assert all(counter.held == 0 for counter in tx.all_counters(TENANT).values())
        return status
    finally:
        store.close()


@pytest.mark.slow
def test_a_killed_engine_loses_no_acknowledged_answer_and_leaves_nothing_half_written(database_url: str) -> None:
    store = open_store(database_url)
    try:
        engine = Engine(store)
        engine.create_tenant(TENANT)
        engine.apply_config(TENANT, workers.crash_config())
    finally:
        store.close()
    rng = random.Random()
    told = Acknowledged()
    status: dict[str, Status] = {}
    for _ in range(KILLS):
        acks = _run_and_kill(database_url, rng.randint(ACKS_BEFORE_KILL_MIN, ACKS_BEFORE_KILL_MAX), told)
        assert acks >= ACKS_BEFORE_KILL_MIN
        status = _after_restart(database_url, told)
    assert Status.HELD in status.values(), "no abandoned hold was left for expiry to end"
    time.sleep(max(0.0, (max(told.leases.values()) - system_clock()) / 1e6) + 0.05)
    final = _after_restart(database_url, told, expire=True)
    assert set(final.values()) <= {Status.COMMITTED, Status.RELEASED, Status.EXPIRED}
    for rid, was in status.items():
        assert final[rid] is (Status.EXPIRED if was is Status.HELD else was), rid
