"""Waiting for a run's result: a notice on the run's terminal subject wakes the waiter at
once, but the result must not depend on it. Notices are core NATS messages, lost while a
client is disconnected or subscribing, so a waiter that misses one still has to return."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tether import RunCancelledError, Tether
from tether.client import MAX_RECHECK_S
from tether.engine.config import Settings


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
