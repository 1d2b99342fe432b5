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
from tether.client import FIRST_RECHECK_S, MAX_RECHECK_S
from tether.engine import events as ev
from tether.engine.config import Settings
from tether.engine.connection import Connection
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


async def test_a_run_triggered_while_listening_is_read_only_after_its_notice(
    app: Tether, server: TetherServer
) -> None:
    """A client that already listens for terminal notices when it triggers a run needs no
    first look at the run: no notice means it has not ended. Once notices may have been
    lost (a reconnect), the waiter looks first, as for any other run."""

    @app.durable_task(name="quick")
    async def quick(input: Any, ctx: DurableContext) -> Any:
        return input

    conn = await app.connection()
    real_read_last = conn.store.read_last
    looks: list[str] = []

    async def counted_read_last(run_id: str) -> Any:
        looks.append(run_id)
        return await real_read_last(run_id)

    conn.store.read_last = counted_read_last  # type: ignore[method-assign]
    async with app.worker("w", slots=2):
        assert await (await quick.run_no_wait({"n": 0})).result(timeout=15) == {"n": 0}
        assert len(looks) == 1  # the client was not listening yet when it triggered that one

        ref = await quick.run_no_wait({"n": 1})
        assert await ref.result(timeout=15) == {"n": 1}
        assert await ref.result(timeout=15) == {"n": 1}  # ended before the call: its notice
        assert len(looks) == 1

        watcher = app.runs._watcher
        assert watcher is not None
        ended = await quick.run_no_wait({"n": 2})
        await wait_for_status(app, ended.run_id, "completed")
        # as if its notice had come while the connection was down: the reconnect bumps the
        # watcher's epoch, and the waiter reads first instead of waiting for a notice
        watcher._recent.pop(ended.run_id, None)
        await watcher.wake_all()
        assert await ended.result(timeout=15) == {"n": 2}
    assert looks[1:] == [ended.run_id]


async def test_a_run_log_that_republishes_nothing_still_tells_clients_of_endings(
    server: TetherServer, settings: Settings
) -> None:
    """Notices come from the run log's republishing of stored events. A client that finds a
    run log without it (made by an older version, which the engine may not update) hears
    the writes themselves instead, rather than waiting for its first re-read."""
    admin = await Connection.open(settings)
    try:
        runs = (await admin.js.stream_info(settings.names.runs_stream)).config
        runs.republish = None
        await admin.js.update_stream(runs)
    finally:
        await admin.close()
    client = Tether(settings=settings)

    @client.durable_task(name="quick")
    async def quick(input: Any, ctx: DurableContext) -> Any:
        return input

    try:
        assert not (await client.connection()).stores_notices
        async with client.worker("w", slots=2):
            began = time.monotonic()
            ref = await quick.run_no_wait(7)  # triggered while listening: no first look
            assert await ref.result(timeout=30) == 7
            assert time.monotonic() - began < FIRST_RECHECK_S
    finally:
        await client.close()
