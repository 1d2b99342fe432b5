"""Invariant 5: a resumed run whose code now makes different durable calls fails with
NonDeterminismError instead of silently diverging."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import wait_for_status
from tether import DurableContext, RunFailedError, Tether
from tether.engine.config import Settings
from tether.serve import TetherServer


def version_one(app: Tether) -> Any:
    @app.durable_task(name="flow")
    async def flow(input: dict[str, Any], ctx: DurableContext) -> str:
        await ctx.step("charge", lambda: "charged")
        await ctx.wait_for_event("approval:decision", f"input.runId == '{ctx.run_id}'")
        return "v1"

    return flow


def reordered(app: Tether) -> Any:
    @app.durable_task(name="flow")
    async def flow(input: dict[str, Any], ctx: DurableContext) -> str:
        await ctx.wait_for_event("approval:decision", f"input.runId == '{ctx.run_id}'")
        await ctx.step("charge", lambda: "charged")
        return "v2"

    return flow


def renamed(app: Tether) -> Any:
    @app.durable_task(name="flow")
    async def flow(input: dict[str, Any], ctx: DurableContext) -> str:
        await ctx.step("charge-card", lambda: "charged")
        await ctx.wait_for_event("approval:decision", f"input.runId == '{ctx.run_id}'")
        return "v3"

    return flow


@pytest.mark.parametrize("new_code", [reordered, renamed])
async def test_changed_call_order_fails_the_run(
    settings: Settings, server: TetherServer, new_code: Any
) -> None:
    old_app, new_app = Tether(settings=settings), Tether(settings=settings)
    try:
        flow = version_one(old_app)
        async with old_app.worker("old", slots=1):
            ref = await flow.run_no_wait({})
            await wait_for_status(old_app, ref.run_id, "waiting")
        new_code(new_app)  # deploy the changed code, then the decision arrives
        async with new_app.worker("new", slots=1):
            await new_app.events.push("approval:decision", {"runId": ref.run_id})
            with pytest.raises(RunFailedError) as caught:
                await new_app.runs.result(ref.run_id, timeout=15)
        assert caught.value.error_type == "NonDeterminismError"
        assert "durable call #0" in caught.value.error_message
        info = await new_app.runs.get(ref.run_id)
        assert info.status == "failed"
        assert [e.type for e in info.events].count("run.step.v1") == 1  # nothing re-recorded
    finally:
        await old_app.close()
        await new_app.close()


async def test_same_code_resumes(settings: Settings, server: TetherServer) -> None:
    """Control: the unchanged code replays to completion."""
    app = Tether(settings=settings)
    try:
        flow = version_one(app)
        async with app.worker("w", slots=1):
            ref = await flow.run_no_wait({})
            await wait_for_status(app, ref.run_id, "waiting")
            await app.events.push("approval:decision", {"runId": ref.run_id})
            assert await ref.result(timeout=15) == "v1"
    finally:
        await app.close()
