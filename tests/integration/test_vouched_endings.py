"""An ending stored right after a resolution the engine marked as taken needs no read of the
run: the client returns it from the stored notices, and the engine's bookkeeping books it
without reading. Any other ending is read, so a write the run ignores never passes for one."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import pytest
from nats.js.errors import KeyNotFoundError

from tests.helpers import wait_for_status, wait_until
from tether import DurableContext, Tether
from tether.engine import events as ev
from tether.engine import ids, wire
from tether.engine.config import Settings
from tether.engine.connection import Connection
from tether.serve import TetherServer

KEY = "approval:decision"


def define(app: Tether) -> Any:
    @app.durable_task(name="approval", execution_timeout=timedelta(minutes=5))
    async def approval(input: Any, ctx: DurableContext) -> Any:
        decision = await ctx.wait_for_event(
            KEY, expression=f"input.runId == '{ctx.run_id}'", timeout=timedelta(hours=1)
        )
        return {"decision": decision["decision"]}

    return approval


def count_whole_reads(conn: Connection, run_id: str) -> list[float]:
    """Every read of ``run_id``'s whole log through ``conn`` from now on (when it began)."""
    reads: list[float] = []
    real_read = conn.store.read

    async def counted(read_id: str) -> Any:
        if read_id == run_id:
            reads.append(time.monotonic())
        return await real_read(read_id)

    conn.store.read = counted  # type: ignore[method-assign]
    return reads


async def listening(app: Tether, run_id: str) -> None:
    async def check() -> bool:
        watcher = app.runs._watcher
        return watcher is not None and run_id in watcher._waiters

    await wait_until(check, message="the waiter to listen")


async def deadline_gone(conn: Connection, key: str) -> bool:
    try:
        return not (await conn.deadlines.get(key)).value
    except KeyNotFoundError:
        return True


async def resolve_as_the_engine(
    app: Tether, serve: TetherServer, run_id: str, *, taken: bool
) -> tuple[asyncio.Task[Any], list[float]]:
    """Stop the engine of a waiting run, start a waiter on its result, then write the
    resolution of its wait as the engine writes it, marked as taken or not; the waiter,
    and the reads of the run's whole log from then on."""
    await wait_for_status(app, run_id, "waiting")
    await serve.stop()
    state, _ = await app.runs.state(run_id)
    wait = state.open_wait()
    assert wait is not None
    waiter = asyncio.create_task(app.runs.result(run_id, timeout=15))
    await listening(app, run_id)
    payload = {"runId": run_id, "decision": "approve"}
    resolution = ev.WaitSatisfied(
        run_id=run_id,
        at=time.time(),
        wait_id=wait.wait_id,
        wait_seq=wait.started_seq,
        event_key=KEY,
        event_seq=None,
        event_id=None,
        payload=payload,
        fired=[KEY],
        payloads={KEY: payload},
    )
    headers = {wire.TASK: "approval", **({wire.TAKEN: "1"} if taken else {})}
    conn = await app.connection()
    reads = count_whole_reads(conn, run_id)
    await conn.store.append(resolution, expected_last_seq=state.last_seq, headers=headers)
    return waiter, reads


@pytest.mark.parametrize("marked", [True, False], ids=["marked", "unmarked"])
async def test_an_ending_right_after_a_resolution_is_read_unless_marked_taken(
    app: Tether, settings: Settings, marked: bool
) -> None:
    """The waiter takes the ending without reading the run only after a resolution the
    engine marked as taken: the mark, not the shape of the chain, vouches."""
    approval = define(app)
    serve = TetherServer(settings)
    await serve.start()
    async with app.worker("w", slots=2):
        ref = await approval.run_no_wait({})
        waiter, reads = await resolve_as_the_engine(app, serve, ref.run_id, taken=marked)
        assert await waiter == {"decision": "approve"}
        assert (reads == []) is marked


async def test_the_engine_and_the_client_take_a_decided_run_without_reading_it(
    app: Tether, server: TetherServer
) -> None:
    """The whole path: the bookkeeping follows the run's chain from its request to its
    wait, so the engine marks its resolution as taken; then neither the client nor the
    bookkeeping reads the run to take its ending. The engine never reads the run."""
    approval = define(app)
    engine = server.conn
    assert engine is not None
    names = engine.settings.names
    async with app.worker("w", slots=2):
        ref = await approval.run_no_wait({})
        engine_reads = count_whole_reads(engine, ref.run_id)
        run_id, partition = ref.run_id, names.partition(ref.run_id)
        await wait_for_status(app, run_id, "waiting")
        state, _ = await app.runs.state(run_id)
        wait = state.open_wait()
        assert wait is not None
        wait_key = ids.wait_deadline_key(partition, run_id, wait.position)

        async def wait_booked() -> bool:  # (the bookkeeping has taken the wait)
            return not await deadline_gone(engine, wait_key)

        await wait_until(wait_booked, message="the wait's deadline")
        client_reads = count_whole_reads(await app.connection(), run_id)
        waiter = asyncio.create_task(ref.result(timeout=15))
        await listening(app, run_id)
        await app.events.push(KEY, {"runId": run_id, "decision": "approve"})
        assert await waiter == {"decision": "approve"}
        run_key = ids.run_deadline_key(partition, run_id)
        await wait_until(lambda: deadline_gone(engine, run_key), message="the ending booked")
        assert client_reads == [] and engine_reads == []
        stored = await engine.store.read_raw(run_id)
        [resolution] = [h for _, e, h in stored if isinstance(e, ev.WaitSatisfied)]
        assert resolution.get(wire.TAKEN) == "1"


async def test_a_waiter_that_starts_after_the_resolution_still_takes_the_ending_unread(
    app: Tether, server: TetherServer
) -> None:
    """The push that decides a run may be acknowledged after the run's resolution is
    stored, so the caller starts waiting only then: the client has kept the resolution it
    heard, and takes the ending without reading the run."""
    release = asyncio.Event()

    @app.durable_task(name="held-approval", execution_timeout=timedelta(minutes=5))
    async def held(input: Any, ctx: DurableContext) -> Any:
        decision = await ctx.wait_for_event(KEY, expression=f"input.runId == '{ctx.run_id}'")
        await release.wait()  # the run's ending comes once the test has started its waiter
        return {"decision": decision["decision"]}

    @app.durable_task(name="quick")
    async def quick(input: Any, ctx: DurableContext) -> Any:
        return "done"

    async with app.worker("w", slots=2):
        assert await (await quick.run_no_wait({})).result(timeout=10) == "done"  # (listening)
        ref = await held.run_no_wait({})
        await wait_for_status(app, ref.run_id, "waiting")
        await app.events.push(KEY, {"runId": ref.run_id, "decision": "approve"})

        async def resolution_heard() -> bool:
            watcher = app.runs._watcher
            return watcher is not None and watcher._taken.get(ref.run_id) is not None

        await wait_until(resolution_heard, message="the client to hear the marked resolution")
        reads = count_whole_reads(await app.connection(), ref.run_id)
        waiter = asyncio.create_task(ref.result(timeout=15))
        await listening(app, ref.run_id)
        release.set()
        assert await waiter == {"decision": "approve"}
    assert reads == []
