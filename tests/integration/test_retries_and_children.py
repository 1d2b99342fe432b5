"""Retries with backoff, schedule and refreshed timeouts, child runs, and a durable sleep
that survives a worker restart."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import pytest

from tests.helpers import attempt_workers, wait_for_status
from tether import (
    DurableContext,
    NonRetryableError,
    RunFailedError,
    RunTimeoutError,
    Tether,
)
from tether.engine.config import Settings
from tether.serve import TetherServer

FAST = {"backoff_initial": timedelta(milliseconds=50), "backoff_factor": 2.0}


async def test_flaky_step_retried_until_it_succeeds(app: Tether, server: TetherServer) -> None:
    calls = {"before": 0, "flaky": 0}

    def before() -> str:
        calls["before"] += 1
        return "reserved"

    def flaky() -> str:
        calls["flaky"] += 1
        if calls["flaky"] <= 2:
            raise ConnectionError(f"payment gateway down (call {calls['flaky']})")
        return "paid"

    @app.durable_task(name="pay", retries=3, **FAST)  # type: ignore[arg-type]
    async def pay(input: Any, ctx: DurableContext) -> list[str]:
        return [await ctx.step("reserve", before), await ctx.step("charge", flaky)]

    async with app.worker("w", slots=1):
        ref = await pay.run_no_wait({})
        assert await ref.result(timeout=15) == ["reserved", "paid"]
    assert calls == {"before": 1, "flaky": 3}
    info = await app.runs.get(ref.run_id)
    failures = [e.data for e in info.events if e.type == "run.attempt_failed.v1"]
    assert [f["attempt"] for f in failures] == [1, 2]
    assert all(f["error"]["type"] == "ConnectionError" for f in failures)
    assert "call 2" in failures[1]["error"]["message"]
    assert info.attempt == 3
    gap = failures[1]["retry_at"] - failures[1]["at"]
    assert gap == pytest.approx(0.1, abs=0.01)  # backoff doubled for the second retry


async def test_retries_exhausted_and_non_retryable(app: Tether, server: TetherServer) -> None:
    @app.durable_task(name="always-fails", retries=2, **FAST)  # type: ignore[arg-type]
    async def always_fails(input: Any, ctx: DurableContext) -> None:
        raise ValueError("bad data")

    @app.durable_task(name="refuses", retries=5, **FAST)  # type: ignore[arg-type]
    async def refuses(input: Any, ctx: DurableContext) -> None:
        raise NonRetryableError("card reported stolen")

    async with app.worker("w", slots=2):
        exhausted = await always_fails.run_no_wait({})
        refused = await refuses.run_no_wait({})
        with pytest.raises(RunFailedError, match="bad data"):
            await exhausted.result(timeout=15)
        with pytest.raises(RunFailedError, match="card reported stolen") as caught:
            await refused.result(timeout=15)
    assert caught.value.error_type == "NonRetryableError"
    assert (await app.runs.get(exhausted.run_id)).attempt == 3
    refused_info = await app.runs.get(refused.run_id)
    assert refused_info.attempt == 1
    assert not any(e.type == "run.attempt_failed.v1" for e in refused_info.events)


async def test_schedule_timeout_when_no_worker_picks_up(app: Tether, server: TetherServer) -> None:
    @app.durable_task(name="unserved", schedule_timeout=timedelta(milliseconds=300))
    async def unserved(input: Any, ctx: DurableContext) -> None:
        return None

    ref = await unserved.run_no_wait({})  # no worker runs this task
    with pytest.raises(RunTimeoutError, match="no worker started the run"):
        await ref.result(timeout=15)


async def test_refresh_timeout_extends_a_running_task(app: Tether, server: TetherServer) -> None:
    @app.durable_task(name="long", execution_timeout=timedelta(seconds=1))
    async def long(input: Any, ctx: DurableContext) -> str:
        await ctx.refresh_timeout(timedelta(seconds=5))
        await asyncio.sleep(1.3)  # past the original deadline, within the refreshed one
        return "finished"

    async with app.worker("w", slots=1):
        ref = await long.run_no_wait({})
        assert await ref.result(timeout=15) == "finished"
    info = await app.runs.get(ref.run_id)
    refreshed = [e for e in info.events if e.type == "run.timeout_refreshed.v1"]
    assert refreshed[0].data["execution_timeout_s"] == 6.0


async def test_parent_waits_for_child_that_waits_for_approval(
    app: Tether, server: TetherServer
) -> None:
    spawned: list[str] = []

    @app.durable_task(name="child-approval")
    async def child(input: dict[str, Any], ctx: DurableContext) -> dict[str, Any]:
        spawned.append(ctx.run_id) if ctx.attempt == 1 else None
        decision = await ctx.wait_for_event("approval:decision", f"input.runId == '{ctx.run_id}'")
        return {"item": input["item"], "decision": decision["decision"]}

    @app.durable_task(name="parent")
    async def parent(input: Any, ctx: DurableContext) -> dict[str, Any]:
        ref = await child.run_no_wait({"item": "laptop"})
        outcome = await ref.result()
        return {"child": ref.run_id, "outcome": outcome}

    async with app.worker("w", slots=2) as worker:
        ref = await parent.run_no_wait({})
        await wait_for_status(app, ref.run_id, "waiting")
        child_id = f"{ref.run_id}-c0"
        await wait_for_status(app, child_id, "waiting")
        assert worker.active == 0  # parent and child both wait without slots
        await app.events.push("approval:decision", {"runId": child_id, "decision": "approve"})
        result = await ref.result(timeout=15)
    assert result == {"child": child_id, "outcome": {"item": "laptop", "decision": "approve"}}
    assert spawned == [child_id]  # one child across the parent's replays
    parent_info = await app.runs.get(ref.run_id)
    assert len(attempt_workers(parent_info)) == 2


async def test_failed_child_raises_in_parent(app: Tether, server: TetherServer) -> None:
    @app.durable_task(name="bad-child")
    async def bad_child(input: Any, ctx: DurableContext) -> None:
        raise RuntimeError("child broke")

    @app.durable_task(name="catching-parent")
    async def catching_parent(input: Any, ctx: DurableContext) -> str:
        try:
            await bad_child.run({})
        except RunFailedError as exc:
            return f"caught {exc.error_type}: {exc.error_message}"
        return "no error"

    async with app.worker("w", slots=2):
        assert await catching_parent.run({}, timeout=15) == "caught RuntimeError: child broke"


async def test_sleep_survives_worker_restart(settings: Settings, server: TetherServer) -> None:
    def define(app: Tether) -> Any:
        @app.durable_task(name="nap")
        async def nap(input: Any, ctx: DurableContext) -> float:
            start = await ctx.now()
            await ctx.sleep_for(timedelta(seconds=1))
            return (await ctx.now()).timestamp() - start.timestamp()

        return nap

    first, second = Tether(settings=settings), Tether(settings=settings)
    try:
        nap = define(first)
        async with first.worker("first", slots=1):
            ref = await nap.run_no_wait({})
            await wait_for_status(first, ref.run_id, "waiting")
        began = time.time()
        define(second)
        async with second.worker("second", slots=1):  # a new worker after the restart
            slept = await second.runs.result(ref.run_id, timeout=15)
        assert slept >= 1.0
        assert time.time() - began < 5
        info = await second.runs.get(ref.run_id)
        assert [w.split("@")[0] for w in attempt_workers(info)] == ["first", "second"]
    finally:
        await first.close()
        await second.close()
