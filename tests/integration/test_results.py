"""Waiting for a run's result: a notice on the run's terminal subject wakes the waiter at
once, but the result must not depend on it. Notices are core NATS messages, lost while a
client is disconnected or subscribing, so a waiter that misses one still has to return."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.helpers import wait_for_status
from tether import DurableContext, RunCancelledError, Tether
from tether.client import MAX_RECHECK_S
from tether.engine import events as ev
from tether.engine.config import Settings
from tether.serve import TetherServer


async def test_result_returns_when_the_notice_is_missed(app: Tether, settings: Settings) -> None:
    @app.durable_task(name="approval")
    async def approval(input: Any, ctx: Any) -> str:
        return "never runs: no worker"

    ref = await approval.run_no_wait({})
    waiter = asyncio.create_task(ref.result(timeout=MAX_RECHECK_S * 3))

    # Once the waiter is listening, cut its notices off, as a dropped connection would.
    async def listening() -> bool:
        watcher = app.runs._watcher
        return watcher is not None and ref.run_id in watcher._waiters

    deadline = time.monotonic() + 10
    while not await listening():
        assert time.monotonic() < deadline, "the waiter never started listening"
        await asyncio.sleep(0.01)
    watcher = app.runs._watcher
    assert watcher is not None
    for sub in watcher._subs:
        await sub.unsubscribe()

    # Another client ends the run; no notice reaches the waiter.
    other = Tether(settings=settings)
    try:
        await other.runs.cancel(ref.run_id, reason="withdrawn")
    finally:
        await other.close()

    with pytest.raises(RunCancelledError, match="withdrawn"):
        await waiter


async def test_a_notice_of_a_write_the_run_ignores_does_not_make_the_waiter_spin(
    app: Tether, server: TetherServer, settings: Settings
) -> None:
    """A terminal notice whose read finds the run going on (a write the run does not take)
    is followed by re-reads backing off from a few milliseconds, not by a read per loop."""

    @app.durable_task(name="approval")
    async def approval(input: Any, ctx: DurableContext) -> Any:
        return await ctx.wait_for_event("approval:decision")

    async with app.worker("w", slots=2):
        ref = await approval.run_no_wait({})
        await wait_for_status(app, ref.run_id, "waiting")
        conn = await app.connection()
        real_read = conn.store.read
        reads: list[float] = []

        async def counted_read(run_id: str) -> Any:
            reads.append(time.monotonic())
            return await real_read(run_id)

        conn.store.read = counted_read  # type: ignore[method-assign]
        waiter = asyncio.create_task(ref.result(timeout=30))
        await asyncio.sleep(0.2)  # the waiter is listening
        # A completion the waiting run does not take: written without the run's guard.
        names = settings.names
        forged = ev.RunCompleted(run_id=ref.run_id, at=time.time(), output="forged")
        await conn.js.publish(names.run_subject(ref.run_id, "completed"), ev.encode(forged))
        await asyncio.sleep(1.0)
        assert not waiter.done()  # the run has not ended
        # backing off from 2 ms, doubling: about ten re-reads in a second, not thousands
        assert 1 <= len(reads) <= 20, f"{len(reads)} whole-log reads in a second"
        await app.events.push("approval:decision", {"decision": "approve"})
        assert await waiter == {"decision": "approve"}
