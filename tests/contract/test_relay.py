"""The node's engine host decides what worker processes relay to it, exactly as one engine would.

How: a real `EngineHost` (its own thread, store and event loop) on a Unix socket, and
`RelayBatcher`s standing for worker processes, on each store. Many callers through two
batchers share one capped budget: exactly the cap is allowed, every answer is in the ledger,
counters match it. Errors come back with their codes; a host that cannot be reached answers
`unavailable`; a worker that goes away before the host answered leaves no hold behind (the
tenant is kept locked meanwhile, so the host cannot answer first).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import config
from remit.bootstrap import open_store
from remit.domain.decisions import Decision, Outcome
from remit.engine import ActionInput, Engine
from remit.errors import Conflict, NotFound, Unavailable
from remit.relay import EngineHost, RelayBatcher, encode_frame, pack_operation

CAP = {"scopes": {"ops": {"budgets": [{"meter": "usd", "limit": "50", "window": "day"}]}}}


@pytest.fixture
def local(database_url: str) -> Iterator[Engine]:
    """The tenant, made the way a worker's own engine sees it (validation, configs)."""
    store = open_store(database_url)
    engine = Engine(store)
    engine.create_tenant("t1")
    engine.apply_config("t1", config(**CAP))
    try:
        yield engine
    finally:
        store.close()


@pytest.fixture
def host(database_url: str, tmp_path: Path, local: Engine) -> Iterator[EngineHost]:
    started = EngineHost(database_url, str(tmp_path / "engine.sock"))
    started.start()
    try:
        yield started
    finally:
        started.stop()


def spend(usd: str = "1.00") -> ActionInput:
    return ActionInput(agent="a1", action="ops.run", amounts={"usd": usd})


def test_two_workers_share_one_cap_exactly(local: Engine, host: EngineHost) -> None:
    async def scenario() -> list[Decision]:
        workers = [RelayBatcher(local, host.path), RelayBatcher(local, host.path)]
        try:
            asks = [workers[i % 2].authorize("t1", spend()) for i in range(120)]
            decisions = list(await asyncio.gather(*asks))
            commits = [
                workers[i % 2].commit("t1", d.reservation_id)
                for i, d in enumerate(decisions)
                if d.reservation_id is not None
            ]
            await asyncio.gather(*commits)
            for worker in workers:
                await worker.drain()
            return decisions
        finally:
            for worker in workers:
                worker.close()

    decisions = asyncio.run(scenario())
    assert sum(d.outcome is Outcome.ALLOW for d in decisions) == 50
    assert all(d.outcome in (Outcome.ALLOW, Outcome.DENY) for d in decisions)
    report = local.check("t1")
    assert report.is_consistent, report.mismatches
    with local.store.transaction(is_read_only=True) as tx:
        counter = tx.all_counters("t1")[("ops:usd:day", "")]
        kinds = [entry.kind.value for entry in tx.ledger_entries("t1")]
    assert (counter.used, counter.held) == (5000, 0)
    assert kinds.count("hold") == 50 and kinds.count("commit") == 50


def test_errors_come_back_with_their_codes(local: Engine, host: EngineHost) -> None:
    async def scenario() -> None:
        worker = RelayBatcher(local, host.path)
        try:
            with pytest.raises(NotFound):
                await worker.commit("t1", "res_nothing")
            decision = await worker.authorize("t1", spend())
            assert decision.reservation_id is not None
            await worker.commit("t1", decision.reservation_id)
            with pytest.raises(Conflict) as refused:
                await worker.release("t1", decision.reservation_id)
            assert refused.value.code.startswith("already_")
        finally:
            worker.close()

    asyncio.run(scenario())


def test_an_unreachable_host_answers_unavailable(local: Engine, tmp_path: Path) -> None:
    async def scenario() -> None:
        worker = RelayBatcher(local, str(tmp_path / "nobody.sock"))
        try:
            with pytest.raises(Unavailable, match="engine host"):
                await worker.authorize("t1", spend())
        finally:
            worker.close()

    asyncio.run(scenario())
    with local.store.transaction(is_read_only=True) as tx:
        assert tx.count_held() == 0


def test_a_worker_gone_before_its_answers_leaves_no_hold(local: Engine, host: EngineHost) -> None:
    operations = [pack_operation(local.authorize_operation("t1", spend())) for _ in range(5)]

    async def send_and_leave() -> None:
        _, writer = await asyncio.open_unix_connection(host.path)
        writer.write(encode_frame(operations))
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    # The tenant stays locked until the host has seen the worker go: its batch cannot run before.
    with local.store.transaction() as tx:
        tx.lock_tenants(["t1"])
        asyncio.run(send_and_leave())
        time.sleep(0.5)
    deadline = time.monotonic() + 10
    while True:
        with local.store.transaction(is_read_only=True) as tx:
            kinds = [entry.kind.value for entry in tx.ledger_entries("t1")]
            held = tx.count_held()
        if kinds.count("hold") == 5 and kinds.count("release") == 5 and held == 0:
            break
        assert time.monotonic() < deadline, f"holds left behind: {kinds}"
        time.sleep(0.05)
    assert local.check("t1").is_consistent
