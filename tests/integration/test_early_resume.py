"""A worker resumes a run it suspended as soon as the run log has stored the wait's
resolution, before any dispatch; the dispatch that follows does not run the run again."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tests.helpers import wait_for_status, wait_until
from tether import DurableContext, Tether
from tether.engine import events as ev
from tether.engine import wire
from tether.engine.config import Settings
from tether.serve import TetherServer

KEY = "approval:decision"


async def resolve_with_no_engine(app: Tether, serve: TetherServer, run_id: str, task: str) -> None:
    """Stop the engine of a waiting run, then write the resolution of its wait as the engine
    writes it (right after the wait's event, naming the run's task): nothing dispatches it."""
    await wait_for_status(app, run_id, "waiting")
    await serve.stop()
    state, _ = await app.runs.state(run_id)
    wait = state.open_wait()
    assert wait is not None
    resolution = ev.WaitSatisfied(
        run_id=run_id,
        at=time.time(),
        wait_id=wait.wait_id,
        event_key=KEY,
        event_seq=None,
        event_id=None,
        payload={"decision": "approve"},
        fired=[KEY],
        payloads={KEY: {"decision": "approve"}},
    )
    conn = await app.connection()
    await conn.store.append(resolution, expected_last_seq=state.last_seq, headers={wire.TASK: task})


async def test_a_stored_resolution_resumes_the_run_before_its_dispatch(
    app: Tether, settings: Settings
) -> None:
    bodies: list[str] = []

    @app.durable_task(name="early")
    async def early(input: Any, ctx: DurableContext) -> Any:
        bodies.append(ctx.run_id)  # every time the task's body runs, replays included
        decision = await ctx.wait_for_event(KEY)
        return {"decision": decision["decision"]}

    serve = TetherServer(settings)
    await serve.start()
    async with app.worker("w", slots=2) as worker:
        ref = await early.run_no_wait({})
        await resolve_with_no_engine(app, serve, ref.run_id, "early")
        assert await ref.result(timeout=10) == {"decision": "approve"}
        assert worker.early.started == 1
        assert bodies == [ref.run_id, ref.run_id]  # the first attempt, the resumed one

        # The engine is back: its bookkeeping dispatches the resolution it has not booked.
        # The worker acknowledges that dispatch without running the run a third time.
        serve = TetherServer(settings)
        await serve.start()
        try:
            names = settings.names
            consumer = names.task_consumer("early")

            async def dispatch_acknowledged() -> bool:
                conn = await app.connection()
                info = await conn.js.consumer_info(names.tasks_stream, consumer)
                return info.delivered.stream_seq == 2 and info.num_ack_pending == 0

            await wait_until(dispatch_acknowledged, message="the resolution's dispatch acked")
        finally:
            await serve.stop()
    assert bodies == [ref.run_id, ref.run_id]
    assert (await app.runs.get(ref.run_id)).status == "completed"


async def test_a_dispatch_waits_for_an_early_attempt_holding_the_only_slot(
    app: Tether, settings: Settings
) -> None:
    """The early attempt holds the worker's one slot for a while; its dispatch, sent
    meanwhile, is taken once the slot is free and acknowledged without running the run
    again."""
    bodies: list[str] = []

    def last_step() -> str:
        return "done"

    @app.durable_task(name="slow-after")
    async def slow_after(input: Any, ctx: DurableContext) -> Any:
        bodies.append(ctx.run_id)
        await ctx.wait_for_event(KEY)
        await asyncio.sleep(1.5)  # work after the decision, holding the slot
        return await ctx.step("after", last_step)

    serve = TetherServer(settings)
    await serve.start()
    async with app.worker("w", slots=1) as worker:
        ref = await slow_after.run_no_wait({})
        await resolve_with_no_engine(app, serve, ref.run_id, "slow-after")

        async def started_early() -> bool:
            return worker.early.started == 1

        await wait_until(started_early, message="the attempt to start from the stored event")
        serve = TetherServer(settings)  # its bookkeeping dispatches the resolution now
        await serve.start()
        try:
            assert await ref.result(timeout=15) == "done"
            assert worker.early.started == 1
            names = settings.names

            async def dispatch_acknowledged() -> Any:
                conn = await app.connection()
                info = await conn.js.consumer_info(
                    names.tasks_stream, names.task_consumer("slow-after")
                )
                done = info.delivered.stream_seq == 2 and info.num_ack_pending == 0
                return info if done else None

            info = await wait_until(dispatch_acknowledged, message="the dispatch acked")
        finally:
            await serve.stop()
    assert bodies == [ref.run_id, ref.run_id]
    # while its one slot is taken the worker asks for no message: no delivery goes round
    # and round while the early attempt runs
    assert info.delivered.consumer_seq <= 4, f"{info.delivered.consumer_seq} deliveries"


async def test_dispatches_arriving_while_early_attempts_hold_every_slot_wait_without_one(
    app: Tether, settings: Settings
) -> None:
    """Both slots of a worker are held by attempts resumed from stored resolutions when the
    worker's open pull request brings their dispatches. Each dispatch waits for its
    attempt without a slot and is acknowledged: none is handed back and delivered again."""
    bodies: list[str] = []
    release = asyncio.Event()

    @app.durable_task(name="held")
    async def held(input: Any, ctx: DurableContext) -> Any:
        bodies.append(ctx.run_id)
        decision = await ctx.wait_for_event(KEY, expression=f"input.runId == '{ctx.run_id}'")
        await release.wait()  # work after the decision, holding the slot
        return decision["decision"]

    names = settings.names
    consumer = names.task_consumer("held")

    async def consumer_info() -> Any:
        conn = await app.connection()
        return await conn.js.consumer_info(names.tasks_stream, consumer)

    async with TetherServer(settings), app.worker("w", slots=2) as worker:
        refs = [await held.run_no_wait({}) for _ in range(2)]
        for ref in refs:
            await wait_for_status(app, ref.run_id, "waiting")
        for ref in refs:
            await app.events.push(KEY, {"runId": ref.run_id, "decision": "approve"})

        async def both_dispatches_held() -> bool:
            info = await consumer_info()
            return info.delivered.stream_seq == 4 and info.num_ack_pending == 2

        await wait_until(both_dispatches_held, message="both dispatches delivered and held")
        assert worker.early.started == 2 and worker.active == 2
        release.set()
        assert [await ref.result(timeout=10) for ref in refs] == ["approve", "approve"]

        async def dispatches_acknowledged() -> Any:
            info = await consumer_info()
            return info if info.num_ack_pending == 0 else None

        info = await wait_until(dispatches_acknowledged, message="the dispatches acked")
    assert sorted(bodies) == sorted([r.run_id for r in refs] * 2)  # first attempts, early ones
    # two requests and two resolutions, each delivered once
    assert (info.delivered.consumer_seq, info.num_redelivered) == (4, 0)
