"""A suspended task holds no worker slot: 1,000 runs wait on one worker with 2 slots while
new work still runs; then all 1,000 are approved and complete."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.helpers import wait_until
from tether import DurableContext, Tether
from tether.serve import TetherServer

WAITING = 1000


async def test_thousand_waiting_runs_on_two_slots(app: Tether, server: TetherServer) -> None:
    @app.durable_task(name="approval")
    async def approval(input: dict[str, Any], ctx: DurableContext) -> dict[str, Any]:
        decision = await ctx.wait_for_event(
            "approval:decision", expression=f"input.runId == '{ctx.run_id}'"
        )
        return {"n": input["n"], "decision": decision["decision"]}

    @app.durable_task(name="short")
    async def short(input: dict[str, Any], ctx: DurableContext) -> str:
        return "done"

    async with app.worker("one", slots=2) as worker:
        refs = []
        for start in range(0, WAITING, 200):
            refs += await asyncio.gather(
                *(approval.run_no_wait({"n": n}) for n in range(start, start + 200))
            )
        assert server.matcher is not None
        matcher = server.matcher

        async def all_waiting() -> bool:
            return len(matcher.waits) >= WAITING

        await wait_until(all_waiting, timeout=120, message="1,000 runs waiting")
        assert worker.active <= 2
        # New work still runs while a thousand runs wait.
        assert await short.run({}, timeout=30) == "done"

        for start in range(0, WAITING, 200):
            await asyncio.gather(
                *(
                    app.events.push(
                        "approval:decision", {"runId": ref.run_id, "decision": "approve"}
                    )
                    for ref in refs[start : start + 200]
                )
            )
        results = await asyncio.gather(*(ref.result(timeout=180) for ref in refs))
    assert [r["n"] for r in results] == list(range(WAITING))
    assert all(r["decision"] == "approve" for r in results)
    assert len(matcher.waits) == 0
