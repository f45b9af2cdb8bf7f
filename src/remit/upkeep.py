"""A server's background upkeep: the expiry sweep and, on SQLite, write-ahead-log checkpoints.

Whatever process executes a node's batches runs these (one `remit serve`, or the engine host
of `remit serve --workers`): each round runs in a worker thread so the event loop never waits
on the store. Both are stopped by an event, never cancelled: a cancelled task would leave its
thread inside a batch while the store closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.concurrency import run_in_threadpool

from remit.engine import Engine
from remit.errors import RemitError
from remit.limits import EXPIRY_BATCH_SIZE_MAX

log = logging.getLogger("remit.requests")

SWEEP_ROUNDS_MAX = 100
"""Most expiry batches one sweep runs back to back (25,600 holds) before it yields to the next interval."""
CHECKPOINT_SECONDS = 0.25
"""How often a server on SQLite copies the write-ahead log into the database (`Store.checkpoint`),
so that no commit has to copy a large one itself."""


def start_upkeep(engine: Engine, sweep_seconds: float, stop: asyncio.Event) -> list[asyncio.Task[None]]:
    """Start the sweep (and the checkpointer for an in-process store) on the running loop; set
    `stop`, then await the tasks, to end them."""
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(sweep(engine, sweep_seconds, stop))]
    if engine.store.is_in_process:
        tasks.append(loop.create_task(checkpoint(engine, CHECKPOINT_SECONDS, stop)))
    return tasks


async def _next_round(stop: asyncio.Event, interval_seconds: float) -> bool:
    """Wait one interval, or less if `stop` is set meanwhile; True while the task should go on."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), interval_seconds)
    return not stop.is_set()


async def checkpoint(engine: Engine, interval_seconds: float, stop: asyncio.Event) -> None:
    """Checkpoint the store's write-ahead log from a worker thread (`Store.checkpoint`)."""
    while await _next_round(stop, interval_seconds):
        try:
            await run_in_threadpool(engine.store.checkpoint)
        except Exception:
            log.exception("checkpoint failed; retrying next round")


async def sweep(engine: Engine, interval_seconds: float, stop: asyncio.Event) -> None:
    """Expire abandoned holds of tenants that have no traffic (any batch of a tenant does it too)."""
    while await _next_round(stop, interval_seconds):
        for _ in range(SWEEP_ROUNDS_MAX):  # a backlog drains now, not at one batch per interval
            if stop.is_set():
                return
            try:
                expired = await run_in_threadpool(engine.expire_holds)
            except RemitError:
                log.warning("expiry sweep failed; retrying next round")
                break
            except Exception:
                log.exception("expiry sweep failed")
                break
            if expired < EXPIRY_BATCH_SIZE_MAX:
                break
