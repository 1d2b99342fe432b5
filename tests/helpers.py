"""Waiting helpers: poll a condition with a deadline instead of sleeping a fixed time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from tether import Tether

T = TypeVar("T")


async def wait_until(
    check: Callable[[], Awaitable[T]],
    *,
    timeout: float = 15.0,
    interval: float = 0.02,
    message: str = "condition",
) -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        await asyncio.sleep(interval)


async def wait_for_status(app: Tether, run_id: str, status: str, timeout: float = 15.0) -> Any:
    async def check() -> Any:
        info = await app.runs.get(run_id)
        return info if info.status == status else None

    return await wait_until(check, timeout=timeout, message=f"run {run_id} to be {status}")


def attempt_workers(info: Any) -> list[str]:
    """The worker of each attempt of a run (a ``RunInfo``), in order: an attempt names its
    worker once, in its run.started or, when it recorded no start, in its first write."""
    return [event.data["worker"] for event in info.events if event.data.get("worker")]
