"""The node's engine host decides what worker processes relay to it, exactly as one engine would.

How: a real `EngineHost` (its own thread, store and event loop) on a Unix socket, and
`RelayBatcher`s standing for worker processes, on each store. Many callers through two
batchers share one capped budget: exactly the cap is allowed, every answer is in the ledger,
counters match it. Errors come back with their codes; a host that cannot be reached answers
`unavailable`; a worker that goes away before the host answered leaves no hold behind (the
tenant is kept locked meanwhile, so the host cannot answer first). Answers the host cannot
send close the stream: no later frame's answers reach the wrong callers, and the holds nobody
heard of are released; a reply that does not fit its frame fails that frame's callers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import config
from remit import relay
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


def assert_all_released(local: Engine, holds: int) -> None:
    """Within 10 s the ledger shows `holds` holds, each released, none live, counters matching."""
    deadline = time.monotonic() + 10
    while True:
        with local.store.transaction(is_read_only=True) as tx:
            kinds = [entry.kind.value for entry in tx.ledger_entries("t1")]
            held = tx.count_held()
        if kinds.count("hold") == holds and kinds.count("release") == holds and held == 0:
            break
        assert time.monotonic() < deadline, f"holds left behind: {kinds}"
        time.sleep(0.05)
    assert local.check("t1").is_consistent


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
    assert_all_released(local, holds=5)


def test_answers_that_cannot_be_sent_close_the_stream_and_release_their_holds(
    local: Engine, host: EngineHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first frame's answers fail to encode: nothing of it, nor of the frame behind it, is
    written (the worker pairs answers with frames by order alone), the connection closes, and
    every hold granted for either frame is released."""
    calls: list[int] = []
    pack_answer = relay.pack_answer

    def pack_failing_once(answer: relay.Answer) -> object:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("cannot encode")
        return pack_answer(answer)

    monkeypatch.setattr(relay, "pack_answer", pack_failing_once)
    first = [pack_operation(local.authorize_operation("t1", spend())) for _ in range(3)]
    second = [pack_operation(local.authorize_operation("t1", spend())) for _ in range(2)]

    async def send_both() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_unix_connection(host.path)
        writer.write(encode_frame(first) + encode_frame(second))
        await writer.drain()
        return reader, writer

    async def scenario() -> bytes:
        with local.store.transaction() as tx:  # both frames are read before either is decided
            tx.lock_tenants(["t1"])
            reader, writer = await send_both()
            await asyncio.sleep(0.3)
        received = await asyncio.wait_for(reader.read(), 10)  # until the host closes
        writer.close()
        return received

    assert asyncio.run(scenario()) == b"", "no answers written after the failed frame"
    assert_all_released(local, holds=5)


def test_a_reply_that_does_not_fit_fails_its_callers_instead_of_hanging(local: Engine, tmp_path: Path) -> None:
    """A host whose reply holds fewer answers than the frame had requests: every caller of the
    frame hears `unavailable`; none is left waiting."""
    path = str(tmp_path / "short.sock")

    handled: list[asyncio.Task[None] | None] = []

    async def short_host(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handled.append(asyncio.current_task())
        try:
            while await relay.read_frame(reader) is not None:
                writer.write(encode_frame(([], [])))
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def scenario() -> list[BaseException | Decision]:
        server = await asyncio.start_unix_server(short_host, path=path)
        worker = RelayBatcher(local, path)
        try:
            calls = [worker.authorize("t1", spend()) for _ in range(3)]
            return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 10)
        finally:
            worker.close()
            server.close()
            await asyncio.gather(*[task for task in handled if task is not None])

    answers = asyncio.run(scenario())
    assert [type(answer) for answer in answers] == [Unavailable] * 3
