"""Wait timeouts, execution timeouts, and the race between an event and a timeout.

Invariant 2: a matching event and a timeout racing for one wait produce one resolution,
and the task sees that one.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import pytest

from tests.helpers import attempt_workers, wait_for_status, wait_until
from tether import (
    DurableContext,
    DurableTask,
    RunRef,
    RunTimeoutError,
    Tether,
    WaitTimeoutError,
)
from tether.engine.commands import CommandMessage
from tether.engine.dispatch import send_command
from tether.serve import TetherServer

KEY = "approval:decision"
RESOLUTIONS = ("run.wait_satisfied.v1", "run.wait_timed_out.v1")


def define(app: Tether, seen: list[str] | None = None) -> DurableTask[Any, Any]:
    """Waits for this run's decision with ``input.timeout_ms`` (None: no wait timeout)."""

    @app.durable_task(name="approval", execution_timeout=timedelta(minutes=2))
    async def approval(input: dict[str, Any], ctx: DurableContext) -> dict[str, Any]:
        timeout_ms = input.get("timeout_ms")
        try:
            decision = await ctx.wait_for_event(
                KEY,
                expression=f"input.runId == '{ctx.run_id}'",
                timeout=timedelta(milliseconds=timeout_ms) if timeout_ms else None,
            )
        except WaitTimeoutError as exc:
            if seen is not None:
                seen.append(str(exc))
            return {"status": "expired"}
        return {"status": "decided", "decision": decision["decision"]}

    return approval


def resolutions(events: list[Any]) -> list[str]:
    return [e.type for e in events if e.type in RESOLUTIONS]


async def wait_started(app: Tether, ref: RunRef) -> dict[str, Any]:
    info = await wait_for_status(app, ref.run_id, "waiting")
    return next(e.data | {"seq": e.seq} for e in info.events if e.type == "run.wait_started.v1")


async def test_wait_timeout_takes_the_expired_branch(app: Tether, server: TetherServer) -> None:
    seen: list[str] = []
    task = define(app, seen)
    async with app.worker("w", slots=2):
        started = time.monotonic()
        ref = await task.run_no_wait({"timeout_ms": 300})
        assert await ref.result(timeout=15) == {"status": "expired"}
        elapsed = time.monotonic() - started
    assert elapsed >= 0.3
    assert len(seen) == 1 and KEY in seen[0]  # the task itself saw WaitTimeoutError
    info = await app.runs.get(ref.run_id)
    assert info.status == "completed"
    assert [e.type for e in info.events] == [
        "run.requested.v1",
        "run.wait_started.v1",
        "run.wait_timed_out.v1",
        "run.completed.v1",
    ]
    assert len(attempt_workers(info)) == 2  # the attempt that waited, the one that resumed


async def test_execution_timeout_while_waiting(app: Tether, server: TetherServer) -> None:
    @app.durable_task(name="patient", execution_timeout=timedelta(seconds=1))
    async def patient(input: dict[str, Any], ctx: DurableContext) -> str:
        await ctx.wait_for_event(KEY, expression=f"input.runId == '{ctx.run_id}'")
        return "decided"

    async with app.worker("w", slots=1) as worker:
        started = time.monotonic()
        ref = await patient.run_no_wait({})
        await wait_for_status(app, ref.run_id, "waiting")

        async def slot_free() -> bool:
            return worker.active == 0

        await wait_until(slot_free, message="the suspended run to give its slot back")
        assert (await app.runs.get(ref.run_id)).status == "waiting"  # freed while waiting

        with pytest.raises(RunTimeoutError) as caught:
            await ref.result(timeout=15)
        elapsed = time.monotonic() - started
        assert worker.active == 0
    assert elapsed >= 1.0
    assert caught.value.status == "timed_out"
    assert "execution timeout" in caught.value.error_message
    info = await app.runs.get(ref.run_id)
    assert info.status == "timed_out"
    assert [e.type for e in info.events][-1] == "run.timed_out.v1"
    assert resolutions(info.events) == []  # the wait was never resolved

    timer = server.timer
    assert timer is not None

    async def deadlines_cleared() -> bool:
        return timer.pending == 0

    await wait_until(deadlines_cleared, message="the run's deadline to be removed")


async def test_execution_timeout_while_running(app: Tether, server: TetherServer) -> None:
    cancelled: list[bool] = []

    async def slow() -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        return "done"

    @app.durable_task(name="slow", execution_timeout=timedelta(seconds=1))
    async def slow_task(input: dict[str, Any], ctx: DurableContext) -> str:
        return str(await ctx.step("slow", slow))

    @app.durable_task(name="quick")
    async def quick(input: dict[str, Any], ctx: DurableContext) -> str:
        return "quick"

    async with app.worker("w", slots=1) as worker:
        started = time.monotonic()
        ref = await slow_task.run_no_wait({})
        await wait_for_status(app, ref.run_id, "running")
        assert worker.active == 1
        with pytest.raises(RunTimeoutError):
            await ref.result(timeout=15)
        elapsed = time.monotonic() - started

        async def slot_free() -> bool:
            return worker.active == 0

        await wait_until(slot_free, timeout=5, message="the timed-out attempt to free its slot")
        assert cancelled == [True]  # the step was interrupted, not left running
        # the only slot runs new work again
        assert await quick.run({}, timeout=15) == "quick"
    assert 1.0 <= elapsed < 10
    info = await app.runs.get(ref.run_id)
    assert info.status == "timed_out"
    types = [e.type for e in info.events]
    assert types.count("run.timed_out.v1") == 1
    assert "run.step.v1" not in types  # the interrupted step recorded nothing


async def test_event_and_timeout_race_resolves_once(app: Tether, server: TetherServer) -> None:
    """Events pushed around the wait's timeout instant: each run resolves exactly once."""
    task = define(app)
    timeout_ms = 600
    # 20 trials within 40 ms of the deadline (a true race), plus anchors well before and
    # after it so both outcomes are sure to occur.
    offsets = [-0.04 + 0.08 * i / 19 for i in range(20)] + [-0.35, -0.3, 0.4, 0.45]

    async def trial(offset: float) -> tuple[str, dict[str, Any]]:
        ref = await task.run_no_wait({"timeout_ms": timeout_ms})
        wait = await wait_started(app, ref)
        # scheduling the push at the deadline, not waiting for an outcome
        await asyncio.sleep(max(0.0, wait["timeout_at"] + offset - time.time()))
        await app.events.push(KEY, {"runId": ref.run_id, "decision": "approve"})
        output = await ref.result(timeout=15)
        return ref.run_id, output

    async with app.worker("w", slots=4):
        results = await asyncio.gather(*(trial(offset) for offset in offsets))

    outcomes: dict[str, int] = {}
    for run_id, output in results:
        info = await app.runs.get(run_id)
        assert info.status == "completed"
        resolved = resolutions(info.events)
        assert len(resolved) == 1, (run_id, resolved)
        expected = (
            {"status": "decided", "decision": "approve"}
            if resolved[0] == "run.wait_satisfied.v1"
            else {"status": "expired"}
        )
        assert output == expected == info.output
        outcomes[resolved[0]] = outcomes.get(resolved[0], 0) + 1
    assert set(outcomes) == set(RESOLUTIONS), outcomes


def race_commands(run_id: str, wait: dict[str, Any], *, with_seq: bool) -> list[CommandMessage]:
    common: dict[str, Any] = {
        "run_id": run_id,
        "task": "approval",
        "wait_id": wait["wait_id"],
        "wait_seq": wait["seq"] if with_seq else None,
    }
    return [
        CommandMessage(
            kind="resume",
            event_key=KEY,
            event_seq=1,
            payload={"runId": run_id, "decision": "approve"},
            **common,
        ),
        CommandMessage(kind="expire_wait", **common),
    ]


async def check_resolved_once(app: Tether, ref: RunRef) -> str:
    output = await ref.result(timeout=15)
    info = await app.runs.get(ref.run_id)
    resolved = resolutions(info.events)
    assert len(resolved) == 1, resolved
    if resolved[0] == "run.wait_satisfied.v1":
        assert output == {"status": "decided", "decision": "approve"}
    else:
        assert output == {"status": "expired"}
    assert [e.type for e in info.events].count("run.completed.v1") == 1
    return resolved[0]


@pytest.mark.parametrize("with_seq", [True, False], ids=["fast-path", "full-decision"])
async def test_engine_applies_one_of_resume_and_expire(
    app: Tether, server: TetherServer, with_seq: bool
) -> None:
    """Both commands for one wait applied at the same moment: the log's OCC lets one in."""
    task = define(app)
    engine = server.engine
    assert engine is not None
    outcomes = set()
    async with app.worker("w", slots=2):
        for i in range(8):
            ref = await task.run_no_wait({"timeout_ms": 3_600_000})
            wait = await wait_started(app, ref)
            commands = race_commands(ref.run_id, wait, with_seq=with_seq)
            if i % 2:
                commands.reverse()
            seqs = await asyncio.gather(*(engine.apply(c) for c in commands))
            assert sum(seq is not None for seq in seqs) == 1, seqs
            outcomes.add(await check_resolved_once(app, ref))
            # Applying both again (a redelivery) changes nothing: neither applies any more
            # (the winner's write is already in the log, and its dispatch with it).
            before = len((await app.runs.get(ref.run_id)).events)
            again = [await engine.apply(c) for c in commands]
            assert again == [None, None]
            assert len((await app.runs.get(ref.run_id)).events) == before
    assert outcomes  # each trial resolved; which one won is up to the race


async def test_resume_and_expire_commands_published_together(
    app: Tether, server: TetherServer
) -> None:
    """The same race through the command stream, as the matcher and the timer publish."""
    task = define(app)
    conn = await app.connection()
    async with app.worker("w", slots=2):
        refs = [await task.run_no_wait({"timeout_ms": 3_600_000}) for _ in range(6)]
        waits = [await wait_started(app, ref) for ref in refs]
        await asyncio.gather(
            *(
                send_command(conn.js, conn.settings.names, command)
                for ref, wait in zip(refs, waits, strict=True)
                for command in race_commands(ref.run_id, wait, with_seq=True)
            )
        )
        for ref in refs:
            await check_resolved_once(app, ref)
