"""When an attempt records its start (``run.started``): before its first step runs, after
it has run ``START_RECORD_AFTER_S`` without writing, or first of all when it takes a
running run over; otherwise its first write begins it and names the worker. Pure, on the
in-memory store."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.helpers import wait_until
from tether import DurableContext, Tether
from tether.engine import events as ev
from tether.engine.state import fold
from tether.engine.store import InMemoryEventStore
from tether.runtime import session
from tether.runtime.executor import run_attempt

RUN = "r1"


async def _position() -> int:
    return 7


async def requested_run() -> InMemoryEventStore:
    store = InMemoryEventStore()
    request = ev.RunRequested(run_id=RUN, at=1e12, task="t", input={}, execution_timeout_s=60.0)
    await store.append(request, expected_last_seq=0)
    return store


async def logged(store: InMemoryEventStore) -> list[ev.RunEvent]:
    return [event for _, event in await store.read(RUN)]


async def test_an_attempt_that_runs_no_step_writes_only_its_outcome() -> None:
    app = Tether(nats_url="nats://unused:4222")

    @app.durable_task(name="t")
    async def quick(input: dict[str, Any], ctx: DurableContext) -> int:
        return 42

    store = await requested_run()
    result = await run_attempt(quick, store, RUN, worker_id="w1", events_position=_position)
    assert result.outcome == "completed"
    _, completed = await logged(store)
    assert isinstance(completed, ev.RunCompleted) and completed.worker == "w1"
    state = fold(RUN, await store.read(RUN))
    assert (state.status, state.output, state.attempt, state.started_seq) == ("completed", 42, 1, 2)


async def test_the_start_is_recorded_before_the_first_step_runs() -> None:
    app = Tether(nats_url="nats://unused:4222")
    store = await requested_run()
    seen_when_the_step_ran: list[list[str]] = []

    @app.durable_task(name="t")
    async def stepping(input: dict[str, Any], ctx: DurableContext) -> int:
        async def step() -> int:
            seen_when_the_step_ran.append([e.type for e in await logged(store)])
            return 1

        return int(await ctx.step("s", step)) + int(await ctx.step("t", step))

    result = await run_attempt(stepping, store, RUN, worker_id="w1", events_position=_position)
    assert result.outcome == "completed"
    assert seen_when_the_step_ran[0] == ["run.requested.v1", "run.started.v1"]
    started = (await logged(store))[1]
    assert isinstance(started, ev.AttemptStarted)
    assert (started.attempt, started.worker) == (1, "w1")
    # only one write of the attempt names its worker: its start
    assert [getattr(e, "worker", None) for e in await logged(store)][2:] == [None] * 3


async def test_a_second_delivery_of_a_dispatch_stops_before_the_step_runs() -> None:
    """Two deliveries of one dispatch, the second working from the log as it was before the
    first wrote anything (a dispatch sent twice carries the same request): the step's
    function runs once, and the second attempt writes nothing."""
    app = Tether(nats_url="nats://unused:4222")
    calls: list[str] = []

    @app.durable_task(name="t")
    async def once(input: dict[str, Any], ctx: DurableContext) -> str:
        return str(await ctx.step("pay", lambda: calls.append("pay") or "paid"))

    store = await requested_run()
    as_dispatched = await store.read_raw(RUN)

    class StaleReads(InMemoryEventStore):
        async def read_raw(self, run_id: str) -> list[tuple[int, ev.RunEvent, dict[str, str]]]:
            return as_dispatched

    first = await run_attempt(once, store, RUN, worker_id="w1", events_position=_position)
    assert first.outcome == "completed"
    stale = StaleReads()
    stale.__dict__.update(store.__dict__)  # the same log, read as it was
    second = await run_attempt(once, stale, RUN, worker_id="w2", events_position=_position)
    assert second.outcome == "abandoned"
    assert calls == ["pay"]
    assert [e.type for e in await logged(store)] == [
        "run.requested.v1",
        "run.started.v1",
        "run.step.v1",
        "run.completed.v1",
    ]


async def test_an_attempt_busy_before_its_first_write_records_its_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(session, "START_RECORD_AFTER_S", 0.01)
    app = Tether(nats_url="nats://unused:4222")
    store = await requested_run()

    @app.durable_task(name="t")
    async def busy(input: dict[str, Any], ctx: DurableContext) -> str:
        # long work outside any step: the run shows as running meanwhile
        async def running() -> bool:
            return fold(RUN, await store.read(RUN)).status == "running"

        await wait_until(running, timeout=5.0, message="the attempt's start to be recorded")
        return "done"

    result = await run_attempt(busy, store, RUN, worker_id="w1", events_position=_position)
    assert result.outcome == "completed"
    _, started, completed = await logged(store)
    assert isinstance(started, ev.AttemptStarted) and started.worker == "w1"
    assert isinstance(completed, ev.RunCompleted) and completed.worker is None


async def test_taking_over_a_running_run_records_the_start_first() -> None:
    """A run left running by an attempt whose worker went silent: the new attempt's start,
    with the next number, is what makes the silent one's later writes conflict."""
    app = Tether(nats_url="nats://unused:4222")
    store = await requested_run()
    await store.append(
        ev.StepRecorded(run_id=RUN, at=2, position=0, name="s", output=1, worker="gone"),
        expected_last_seq=1,
    )

    @app.durable_task(name="t")
    async def resumed(input: dict[str, Any], ctx: DurableContext) -> int:
        return int(await ctx.step("s", lambda: 99))  # recorded: returns 1

    result = await run_attempt(resumed, store, RUN, worker_id="w2", events_position=_position)
    assert result.outcome == "completed"
    events = await logged(store)
    assert [e.type for e in events] == [
        "run.requested.v1",
        "run.step.v1",
        "run.started.v1",
        "run.completed.v1",
    ]
    assert isinstance(events[2], ev.AttemptStarted) and events[2].attempt == 2
    assert fold(RUN, await store.read(RUN)).output == 1


async def test_a_start_record_due_after_the_attempt_ended_is_not_written(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(session, "START_RECORD_AFTER_S", 0.0)
    app = Tether(nats_url="nats://unused:4222")

    @app.durable_task(name="t")
    async def quick(input: dict[str, Any], ctx: DurableContext) -> int:
        return 1

    store = await requested_run()
    assert (await run_attempt(quick, store, RUN, worker_id="w", events_position=_position)).outcome
    await asyncio.sleep(0)  # let a timer due now run, if one was left behind
    assert [e.type for e in await logged(store)] == ["run.requested.v1", "run.completed.v1"]
