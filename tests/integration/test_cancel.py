"""Cancelling runs: while waiting, while running, and after they ended."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from tests.helpers import wait_for_status, wait_until
from tether import DurableContext, RunAlreadyFinishedError, RunCancelledError, Tether
from tether.errors import RunNotFoundError
from tether.serve import TetherServer


async def test_cancel_while_waiting_closes_wait_and_deadlines(
    app: Tether, server: TetherServer
) -> None:
    @app.durable_task(name="approval")
    async def approval(input: Any, ctx: DurableContext) -> str:
        await ctx.wait_for_event(
            "approval:decision", f"input.runId == '{ctx.run_id}'", timeout=timedelta(hours=1)
        )
        return "approved"

    async with app.worker("w", slots=1):
        ref = await approval.run_no_wait({})
        await wait_for_status(app, ref.run_id, "waiting")
        conn = await app.connection()

        async def deadline_keys() -> list[str]:
            try:
                keys = await conn.deadlines.keys()
            except Exception:  # no keys at all
                return []
            return [k for k in keys if k.split(".")[1] == ref.run_id]  # p<n>.<run_id>.<what>

        await wait_until(deadline_keys, message="the run's deadlines to be recorded")
        info = await app.runs.cancel(ref.run_id, reason="customer withdrew")
        assert info.status == "cancelled"
        with pytest.raises(RunCancelledError) as caught:
            await ref.result(timeout=10)
        assert "customer withdrew" in str(caught.value)
        assert server.matcher is not None
        matcher = server.matcher

        async def wait_closed() -> bool:
            return not any(w.run_id == ref.run_id for w in matcher.waits.values())

        await wait_until(wait_closed, message="the wait to leave the matcher's index")

        async def no_deadlines() -> bool:
            return await deadline_keys() == []

        await wait_until(no_deadlines, message="the run's deadlines to be removed")
        # a decision arriving afterwards changes nothing
        await app.events.push("approval:decision", {"runId": ref.run_id})
        assert (await app.runs.get(ref.run_id)).status == "cancelled"


async def test_cancel_while_running_stops_at_next_durable_call(
    app: Tether, server: TetherServer
) -> None:
    entered, release = asyncio.Event(), asyncio.Event()
    after: list[str] = []

    async def slow() -> str:
        entered.set()
        await release.wait()
        return "slow done"

    @app.durable_task(name="busy")
    async def busy(input: Any, ctx: DurableContext) -> str:
        await ctx.step("slow", slow)
        after.append("next")
        await ctx.step("next", lambda: after.append("ran") or 1)
        return "finished"

    async with app.worker("w", slots=1) as worker:
        ref = await busy.run_no_wait({})
        await asyncio.wait_for(entered.wait(), 10)
        await app.runs.cancel(ref.run_id, reason="stop")
        release.set()
        with pytest.raises(RunCancelledError):
            await ref.result(timeout=10)

        async def slot_freed() -> bool:
            return worker.active == 0

        await wait_until(slot_freed, message="the attempt to stop")
    info = await app.runs.get(ref.run_id)
    assert info.status == "cancelled"
    assert "ran" not in after  # the step after the cancellation never ran
    assert [e.type for e in info.events].count("run.step.v1") == 0


async def test_cancel_finished_or_unknown_run_is_a_clear_error(
    app: Tether, server: TetherServer
) -> None:
    @app.durable_task(name="quick")
    async def quick(input: Any, ctx: DurableContext) -> int:
        return 1

    async with app.worker("w", slots=1):
        ref = await quick.run_no_wait({})
        assert await ref.result(timeout=10) == 1
    with pytest.raises(RunAlreadyFinishedError, match=r"has already ended \(status: completed\)"):
        await app.runs.cancel(ref.run_id)
    with pytest.raises(RunNotFoundError):
        await app.runs.cancel("no-such-run")
