"""The pure run state machine and replay, on the in-memory store (no NATS)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from tether import DurableContext, Tether
from tether.engine import events as ev
from tether.engine.decide import CancelRun, ExpireRun, ExpireWait, ResolveWait, decide
from tether.engine.state import RunState, evolve, fold
from tether.engine.store import ConcurrencyConflictError, InMemoryEventStore
from tether.runtime.executor import run_attempt


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
    seq = await store.append(requested(), expected_last_seq=0)
    assert await store.append(requested(), expected_last_seq=0) == seq  # retry
    with pytest.raises(ConcurrencyConflictError):  # another writer's request
        await store.append(requested(at=200.0), expected_last_seq=0)


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
    await store.append(requested(at=1e12), expected_last_seq=0)
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
    await store.append(satisfied, expected_last_seq=state.last_seq)
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
    await store.append(requested(at=1e12), expected_last_seq=0)
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
    assert await store.append(satisfied, expected_last_seq=state.last_seq) == ahead
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
    await store.append(requested(at=1e12), expected_last_seq=0)
    await run_attempt(first, store, "r1", worker_id="w", events_position=_position)
    state = fold("r1", await store.read("r1"))
    wait = state.open_wait()
    assert wait is not None
    [satisfied] = decide(state, resolve(wait.wait_id), now=1e12)
    await store.append(satisfied, expected_last_seq=state.last_seq)

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
    await store.append(requested(at=0.0, timeout=1.0), expected_last_seq=0)
    result = await run_attempt(flow, store, "r1", worker_id="w", events_position=_position)
    assert result.outcome == "timed_out" and ran == []
    assert fold("r1", await store.read("r1")).status == "timed_out"


async def test_invalid_expression_fails_the_task_with_a_clear_error() -> None:
    app = Tether(nats_url="nats://unused:4222")

    @app.durable_task(name="t")
    async def flow(input: Any, ctx: DurableContext) -> None:
        await ctx.wait_for_event("k", "input.runId ==")

    store = InMemoryEventStore()
    await store.append(requested(at=1e12), expected_last_seq=0)
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


# -- events the run does not take: only the running attempt moves a run ---------------------


def started(attempt: int = 1) -> ev.AttemptStarted:
    return ev.AttemptStarted(run_id="r1", at=100.5, attempt=attempt, worker="w")


def waiting_run() -> RunState:
    """Run r1 requested, started, and suspended on wait r1:0 (seq 3)."""
    return fold("r1", [(1, requested()), (2, started()), (3, wait_started())])


def forged() -> list[ev.RunEvent]:
    """Worker-kind events a credential holder might append to someone else's run."""
    return [
        ev.RunCompleted(run_id="r1", at=200.0, output="forged"),
        ev.RunFailed(run_id="r1", at=200.0, error=ev.ErrorInfo(type="X", message="forged")),
        ev.StepRecorded(run_id="r1", at=200.0, position=5, name="forged", output=1),
        wait_started(position=7),
        ev.TimeoutRefreshed(run_id="r1", at=200.0, execution_timeout_s=1e9),
        ev.AttemptFailed(
            run_id="r1", at=200.0, attempt=9, error=ev.ErrorInfo(type="X", message="m"), retry_at=1
        ),
        ev.EventRejected(run_id="r1", at=200.0, wait_id="r1:0", event_seq=1, payload={}, error="e"),
    ]


def test_worker_events_do_not_move_a_waiting_run() -> None:
    state = waiting_run()
    seq = state.last_seq
    for event in [*forged(), started(attempt=2)]:
        seq += 1
        evolve(state, event, seq)
        assert state.status == "waiting", event.type
    assert state.last_seq == seq  # the log position still moves: appends stay in step (OCC)
    assert [e["seq"] for e in state.ignored] == list(range(4, seq + 1))
    assert {e["status"] for e in state.ignored} == {"waiting"}
    assert state.was_ignored(4) and not state.was_ignored(3)
    assert state.execution_timeout_s == 60.0 and state.output is None and state.rejected == []
    wait = state.open_wait()
    assert wait is not None and wait.wait_id == "r1:0" and len(state.records) == 1
    # the real decision still resolves the real wait, and the next attempt completes the run
    [satisfied] = decide(state, resolve(), now=300.0)
    evolve(state, satisfied, seq + 1)
    evolve(state, started(attempt=2), seq + 2)
    evolve(state, ev.RunCompleted(run_id="r1", at=301.0, output="real"), seq + 3)
    assert state.status == "completed" and state.output == "real"


def test_a_queued_run_takes_an_attempt_write_as_the_next_attempt_s_start() -> None:
    """Queued again (its wait resolved, or a retry pending): the next attempt may begin
    with its first write instead of a run.started (a resumed attempt that ends at once
    writes only its outcome); the fold counts the attempt from that write."""
    state = waiting_run()
    [satisfied] = decide(state, resolve(), now=300.0)
    evolve(state, satisfied, 4)
    evolve(state, ev.RunCompleted(run_id="r1", at=301.0, output="done", worker="w2"), 5)
    assert (state.status, state.output, state.attempt) == ("completed", "done", 2)
    assert state.started_seq == 5 and state.ignored == []

    retrying = fold("r1", [(1, requested()), (2, started())])
    error = ev.ErrorInfo(type="X", message="m")
    evolve(retrying, ev.AttemptFailed(run_id="r1", at=1, attempt=1, error=error, retry_at=9), 3)
    assert (retrying.status, retrying.in_attempt) == ("queued", False)
    evolve(retrying, ev.StepRecorded(run_id="r1", at=2, position=0, name="s", output=1), 4)
    assert (retrying.status, retrying.attempt, retrying.started_seq) == ("running", 2, 4)
    assert retrying.in_attempt and retrying.retry_at is None
    evolve(retrying, ev.WaitStarted(**wait_started(1).model_dump(exclude={"type"})), 5)
    assert (retrying.status, retrying.attempt) == ("waiting", 2)  # the same attempt goes on
    evolve(retrying, ev.RunFailed(run_id="r1", at=3, error=error), 6)
    assert retrying.status == "waiting" and retrying.was_ignored(6)


def test_finished_runs_record_late_writes_as_ignored() -> None:
    state = fold(
        "r1", [(1, requested()), (2, started()), (3, ev.RunCompleted(run_id="r1", at=5, output=1))]
    )
    late: list[ev.RunEvent] = [ev.RunCancelled(run_id="r1", at=6, reason="x"), started(2)]
    for seq, event in enumerate(late, 4):
        evolve(state, event, seq)
    assert state.status == "completed" and state.output == 1
    assert [(e["seq"], e["reason"]) for e in state.ignored] == [
        (4, "the run already ended completed"),
        (5, "the run already ended completed"),
    ]


def test_a_second_request_or_another_runs_event_is_ignored() -> None:
    state = fold("r1", [(1, requested()), (2, started())])
    again = ev.RunRequested(run_id="r1", at=1.0, task="other", input="x", execution_timeout_s=1e9)
    evolve(state, again, 3)
    evolve(state, ev.RunCompleted(run_id="r2", at=5, output="not r1's"), 4)
    assert (state.task, state.input, state.status, state.execution_timeout_s) == (
        "t",
        {"x": 1},
        "running",
        60.0,
    )
    assert [e["seq"] for e in state.ignored] == [3, 4]
    # a log that does not start with run.requested takes nothing
    orphan = fold("r9", [(1, ev.RunCompleted(run_id="r9", at=5, output=1))])
    assert orphan.was_ignored(1) and orphan.output is None and not orphan.exists
    assert decide(orphan, CancelRun("x"), now=6.0) == []
    evolve(orphan, ev.RunRequested(run_id="r9", at=6, task="t", input=2, execution_timeout_s=9), 2)
    assert orphan.exists and orphan.task == "t" and orphan.status == "queued"


def test_resolutions_of_a_wait_that_is_not_open_are_ignored() -> None:
    state = waiting_run()
    [satisfied] = decide(state, resolve(), now=300.0)
    evolve(state, satisfied, 4)
    evolve(state, ev.WaitTimedOut(run_id="r1", at=301.0, wait_id="r1:0"), 5)
    evolve(state, ev.WaitTimedOut(run_id="r1", at=301.0, wait_id="r1:nope"), 6)
    assert state.status == "queued" and state.records[0].outcome == "satisfied"  # type: ignore[union-attr]
    assert [e["seq"] for e in state.ignored] == [5, 6]


def test_a_resolution_of_another_registration_of_the_wait_is_ignored() -> None:
    """The engine's resolutions name the wait_started they resolve: one naming a sequence
    the run's open wait was not registered at (a forged wait_started reusing its id) is
    ignored, and the engine decides none for such a command."""
    state = waiting_run()  # wait r1:0 registered at seq 3
    evolve(state, ev.WaitTimedOut(run_id="r1", at=301.0, wait_id="r1:0", wait_seq=4), 4)
    assert state.status == "waiting" and [e["seq"] for e in state.ignored] == [4]
    assert decide(state, ExpireWait(wait_id="r1:0", wait_seq=4), now=302.0) == []
    [timed_out] = decide(state, ExpireWait(wait_id="r1:0", wait_seq=3), now=302.0)
    assert isinstance(timed_out, ev.WaitTimedOut) and timed_out.wait_seq == 3
    evolve(state, timed_out, 5)
    assert state.status == "queued" and state.records[0].outcome == "timed_out"  # type: ignore[union-attr]


async def test_lookback_resolved_by_the_attempt_itself_keeps_it_running() -> None:
    """A wait the registering attempt resolves from events stored before it (lookback) or
    a zero sleep: the attempt carries on and its later events count."""
    app = Tether(nats_url="nats://unused:4222")

    @app.durable_task(name="t")
    async def flow(input: Any, ctx: DurableContext) -> Any:
        await ctx.sleep_for(timedelta(0))
        decision = await ctx.wait_for_event("k", lookback=timedelta(minutes=5))
        return await ctx.step("after", lambda: decision)

    async def read_events(key: str, since: float, until_seq: int) -> Any:
        return [(40, {"ok": True}, "e40")]  # stored before the wait's position (42)

    store = InMemoryEventStore()
    await store.append(requested(at=1e12), expected_last_seq=0)
    result = await run_attempt(
        flow,
        store,
        "r1",
        worker_id="w",
        events_position=_position,
        read_events=read_events,
        clock=lambda: 1e12,
    )
    assert result.outcome == "completed"
    final = fold("r1", await store.read("r1"))
    assert (final.status, final.output, final.attempt, final.ignored) == (
        "completed",
        {"ok": True},
        1,
        [],
    )


def test_a_wait_resolved_after_the_attempt_suspended_needs_a_new_attempt() -> None:
    """The same resolution written by the engine (an event after the wait's position)
    leaves no attempt running."""
    state = waiting_run()
    late = ResolveWait("r1:0", "c0.0", "k", "k", 8, "e8", {"ok": True})  # 8 > position 7
    [satisfied] = decide(state, late, now=300.0)
    evolve(state, satisfied, 4)
    assert not state.in_attempt
    early = fold("r1", [(1, requested()), (2, started()), (3, wait_started())])
    [resolved] = decide(early, ResolveWait("r1:0", "c0.0", "k", "k", 7, "e7", {}), now=1.0)
    evolve(early, resolved, 4)
    assert early.in_attempt  # seq 7 <= position 7: only the attempt's own lookback sees it


def test_later_attempts_start_on_a_token_of_their_own() -> None:
    """Attempts after the first are written to ``restarted``; logs written before that
    token existed, with every attempt on ``started``, still read whole."""
    first = ev.AttemptStarted(run_id="r", at=1.0, attempt=1, worker="w")
    second = ev.AttemptStarted(run_id="r", at=2.0, attempt=2, worker="w")
    assert ev.subject_token(first) == "started"
    assert ev.subject_token(second) == ev.LATER_ATTEMPT_TOKEN == "restarted"
    for token in ("started", "restarted"):
        assert ev.decode_stored(f"t.runs.r.{token}.3", ev.encode(second)) == second
    misplaced = ev.decode_stored("t.runs.r.restarted.3", ev.encode(first))
    assert isinstance(misplaced, ev.UnusableEntry)
