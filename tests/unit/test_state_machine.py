"""The pure run state machine and replay, on the in-memory store (no NATS)."""

from __future__ import annotations

from typing import Any

import pytest

from tether import DurableContext, Tether
from tether.attempt import run_attempt
from tether.engine import events as ev
from tether.engine.state import (
    CancelRun,
    ExpireRun,
    ExpireWait,
    ResolveWait,
    RunState,
    decide,
    evolve,
    fold,
)
from tether.engine.store import ConcurrencyConflictError, InMemoryEventStore


def requested(run_id: str = "r1", timeout: float = 60.0, at: float = 100.0) -> ev.RunRequested:
    return ev.RunRequested(
        run_id=run_id, at=at, task="t", input={"x": 1}, execution_timeout_s=timeout
    )


def wait_started(position: int = 0) -> ev.WaitStarted:
    spec = ev.ConditionSpec(id="c0.0", key="k", kind="event", event_key="k")
    return ev.WaitStarted(
        run_id="r1",
        at=101.0,
        position=position,
        wait_id=f"r1:{position}",
        task="t",
        event_key="k",
        expression=None,
        events_position=7,
        timeout_at=None,
        clauses=[[spec]],
    )


def conditions_wait(label: str, clauses: list[list[ev.ConditionSpec]]) -> ev.WaitStarted:
    """``ctx.wait_for(label, ...)`` recorded at position 0 of run r1."""
    return ev.WaitStarted(
        run_id="r1",
        at=1.0,
        position=0,
        wait_id="r1:0",
        task="t",
        event_key="k",
        expression=None,
        events_position=0,
        timeout_at=None,
        kind="conditions",
        label=label,
        clauses=clauses,
    )


def resolve(wait_id: str = "r1:0") -> ResolveWait:
    return ResolveWait(
        wait_id=wait_id,
        condition_id="c0.0",
        condition_key="k",
        event_key="k",
        event_seq=9,
        event_id="e",
        payload={"ok": True},
    )


def test_fold_tracks_status_through_a_wait() -> None:
    state = fold(
        "r1",
        [
            (1, requested()),
            (2, ev.AttemptStarted(run_id="r1", at=100.5, attempt=1, worker="w")),
            (3, wait_started()),
        ],
    )
    assert state.status == "waiting"
    assert state.open_wait() is not None and state.open_wait().started_seq == 3  # type: ignore[union-attr]
    assert state.deadline == 160.0
    [satisfied] = decide(state, resolve(), now=102.0)
    evolve(state, satisfied, 4)
    assert state.status == "queued" and state.runnable_since_seq == 4
    assert state.open_wait() is None


def test_wait_resolves_at_most_once() -> None:
    state = fold("r1", [(1, requested()), (2, wait_started())])
    [timed_out] = decide(state, ExpireWait("r1:0"), now=103.0)
    evolve(state, timed_out, 3)
    assert decide(state, resolve(), now=104.0) == []  # the event lost the race: no-op
    assert decide(state, ExpireWait("r1:0"), now=104.0) == []


def test_terminal_runs_take_no_commands() -> None:
    state = fold("r1", [(1, requested()), (2, ev.RunCompleted(run_id="r1", at=5, output=1))])
    for command in (resolve(), ExpireWait("r1:0"), ExpireRun("x"), CancelRun("y")):
        assert decide(state, command, now=6.0) == []
    # a late write after the end changes nothing
    evolve(state, ev.RunFailed(run_id="r1", at=7, error=ev.ErrorInfo(type="X", message="m")), 3)
    assert state.status == "completed" and state.output == 1


def test_and_of_two_conditions_needs_both() -> None:
    a = ev.ConditionSpec(id="c0.0", key="alice", kind="event", event_key="k")
    b = ev.ConditionSpec(id="c1.0", key="bob", kind="event", event_key="k")
    started = conditions_wait("two", [[a], [b]])
    state = fold("r1", [(1, requested()), (2, started)])
    first = ResolveWait("r1:0", "c0.0", "alice", "k", 5, None, {"by": "alice"})
    [met] = decide(state, first, now=2.0)
    assert isinstance(met, ev.WaitConditionMet)
    evolve(state, met, 3)
    assert state.status == "waiting"
    assert decide(state, first, now=2.0) == []  # the same condition again: nothing
    [done] = decide(state, ResolveWait("r1:0", "c1.0", "bob", "k", 6, None, {"by": "bob"}), 3.0)
    assert isinstance(done, ev.WaitSatisfied)
    assert done.fired == ["alice", "bob"]
    assert done.payloads == {"alice": {"by": "alice"}, "bob": {"by": "bob"}}


def test_or_group_resolves_on_first_alternative() -> None:
    event = ev.ConditionSpec(id="c0.0", key="approval", kind="event", event_key="k")
    sleep = ev.ConditionSpec(id="c0.1", key="escalate", kind="sleep", due_at=50.0)
    started = conditions_wait("x", [[event, sleep]])
    state = fold("r1", [(1, requested()), (2, started)])
    [done] = decide(state, ResolveWait("r1:0", "c0.1", "escalate"), now=51.0)
    assert isinstance(done, ev.WaitSatisfied) and done.fired == ["escalate"]
    evolve(state, done, 3)
    assert decide(state, ResolveWait("r1:0", "c0.0", "approval", "k", 9, None, {}), 52.0) == []


def test_unknown_run_takes_no_commands() -> None:
    assert decide(RunState(run_id="nope"), CancelRun("x"), now=1.0) == []


def test_events_round_trip_and_reject_garbage() -> None:
    event = wait_started()
    assert ev.decode(ev.encode(event)) == event
    with pytest.raises(ev.EventDecodeError):
        ev.decode(b'{"type": "run.unknown.v9", "run_id": "r1", "at": 1}')
    with pytest.raises(ev.EventDecodeError):
        ev.decode(b"not json")


async def test_in_memory_store_occ_and_idempotent_retry() -> None:
    store = InMemoryEventStore()
    seq = await store.append(requested(), expected_last_seq=0, msg_id="a")
    assert await store.append(requested(), expected_last_seq=0, msg_id="a") == seq  # retry
    with pytest.raises(ConcurrencyConflictError):
        await store.append(requested(), expected_last_seq=0, msg_id="b")


# -- replay through run_attempt on the in-memory store --------------------------------------


async def _position() -> int:
    return 42


async def test_replay_runs_each_step_once_and_suspends_on_wait() -> None:
    app = Tether(nats_url="nats://unused:4222")
    calls: list[str] = []

    @app.durable_task(name="t")
    async def flow(input: dict[str, Any], ctx: DurableContext) -> dict[str, Any]:
        a = await ctx.step("a", lambda: calls.append("a") or {"n": 1})
        decision = await ctx.wait_for_event("k", "input.ok == true")
        return {"a": a, "decision": decision}

    store = InMemoryEventStore()
    await store.append(requested(at=1e12), expected_last_seq=0, msg_id="req")
    result = await run_attempt(flow, store, "r1", worker_id="w", events_position=_position)
    assert result.outcome == "suspended"
    state = fold("r1", await store.read("r1"))
    assert state.status == "waiting"
    wait = state.open_wait()
    assert wait is not None and wait.events_position == 42 and wait.expression == "input.ok == true"

    # a duplicate dispatch while waiting does nothing
    assert (
        await run_attempt(flow, store, "r1", worker_id="w", events_position=_position)
    ).outcome == "skipped"

    [satisfied] = decide(state, resolve(wait.wait_id), now=1e12)
    await store.append(satisfied, expected_last_seq=state.last_seq, msg_id="sat")
    result = await run_attempt(flow, store, "r1", worker_id="w", events_position=_position)
    assert result.outcome == "completed"
    final = fold("r1", await store.read("r1"))
    assert final.output == {"a": {"n": 1}, "decision": {"ok": True}}
    assert calls == ["a"]  # the step ran once across suspend and resume
    assert final.attempt == 2


async def test_read_behind_the_dispatch_is_retried_not_taken_for_waiting() -> None:
    """A dispatch names the sequence that made the run runnable; a read that has not reached
    it yet (a lagging replica) must not skip the run as still waiting."""
    app = Tether(nats_url="nats://unused:4222")

    @app.durable_task(name="t")
    async def flow(input: Any, ctx: DurableContext) -> str:
        await ctx.wait_for_event("k")
        return "resumed"

    store = InMemoryEventStore()
    await store.append(requested(at=1e12), expected_last_seq=0, msg_id="req")
    await run_attempt(flow, store, "r1", worker_id="w", events_position=_position)
    state = fold("r1", await store.read("r1"))
    wait = state.open_wait()
    assert wait is not None and state.status == "waiting"

    ahead = state.last_seq + 1  # the resolution the dispatch was sent for, not readable yet
    result = await run_attempt(
        flow, store, "r1", worker_id="w", events_position=_position, dispatched_seq=ahead
    )
    assert result.outcome == "behind" and f"dispatched at {ahead}" in result.detail
    assert fold("r1", await store.read("r1")).last_seq == state.last_seq  # nothing written

    [satisfied] = decide(state, resolve(wait.wait_id), now=1e12)
    assert await store.append(satisfied, expected_last_seq=state.last_seq, msg_id="sat") == ahead
    result = await run_attempt(
        flow, store, "r1", worker_id="w", events_position=_position, dispatched_seq=ahead
    )
    assert result.outcome == "completed"
    assert fold("r1", await store.read("r1")).output == "resumed"


async def test_replay_detects_reordered_calls() -> None:
    app = Tether(nats_url="nats://unused:4222")

    @app.durable_task(name="t")
    async def first(input: Any, ctx: DurableContext) -> None:
        await ctx.step("a", lambda: 1)
        await ctx.wait_for_event("k")

    store = InMemoryEventStore()
    await store.append(requested(at=1e12), expected_last_seq=0, msg_id="req")
    await run_attempt(first, store, "r1", worker_id="w", events_position=_position)
    state = fold("r1", await store.read("r1"))
    wait = state.open_wait()
    assert wait is not None
    [satisfied] = decide(state, resolve(wait.wait_id), now=1e12)
    await store.append(satisfied, expected_last_seq=state.last_seq, msg_id="sat")

    other = Tether(nats_url="nats://unused:4222")

    @other.durable_task(name="t")
    async def second(input: Any, ctx: DurableContext) -> None:
        await ctx.step("b", lambda: 1)

    result = await run_attempt(second, store, "r1", worker_id="w", events_position=_position)
    assert result.outcome == "failed"
    final = fold("r1", await store.read("r1"))
    assert final.error is not None and final.error["type"] == "NonDeterminismError"


async def test_expired_run_is_timed_out_without_running() -> None:
    app = Tether(nats_url="nats://unused:4222")
    ran: list[int] = []

    @app.durable_task(name="t")
    async def flow(input: Any, ctx: DurableContext) -> None:
        ran.append(1)

    store = InMemoryEventStore()
    await store.append(requested(at=0.0, timeout=1.0), expected_last_seq=0, msg_id="req")
    result = await run_attempt(flow, store, "r1", worker_id="w", events_position=_position)
    assert result.outcome == "timed_out" and ran == []
    assert fold("r1", await store.read("r1")).status == "timed_out"


async def test_invalid_expression_fails_the_task_with_a_clear_error() -> None:
    app = Tether(nats_url="nats://unused:4222")

    @app.durable_task(name="t")
    async def flow(input: Any, ctx: DurableContext) -> None:
        await ctx.wait_for_event("k", "input.runId ==")

    store = InMemoryEventStore()
    await store.append(requested(at=1e12), expected_last_seq=0, msg_id="req")
    result = await run_attempt(flow, store, "r1", worker_id="w", events_position=_position)
    assert result.outcome == "failed"
    error = fold("r1", await store.read("r1")).error
    assert error is not None and error["type"] == "InvalidExpressionError"
    assert "input.runId ==" in error["message"]


def test_public_exports_are_pinned() -> None:
    import tether

    assert set(tether.__all__) >= {
        "Tether",
        "DurableContext",
        "WaitTimeoutError",
        "RunFailedError",
        "RunTimeoutError",
        "NonDeterminismError",
    }
    for name in tether.__all__:
        assert hasattr(tether, name), name
