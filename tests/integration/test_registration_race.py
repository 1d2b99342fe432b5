"""Invariant 3: an event pushed while a wait is being registered is not missed.

A wait matches every event stored after the events-stream position it read just before it
was recorded. The race that loses events elsewhere is an event landing after that read but
before the matcher has indexed the wait; these tests force it, and also run it loose.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from tests.helpers import wait_for_status, wait_until
from tether import DurableContext, Tether
from tether.engine.config import Settings
from tether.serve import TetherServer


def define(app: Tether) -> Any:
    @app.durable_task(name="race")
    async def race(input: dict[str, Any], ctx: DurableContext) -> dict[str, Any]:
        decision = await ctx.wait_for_event(
            "approval:decision", expression=f"input.runId == '{ctx.run_id}'"
        )
        return {"decision": decision["decision"]}

    return race


@pytest.mark.parametrize("window_s", [30.0, 0.0], ids=["recent-window", "stream-reread"])
async def test_event_between_position_read_and_wait_record(
    app: Tether, settings: Settings, window_s: float
) -> None:
    """Force the worst interleaving: the event is stored and fully processed by the matcher
    after the wait read its position but before the wait is recorded."""
    server = TetherServer(settings, matcher_window_s=window_s)
    await server.start()
    assert server.matcher is not None
    matcher = server.matcher
    task = define(app)
    conn = await app.connection()
    real_position = conn.events_position
    current: dict[str, str] = {}

    async def racing_position() -> int:
        position = await real_position()
        pushed = await app.events.push(
            "approval:decision", {"runId": current["run_id"], "decision": "approve"}
        )

        async def matcher_saw_it() -> bool:
            return (matcher.events_cursor or 0) >= pushed.seq

        await wait_until(matcher_saw_it, message="the matcher to pass the event")
        return position

    conn.events_position = racing_position  # type: ignore[method-assign]
    try:
        async with app.worker("w", slots=1):
            for _ in range(10):
                run_id = f"race-{random.getrandbits(48):x}"
                current["run_id"] = run_id
                ref = await task.run_no_wait({}, run_id=run_id)
                assert await ref.result(timeout=15) == {"decision": "approve"}
    finally:
        await server.stop()


async def test_concurrent_pushes_never_lost(app: Tether, server: TetherServer) -> None:
    """Loose race, many times: push the decision at a random instant around registration.
    An event stored after the wait's position must resolve it; one stored before it is, by
    definition, earlier than the wait and leaves it open (a later event then resolves it)."""
    task = define(app)
    ready: dict[str, asyncio.Event] = {}

    @app.durable_task(name="race-step")
    async def race_step(input: dict[str, Any], ctx: DurableContext) -> dict[str, Any]:
        await ctx.step("signal", lambda: ready[ctx.run_id].set())
        decision = await ctx.wait_for_event(
            "approval:decision", expression=f"input.runId == '{ctx.run_id}'"
        )
        return {"decision": decision["decision"]}

    after, before = 0, 0
    async with app.worker("w", tasks=[task, race_step], slots=4):
        for _ in range(40):
            run_id = f"loose-{random.getrandbits(48):x}"
            ready[run_id] = asyncio.Event()
            ref = await race_step.run_no_wait({}, run_id=run_id)
            await asyncio.wait_for(ready[run_id].wait(), 15)
            await asyncio.sleep(random.random() * 0.004)  # jitter around the registration
            pushed = await app.events.push(
                "approval:decision", {"runId": run_id, "decision": "approve"}
            )
            info = await wait_until(
                lambda run_id=run_id: _with_wait(app, run_id),  # type: ignore[misc]
                message=f"run {run_id} to record its wait",
            )
            position = next(
                e.data["events_position"] for e in info.events if e.type == "run.wait_started.v1"
            )
            if pushed.seq > position:
                after += 1
                assert await ref.result(timeout=15) == {"decision": "approve"}
            else:
                before += 1
                await wait_for_status(app, run_id, "waiting")
                await app.events.push("approval:decision", {"runId": run_id, "decision": "approve"})
                assert await ref.result(timeout=15) == {"decision": "approve"}
    assert after > 0, "no trial pushed after the wait's position"
    assert after + before == 40


async def _with_wait(app: Tether, run_id: str) -> Any:
    info = await app.runs.get(run_id)
    return info if any(e.type == "run.wait_started.v1" for e in info.events) else None
