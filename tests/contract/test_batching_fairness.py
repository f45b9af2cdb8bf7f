"""One tenant cannot fill a server's queue: past its share it is told `overloaded`, others get in.

How: a real engine on each store and its asyncio front; a burst of one tenant's requests and one
of another tenant's are submitted in the same loop tick (all queued before the first batch
runs), with the per-tenant share lowered to 3 for the test. The flooding tenant gets exactly
3 decisions and `overloaded` for the rest; the other tenant's request is decided; nothing of
the refused requests reaches the store.
"""

from __future__ import annotations

import asyncio

import pytest

from conftest import config
from remit import batching
from remit.batching import AsyncBatcher
from remit.engine import ActionInput, Engine
from remit.errors import Overloaded

SHARE = 3


def test_a_flooding_tenant_gets_its_share_and_others_still_get_in(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batching, "QUEUE_LENGTH_PER_TENANT_MAX", SHARE)
    engine.create_tenant("t2")
    engine.apply_config("t2", config())

    async def scenario() -> tuple[list[object], object]:
        batcher = AsyncBatcher(engine)
        try:
            act = ActionInput(agent="a1", action="x", amounts={"usd": "1.00"})
            flood = [batcher.authorize("t2", act) for _ in range(10)]
            other = batcher.authorize("t1", ActionInput(agent="bot-7", action="crm.x", amounts={"usd": "1.00"}))
            *flooded, others = await asyncio.gather(*flood, other, return_exceptions=True)
            await batcher.drain()
            return flooded, others
        finally:
            batcher.close()

    flooded, other = asyncio.run(scenario())
    decided = [answer for answer in flooded if not isinstance(answer, BaseException)]
    refused = [answer for answer in flooded if isinstance(answer, Overloaded)]
    assert len(decided) == SHARE and len(refused) == 10 - SHARE
    assert all(getattr(answer, "is_allowed", False) for answer in decided)
    assert getattr(other, "is_allowed", False), other
    report = engine.check("t2")
    assert report.is_consistent
    with engine.store.transaction(is_read_only=True) as tx:
        holds = [entry for entry in tx.ledger_entries("t2") if entry.kind.value == "hold"]
    assert len(holds) == SHARE, "a refused request reaches no batch"
