"""Workloads for the concurrency and crash tests: run in threads of the test process, or as a child.

As a child process (`python workers.py hammer|reach|crash --url … --tenant …`) it opens its own
Engine on the store, prints `ready`, and waits for a line on stdin so every process starts at
once. `hammer` and `reach` then print one JSON line with what their threads saw; `crash` runs
until it is killed, printing each answer the engine acknowledged (`ack`, `committed`,
`released`) as soon as it is in, so the parent knows exactly what the store promised.
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import orjson

from remit.bootstrap import open_store
from remit.domain.decisions import Decision
from remit.engine import ActionInput, Engine

HAMMER_LIMIT_CENTS = 100_000
"""The shared tenant budget: $1,000."""
AGENT_LIMIT_CENTS = 15_000
"""Each agent's own budget: $150. Eight agents could ask $1,200, more than the tenant allows."""
AGENT_COUNT = 8
REACH_LIMIT = 50
REACH_POOL_SIZE = 120
RUN_SECONDS_MAX = 30.0
"""A worker that has not seen its budget fill by then gives up and says so (the test fails)."""


def agent_name(index: int) -> str:
    return f"a{index % AGENT_COUNT}"


def hammer_config() -> dict[str, Any]:
    """A tenant usd budget over every agent, plus one usd budget per agent; windows never reset."""
    return {
        "meters": {"usd": {"kind": "sum", "scale": 2}},
        "tenant": {
            "budgets": [
                {"meter": "usd", "limit": cents_text(HAMMER_LIMIT_CENTS), "window": "total", "id": "tenant-usd"}
            ]
        },
        "scopes": {"fleet": {"owner": "ops@example.com"}},
        "agents": {
            agent_name(i): {
                "scope": "fleet",
                "budgets": [
                    {
                        "meter": "usd",
                        "limit": cents_text(AGENT_LIMIT_CENTS),
                        "window": "total",
                        "id": f"{agent_name(i)}-usd",
                    }
                ],
            }
            for i in range(AGENT_COUNT)
        },
    }


def reach_config() -> dict[str, Any]:
    """One distinct budget: the fleet may touch at most REACH_LIMIT accounts, ever."""
    return {
        "meters": {"accounts": {"kind": "distinct"}},
        "scopes": {
            "fleet": {"budgets": [{"meter": "accounts", "limit": str(REACH_LIMIT), "window": "total", "id": "reach"}]}
        },
        "agents": {agent_name(i): {"scope": "fleet"} for i in range(AGENT_COUNT)},
    }


def crash_config() -> dict[str, Any]:
    """Budgets far from full, so the crash child is allowed every time and batches stay busy."""
    return {
        "meters": {"usd": {"kind": "sum", "scale": 2}, "accounts": {"kind": "distinct"}},
        "tenant": {
            "budgets": [
                {"meter": "usd", "limit": "100000000", "window": "total", "id": "tenant-usd"},
                {"meter": "accounts", "limit": "100000000", "window": "total", "id": "reach"},
            ]
        },
        "scopes": {"fleet": {}},
        "agents": {
            agent_name(i): {
                "scope": "fleet",
                "budgets": [{"meter": "usd", "limit": "10000000", "window": "total", "id": f"{agent_name(i)}-usd"}],
            }
            for i in range(AGENT_COUNT)
        },
    }


def cents_text(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


@dataclass
class Seen:
    """What one worker was told by the engine. Merged over every thread and process by the test."""

    allowed: list[str] = field(default_factory=list)
    committed: dict[str, int] = field(default_factory=dict)
    """reservation → the amount (base units) the commit answer said was counted."""
    released: list[str] = field(default_factory=list)
    overrun: int = 0
    denials: int = 0
    false_denials: list[str] = field(default_factory=list)
    """Denials whose own report shows the request fitting in every budget it named."""
    errors: list[str] = field(default_factory=list)
    timed_out: bool = False

    def merge(self, other: Seen) -> None:
        self.allowed += other.allowed
        self.committed.update(other.committed)
        self.released += other.released
        self.overrun += other.overrun
        self.denials += other.denials
        self.false_denials += other.false_denials
        self.errors += other.errors
        self.timed_out = self.timed_out or other.timed_out

    def to_json(self) -> bytes:
        return orjson.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str | bytes) -> Seen:
        return cls(**orjson.loads(text))


def _audit_denial(decision: Decision, seen: Seen) -> None:
    """A denial is false if a budget it names as the reason had room for the request at decision time."""
    seen.denials += 1
    by_id = {report.budget: report for report in decision.budgets}
    for reason in decision.reasons:
        report = by_id.get(reason.budget)
        if report is None:
            seen.false_denials.append(f"{reason.budget}: named as the reason but not in the report")
        elif report.used + report.held + report.requested <= report.limit:
            seen.false_denials.append(
                f"{reason.budget}: denied with used {report.used} held {report.held} "
                f"requested {report.requested} limit {report.limit}"
            )
    if not decision.reasons:
        seen.false_denials.append("a denial without a reason")


def hammer(engine: Engine, tenant_id: str, agent: str, seed: int, seen: Seen) -> None:
    """Authorize $1-5 at a time, then commit all, commit part, or release; until a budget is full.

    After a denial the worker asks for at most what would fit once every hold clears, so the
    fleet as a whole keeps asking until the tenant budget is used to the last cent.
    """
    rng = random.Random(seed)
    deadline = time.monotonic() + RUN_SECONDS_MAX
    smaller: int | None = None
    while time.monotonic() < deadline:
        cents = smaller if smaller is not None else rng.randint(1, 5) * 100
        smaller = None
        decision = engine.authorize(tenant_id, ActionInput(agent, "llm.chat", {"usd": cents_text(cents)}))
        if decision.is_allowed:
            rid = str(decision.reservation_id)
            seen.allowed.append(rid)
            roll = rng.random()
            if roll < 0.1:
                engine.release(tenant_id, rid)
                seen.released.append(rid)
                continue
            actual = cents if roll < 0.5 else rng.randint(1, cents)
            result = engine.commit(tenant_id, rid, {"usd": cents_text(actual)})
            seen.committed[rid] = result.committed["usd"]
            seen.overrun += result.overrun.get("usd", 0)
            continue
        _audit_denial(decision, seen)
        if any(report.used >= report.limit for report in decision.budgets):
            return
        smaller = min(cents, *(report.limit - report.used for report in decision.budgets))
        if any(report.held for report in decision.budgets):
            time.sleep(0.001)  # someone else's hold is in the way; it is resolved within moments
    seen.timed_out = True


def reach(engine: Engine, tenant_id: str, agent: str, seed: int, seen: Seen) -> None:
    """Touch 1-3 accounts of a shared pool at a time, commit or release; until the reach budget is full."""
    rng = random.Random(seed)
    pool = [f"acct:{n}" for n in range(REACH_POOL_SIZE)]
    rng.shuffle(pool)
    deadline = time.monotonic() + RUN_SECONDS_MAX
    position = 0
    is_single = False
    while time.monotonic() < deadline:
        count = 1 if is_single else rng.randint(1, 3)
        touched = [pool[(position + i) % len(pool)] for i in range(count)]
        position += count
        is_single = False
        decision = engine.authorize(tenant_id, ActionInput(agent, "crm.touch", touches={"accounts": touched}))
        if decision.is_allowed:
            rid = str(decision.reservation_id)
            seen.allowed.append(rid)
            if rng.random() < 0.15:
                engine.release(tenant_id, rid)
                seen.released.append(rid)
            else:
                result = engine.commit(tenant_id, rid)
                seen.committed[rid] = result.committed.get("accounts", 0)
                seen.overrun += result.overrun.get("accounts", 0)
            continue
        _audit_denial(decision, seen)
        if any(report.used >= report.limit for report in decision.budgets):
            return
        is_single = True
        if any(report.held for report in decision.budgets):
            time.sleep(0.001)
    seen.timed_out = True


WORKLOADS = {"hammer": hammer, "reach": reach}


def run_threads(
    engines: Sequence[Engine],
    tenant_id: str,
    workload: str,
    *,
    threads: int,
    seed: int,
    start: threading.Event | None = None,
) -> Seen:
    """Run `threads` workers of one workload, thread i as agent a(i mod 8) on engines[i mod len(engines)].

    Returns what they saw, merged.
    """
    function = WORKLOADS[workload]
    seens = [Seen() for _ in range(threads)]

    def work(index: int) -> None:
        if start is not None:
            start.wait()
        try:
            engine = engines[index % len(engines)]
            function(engine, tenant_id, agent_name(index), seed * 1000 + index, seens[index])
        except Exception:
            seens[index].errors.append(traceback.format_exc())

    workers = [threading.Thread(target=work, args=(i,), name=f"{workload}-{i}") for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    merged = Seen()
    for seen in seens:
        merged.merge(seen)
    return merged


def crash(engine: Engine, tenant_id: str, threads: int, lease_seconds: int, out: TextIO) -> None:
    """Authorize, then commit, release or abandon the hold, forever; print every acknowledged answer."""
    printing = threading.Lock()

    def say(line: str) -> None:
        with printing:
            out.write(line + "\n")
            out.flush()

    def work(index: int) -> None:
        rng = random.Random()
        agent = agent_name(index)
        while True:
            touches = {"accounts": [f"acct:{rng.randrange(10_000)}" for _ in range(rng.randint(0, 2))]}
            request = ActionInput(
                agent, "llm.chat", {"usd": cents_text(rng.randint(1, 500))}, touches, lease_seconds=lease_seconds
            )
            decision = engine.authorize(tenant_id, request)
            if not decision.is_allowed:
                say("denied")
                continue
            say(f"ack {decision.reservation_id} {decision.lease_expires_at_us}")
            roll = rng.random()
            if roll < 0.4:
                engine.commit(tenant_id, str(decision.reservation_id), {"usd": cents_text(rng.randint(0, 500))})
                say(f"committed {decision.reservation_id}")
            elif roll < 0.7:
                engine.release(tenant_id, str(decision.reservation_id))
                say(f"released {decision.reservation_id}")

    for index in range(threads):
        threading.Thread(target=work, args=(index,), daemon=True).start()
    threading.Event().wait()  # until killed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workload", choices=[*WORKLOADS, "crash"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lease-seconds", type=int, default=1)
    args = parser.parse_args()
    store = open_store(args.url, migrate=False)
    engine = Engine(store)
    engine.tenant_config(args.tenant)
    print("ready", flush=True)
    sys.stdin.readline()
    if args.workload == "crash":
        crash(engine, args.tenant, args.threads, args.lease_seconds, sys.stdout)
        return
    seen = run_threads([engine], args.tenant, args.workload, threads=args.threads, seed=args.seed)
    sys.stdout.write(seen.to_json().decode() + "\n")
    sys.stdout.flush()
    store.close()


if __name__ == "__main__":
    main()
