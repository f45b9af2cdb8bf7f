"""Engine throughput and latency, in process, with batching engaged.

1,000 simulated agents (asyncio tasks) each loop authorize → commit against one hot tenant
budget, a budget per agent and a distinct-reach budget, on a fresh store. Figures are the
median of --runs runs (default 5):

    python bench/engine.py                 # table
    python bench/engine.py --json          # {"sqlite": {...}, "postgres": {...}}
    python bench/engine.py --stores sqlite --pairs 20000 --runs 3

PostgreSQL comes from REMIT_BENCH_PG (default postgresql://127.0.0.1:5432/postgres); each run
uses a fresh database created beside it and dropped afterwards.
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/http.py would shadow the standard library's `http` package (httpx, which `remit` imports,
# needs it) while this folder leads the import path: it goes to the end instead.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path.append(sys.path.pop(0))

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from typing import Any

from pgdatabase import PgDatabase
from remit.batching import AsyncBatcher
from remit.bootstrap import open_store, tune_gc_for_service
from remit.engine import ActionInput, Engine
from remit.store.base import Store

AGENTS = 1000
ENTITIES = 5000


def bench_config(agents: int) -> dict[str, Any]:
    return {
        "tenant": {"timezone": "UTC", "budgets": [{"meter": "usd", "limit": "1000000000", "window": "month"}]},
        "meters": {"usd": {"kind": "sum", "scale": 2}, "accounts": {"kind": "distinct"}},
        "scopes": {"fleet": {"budgets": [{"meter": "accounts", "limit": "1000000", "window": "day"}]}},
        "agents": {
            f"agent-{i}": {"scope": "fleet", "budgets": [{"meter": "usd", "limit": "1000000", "window": "day"}]}
            for i in range(agents)
        },
    }


async def _agent(batcher: AsyncBatcher, index: int, pairs: int, latencies_s: list[float]) -> int:
    agent = f"agent-{index}"
    committed = 0
    for step in range(pairs):
        entity = f"acct:{(index * 7 + step) % ENTITIES}"
        request = ActionInput(agent=agent, action="crm.update", amounts={"usd": "1.25"}, touches={"accounts": [entity]})
        started = time.perf_counter()
        decision = await batcher.authorize("bench", request)
        latencies_s.append(time.perf_counter() - started)
        if decision.reservation_id is not None:
            await batcher.commit("bench", decision.reservation_id, {"usd": "1.00"})
            committed += 1
    return committed


async def _run_fleet(engine: Engine, agents: int, pairs_per_agent: int) -> tuple[float, list[float], float]:
    batcher = AsyncBatcher(engine)
    latencies_s: list[float] = []
    started = time.perf_counter()
    committed = await asyncio.gather(*(_agent(batcher, i, pairs_per_agent, latencies_s) for i in range(agents)))
    elapsed = time.perf_counter() - started
    batcher.close()
    if sum(committed) != agents * pairs_per_agent:
        raise SystemExit(f"benchmark invalid: only {sum(committed)} of {agents * pairs_per_agent} pairs were allowed")
    return sum(committed) / elapsed, latencies_s, engine.batch_size_mean


def _single_latency_ms(engine: Engine, samples: int = 300) -> float:
    """Median authorize latency of one lone caller (no batching partners), for reference."""
    timings = []
    for step in range(samples):
        request = ActionInput(
            agent="agent-0",
            action="crm.update",
            amounts={"usd": "0.01"},
            touches={"accounts": [f"acct:{step % ENTITIES}"]},
        )
        started = time.perf_counter()
        decision = engine.authorize("bench", request)
        timings.append(time.perf_counter() - started)
        if decision.reservation_id:
            engine.commit("bench", decision.reservation_id)
    return statistics.median(timings) * 1000


def one_run(kind: str, pairs: int) -> dict[str, float]:
    pg = PgDatabase() if kind == "postgres" else None
    with tempfile.TemporaryDirectory() as directory:
        url = pg.url if pg else f"sqlite:///{Path(directory) / 'bench.db'}"
        store: Store = open_store(url)
        try:
            engine = Engine(store)
            engine.create_tenant("bench")
            engine.apply_config("bench", bench_config(AGENTS))
            tune_gc_for_service()  # as `remit serve` does
            # Warm-up: config cache, prepared statements, counters rows.
            asyncio.run(_run_fleet(engine, AGENTS, 1))
            rate, latencies_s, batch_mean = asyncio.run(_run_fleet(engine, AGENTS, max(1, pairs // AGENTS)))
            latencies_s.sort()
            single_ms = _single_latency_ms(engine)
            report = engine.check("bench")
            if not report.is_consistent:
                raise SystemExit(f"benchmark invalid: ledger check failed: {report.mismatches[:3]}")
        finally:
            store.close()
            if pg:
                pg.drop()
    return {
        "pairs_per_s": rate,
        "p50_ms": latencies_s[len(latencies_s) // 2] * 1000,
        "p99_ms": latencies_s[int(len(latencies_s) * 0.99)] * 1000,
        "single_p50_ms": single_ms,
        "batch_size_mean": batch_mean,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--pairs", type=int, default=50_000, help="authorize+commit pairs per run")
    parser.add_argument("--stores", default="sqlite,postgres")
    args = parser.parse_args()
    figures: dict[str, dict[str, float]] = {}
    for kind in args.stores.split(","):
        runs = []
        for number in range(args.runs):
            runs.append(one_run(kind, args.pairs))
            if not args.json:
                print(f"{kind} run {number + 1}/{args.runs}: {runs[-1]['pairs_per_s']:,.0f} pairs/s", file=sys.stderr)
        figures[kind] = {
            key: round(statistics.median(run[key] for run in runs), 2 if key.endswith("_ms") else 1) for key in runs[0]
        }
    if args.json:
        print(json.dumps(figures))
        return
    print(f"{'store':<10}{'pairs/s':>12}{'p50 ms':>10}{'p99 ms':>10}{'lone p50 ms':>13}{'batch mean':>12}")
    for kind, row in figures.items():
        print(
            f"{kind:<10}{row['pairs_per_s']:>12,.0f}{row['p50_ms']:>10.2f}{row['p99_ms']:>10.2f}"
            f"{row['single_p50_ms']:>13.2f}{row['batch_size_mean']:>12.1f}"
        )
    print(f"(median of {args.runs} runs; {AGENTS} agents; {args.pairs} pairs per run)")


if __name__ == "__main__":
    main()
