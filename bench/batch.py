"""The cost of one batch in the store, without HTTP or threads: what a server process holds the
tenant's lock for.

One thread drives batches of --size operations straight into `Engine.execute`: the holds of the
previous batch are committed and as many new ones taken, against the HTTP bench's config (one
hot tenant budget, one hot scope budget, a budget per agent). With --engines 2 the batches
alternate between two engines on two stores of one database, as two server processes would, so
every batch finds that the other wrote and reads its reservations and counters from the store.
Prints the mean wall time and this process's CPU time per batch, and with --statements the
mean wall time of each statement (PostgreSQL's writes go in one pipeline, timed as WRITE):

    python bench/batch.py                            # both stores, 1 and 2 engines
    python bench/batch.py --stores postgres --engines 2 --statements

PostgreSQL comes from REMIT_BENCH_PG (default postgresql://127.0.0.1:5432/postgres); each run
uses a fresh database created beside it and dropped afterwards.
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/http.py would shadow the standard library's `http` package while this folder leads the
# import path: it goes to the end instead.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path.append(sys.path.pop(0))

import argparse
import collections
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from configs import hot_tenant_config
from pgdatabase import PgDatabase
from remit.bootstrap import open_store
from remit.engine import ActionInput, Engine, Operation
from remit.store.base import Transaction

AGENTS = 256
WARMUP_BATCHES = 50


@contextmanager
def statement_timer(timings: dict[str, list[float]]) -> Iterator[None]:
    """Time every named statement (and PostgreSQL's write pipeline and COMMIT) into `timings`."""
    from remit.store.postgres import PostgresTransaction
    from remit.store.sqlite import SqliteTransaction

    originals: list[tuple[type, str, Callable[..., Any]]] = []

    def wrap(cls: type, method: str, label: Callable[[tuple[Any, ...]], str]) -> None:
        original = getattr(cls, method)

        def timed(self: Transaction, *args: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(self, *args)
            finally:
                timings[label(args)].append(time.perf_counter() - started)

        originals.append((cls, method, original))
        setattr(cls, method, timed)

    for cls in (PostgresTransaction, SqliteTransaction):
        wrap(cls, "_execute", lambda args: str(args[0]))
        wrap(cls, "commit", lambda args: "COMMIT")
    wrap(PostgresTransaction, "write", lambda args: "WRITE")
    wrap(SqliteTransaction, "_execute_many", lambda args: str(args[0]))
    try:
        yield
    finally:
        for cls, method, original in originals:
            setattr(cls, method, original)


def one_run(
    kind: str, engines_count: int, size: int, batches: int, timings: dict[str, list[float]] | None
) -> dict[str, float]:
    pg = PgDatabase() if kind == "postgres" else None
    with tempfile.TemporaryDirectory() as directory:
        url = pg.url if pg else f"sqlite:///{Path(directory) / 'bench.db'}"
        engines = [Engine(open_store(url)) for _ in range(engines_count)]
        try:
            engines[0].create_tenant("bench")
            engines[0].apply_config("bench", hot_tenant_config(AGENTS))
            held: list[str] = []
            walls: list[float] = []
            cpus: list[float] = []
            with statement_timer(timings) if timings is not None else nullcontext():
                for number in range(WARMUP_BATCHES + batches):
                    if number == WARMUP_BATCHES and timings is not None:
                        timings.clear()
                    engine = engines[number % engines_count]
                    operations: list[Operation] = [
                        engine.commit_operation("bench", rid, {"usd": "1.00"}) for rid in held
                    ]
                    operations += [
                        engine.authorize_operation(
                            "bench",
                            ActionInput(
                                agent=f"agent-{(number * size + i) % AGENTS}",
                                action="crm.update",
                                amounts={"usd": "1.00"},
                            ),
                        )
                        for i in range(size // 2)
                    ]
                    wall, cpu = time.perf_counter(), time.process_time()
                    results = engine.execute(operations)
                    if number >= WARMUP_BATCHES:
                        walls.append(time.perf_counter() - wall)
                        cpus.append(time.process_time() - cpu)
                    held = [getattr(result, "reservation_id", None) or "" for result in results[len(held) :]]
                    if not all(held):
                        raise SystemExit(f"benchmark invalid: a batch was not all allowed: {results[-1]!r}")
            report = engines[0].check("bench")
            if not report.is_consistent:
                raise SystemExit(f"benchmark invalid: ledger check failed: {report.mismatches[:3]}")
        finally:
            for engine in engines:
                engine.store.close()
            if pg:
                pg.drop()
    return {"wall_ms": statistics.mean(walls) * 1000, "cpu_ms": statistics.mean(cpus) * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument("--engines", default="1,2", help="engines (processes) taking turns: 1, 2 or both")
    parser.add_argument("--size", type=int, default=64, help="operations per batch (half commits, half authorizes)")
    parser.add_argument("--batches", type=int, default=300, help="measured batches per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--statements", action="store_true", help="also time each statement")
    args = parser.parse_args()
    print(f"{'store':10} {'engines':>7} {'batch wall ms':>14} {'batch CPU ms':>13}   ({args.size} operations a batch)")
    for kind in args.stores.split(","):
        for engines_count in (int(count) for count in args.engines.split(",")):
            timings: dict[str, list[float]] = collections.defaultdict(list)
            runs = [
                one_run(kind, engines_count, args.size, args.batches, timings if args.statements else None)
                for _ in range(args.runs)
            ]
            wall = statistics.median(run["wall_ms"] for run in runs)
            cpu = statistics.median(run["cpu_ms"] for run in runs)
            print(f"{kind:10} {engines_count:>7} {wall:>14.2f} {cpu:>13.2f}", flush=True)
            for name, times in sorted(timings.items(), key=lambda item: -sum(item[1])):
                per_batch = len(times) / args.runs / args.batches
                print(f"    {name:28} {per_batch:5.1f} a batch, {statistics.mean(times) * 1e6:8.0f} µs each")


if __name__ == "__main__":
    main()
