"""NATS goes away for 2 s and for 15 s (SIGKILL, then a restart on the same port and store)
while about fifty runs are inside a half-second step. Once it is back, every run completes
with each of its steps recorded once, within a bounded time, and nothing resolves twice.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import pytest

from tests.chaos.report import emit, settle, tally
from tests.helpers import wait_until
from tether import DurableContext, DurableTask, Tether
from tether.client import RunInfo
from tether.engine.config import Settings
from tether.engine.nats_server import NatsServer
from tether.serve import TetherServer

pytestmark = pytest.mark.chaos

RUNS = 50
STEP_S = 0.5
FINISH_WITHIN_S = 60.0  # after NATS is back


def define_stepper(app: Tether, inside: set[int]) -> DurableTask[Any, Any]:
    async def work(n: int) -> dict[str, int]:
        inside.add(n)
        try:
            await asyncio.sleep(STEP_S)
        finally:
            inside.discard(n)
        return {"worked": n}

    def after(n: int) -> str:
        return f"after {n}"

    @app.durable_task(name="stepper", execution_timeout=timedelta(minutes=10))
    async def stepper(input: dict[str, int], ctx: DurableContext) -> dict[str, Any]:
        first = await ctx.step("work", work, input["n"])
        second = await ctx.step("after", after, input["n"])
        return {"work": first, "after": second}

    return stepper


def expected(info: RunInfo) -> str | None:
    """A completed run whose output and step records are those of one clean pass."""
    if info.status != "completed":
        return f"ended {info.status}: {info.error}"
    n = info.input["n"]
    if info.output != {"work": {"worked": n}, "after": f"after {n}"}:
        return f"wrong output {info.output!r}"
    steps = [e.data["name"] for e in info.events if e.type == "run.step.v1"]
    if steps != ["work", "after"]:
        return f"steps recorded {steps}, expected ['work', 'after']"
    return None


async def task_queue(app: Tether) -> str:
    """The stepper's work-queue consumer as NATS sees it, to tell a run whose dispatch is
    still pending (to be redelivered) from one whose dispatch was acknowledged away."""
    conn = await app.connection()
    names = conn.settings.names
    try:
        info = await conn.js.consumer_info(names.tasks_stream, names.task_consumer("stepper"))
    except Exception as exc:
        return f"task consumer unreadable ({exc!r})"
    return (
        f"task consumer: {info.num_pending} undelivered, {info.num_ack_pending} delivered "
        f"and unacknowledged, {info.num_redelivered} redelivered, {info.num_waiting} pulls"
    )


async def reconnected(app: Tether, before: int) -> None:
    conn = await app.connection()

    async def check() -> bool:
        return bool(conn.nc.is_connected and conn.nc.stats["reconnects"] > before)

    await wait_until(check, timeout=30, interval=0.1, message="the SDK to reconnect")


@pytest.mark.parametrize("outage_s", [2.0, 15.0], ids=["2s", "15s"])
async def test_nats_outage_while_steps_run(
    own_nats: NatsServer, namespace: str, outage_s: float
) -> None:
    settings = Settings(nats_url=own_nats.url, namespace=namespace)
    app = Tether(settings=settings)
    inside: set[int] = set()
    stepper = define_stepper(app, inside)
    entered: set[int] = set()
    srv = TetherServer(settings)
    try:
        await srv.start()
        async with app.worker("outage", tasks=[stepper], slots=RUNS):
            refs = await asyncio.gather(*(stepper.run_no_wait({"n": n}) for n in range(RUNS)))
            ids = [ref.run_id for ref in refs]

            async def all_entered() -> bool:
                entered.update(inside)
                return len(entered) == RUNS

            await wait_until(all_entered, timeout=30, message=f"{RUNS} runs to enter the step")
            in_step = len(inside)
            conn = await app.connection()
            reconnects = conn.nc.stats["reconnects"]

            own_nats.kill()
            await asyncio.sleep(outage_s)  # the outage itself: nothing to wait for
            await asyncio.to_thread(own_nats.start)
            back = time.monotonic()
            await reconnected(app, reconnects)
            await settle(app, ids, within=FINISH_WITHIN_S)
            took = time.monotonic() - back

            row = await tally(
                app,
                f"nats outage {outage_s:g}s",
                ids,
                expected,
                note=f"{in_step} runs inside the step at the kill; settled {took:.1f}s after "
                f"NATS came back (bound {FINISH_WITHIN_S:g}s); {await task_queue(app)}",
            )
            emit(row)
            assert in_step >= RUNS // 2, f"only {in_step} runs were inside the step at the kill"
            assert row.clean, row.explain()
    finally:
        await srv.stop()
        await app.close()
