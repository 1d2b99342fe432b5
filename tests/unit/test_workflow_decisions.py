"""Workflow runs on the in-memory store (no NATS): what the pure decisions say of each
task, and whole runs driven attempt by attempt with the engine's resolutions in between."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from tether import (
    ParentCondition,
    SleepCondition,
    TaskContext,
    Tether,
    UserEventCondition,
    Workflow,
    or_,
)
from tether.engine import events as ev
from tether.engine.decide import ResolveWait, decide
from tether.engine.expressions import InvalidExpressionError
from tether.engine.run_binding import bind_run, cel_literal
from tether.engine.state import RunState, fold
from tether.engine.store import InMemoryEventStore
from tether.engine.workflow_decisions import decide_task, task_statuses
from tether.engine.workflow_graph import CANCEL_KEY_PREFIX, WorkflowGraph
from tether.runtime.executor import AttemptResult, run_attempt

KEY = "review:decision"
NOW = 1_000.0


def review_flow(app: Tether, *, calls: list[str] | None = None) -> Workflow:
    """draft -> gate (event or 4 h sleep; skipped when the draft is low risk) -> publish or
    notify; gate also cancels the run on a withdrawal."""
    seen = calls if calls is not None else []
    flow = app.workflow(name="review")

    @flow.task()
    async def draft(input: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
        seen.append("draft")
        return {"risk": input["risk"]}

    @flow.task(
        parents=[draft],
        wait_for=[
            or_(
                UserEventCondition(KEY, "input.runId == run.id"),
                SleepCondition(timedelta(hours=4), key="expired"),
            )
        ],
        skip_if=[ParentCondition(draft, "output.risk < 0.5")],
        cancel_if=[UserEventCondition("review:withdrawn", "input.runId == run.id")],
    )
    async def gate(input: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
        seen.append("gate")
        if ctx.wait_result.fired == ["expired"]:
            return {"decision": "expired"}
        return {"decision": ctx.wait_result.payloads[KEY]["decision"]}

    @flow.task(parents=[gate], skip_if=[ParentCondition(gate, "output.decision != 'approve'")])
    async def publish(input: dict[str, Any], ctx: TaskContext) -> str:
        seen.append("publish")
        return "published"

    @flow.task(parents=[gate], skip_if=[ParentCondition(gate, "output.decision == 'approve'")])
    async def notify(input: dict[str, Any], ctx: TaskContext) -> str:
        seen.append("notify")
        return "notified"

    return flow


async def _position() -> int:
    return 41


async def request(store: InMemoryEventStore, flow: Workflow, payload: Any) -> None:
    event = ev.RunRequested(
        run_id="r1",
        at=NOW,
        task=flow.name,
        input=payload,
        execution_timeout_s=86_400.0,
        workflow=flow.graph(),
        events_position=7,
    )
    await store.append(event, expected_last_seq=0)


async def attempt(flow: Workflow, store: InMemoryEventStore, now: float = NOW) -> AttemptResult:
    return await run_attempt(
        flow.runner, store, "r1", worker_id="w", events_position=_position, clock=lambda: now
    )


async def state_of(store: InMemoryEventStore) -> RunState:
    return fold("r1", await store.read("r1"))


async def resolve(store: InMemoryEventStore, key: str, payload: dict[str, Any] | None) -> None:
    """What the engine appends when the matcher (or the timer) fires condition ``key``."""
    state = await state_of(store)
    wait = state.open_wait()
    assert wait is not None
    spec = next(s for clause in wait.clauses for s in clause if s.key == key)
    command = ResolveWait(wait.wait_id, spec.id, spec.key, spec.event_key, 50, None, payload)
    [event] = decide(state, command, NOW + 1)
    await store.append(event, expected_last_seq=state.last_seq)


async def test_the_gate_waits_then_the_approval_runs_publish() -> None:
    app, store, calls = Tether(nats_url="nats://unused:4222"), InMemoryEventStore(), []
    flow = review_flow(app, calls=calls)
    await request(store, flow, {"risk": 0.9})

    assert (await attempt(flow, store)).outcome == "suspended"
    state = await state_of(store)
    assert state.status == "waiting"
    assert task_statuses(state) == {
        "draft": "completed",
        "gate": "waiting",
        "publish": "pending",
        "notify": "pending",
    }
    wait = state.open_wait()
    assert wait is not None and wait.label == "task:gate"
    # scoped to this run: run.id is bound, so the matcher's equality index serves it
    assert wait.expression == "input.runId == 'r1'"
    # the events stream's position at the request: an event pushed earlier never counts,
    # one pushed since the request does even if it came before the gate was reached
    assert wait.events_position == 7
    sleep = next(s for s in wait.clauses[0] if s.kind == "sleep")
    assert sleep.due_at == pytest.approx(NOW + 4 * 3600)  # from when the parents finished
    withdrawn = next(s for s in wait.clauses[0] if s.decisive)
    assert withdrawn.key.startswith(CANCEL_KEY_PREFIX)

    await resolve(store, KEY, {"runId": "r1", "decision": "approve"})
    assert (await attempt(flow, store)).outcome == "completed"
    final = await state_of(store)
    assert final.output == {
        "draft": {"risk": 0.9},
        "gate": {"decision": "approve"},
        "publish": "published",
        "notify": {"skipped": True},
    }
    assert calls == ["draft", "gate", "publish"]  # draft ran once across the suspension
    # A task's end rides on the write that follows it at once (the wait, the completion);
    # only the gate's end, followed by publish's code, is written on its own.
    types = [event.type for _, event in await store.read("r1")]
    assert types == [
        "run.requested.v1",
        "run.started.v1",
        "run.wait_started.v1",  # carries draft's end
        "run.wait_satisfied.v1",
        "run.started.v1",
        "run.task.v1",  # gate
        "run.completed.v1",  # carries publish's end and notify's skip
    ]
    assert final.tasks["draft"].output == {"risk": 0.9}
    assert final.tasks["notify"].status == "skipped"


async def test_the_sleep_fires_the_expired_branch() -> None:
    app, store = Tether(nats_url="nats://unused:4222"), InMemoryEventStore()
    flow = review_flow(app)
    await request(store, flow, {"risk": 0.9})
    await attempt(flow, store)
    await resolve(store, "expired", None)
    assert (await attempt(flow, store)).outcome == "completed"
    output = (await state_of(store)).output
    assert output["gate"] == {"decision": "expired"}
    assert output["notify"] == "notified" and output["publish"] == {"skipped": True}


async def test_low_risk_skips_the_gate_and_both_branches_without_waiting() -> None:
    app, store = Tether(nats_url="nats://unused:4222"), InMemoryEventStore()
    flow = review_flow(app)
    await request(store, flow, {"risk": 0.1})
    assert (await attempt(flow, store)).outcome == "completed"
    state = await state_of(store)
    assert not state.records  # no wait was ever registered
    assert task_statuses(state) == {
        "draft": "completed",
        "gate": "skipped",
        "publish": "skipped",
        "notify": "skipped",
    }


async def test_a_withdrawal_cancels_the_task_and_the_engine_ends_the_run() -> None:
    app, store = Tether(nats_url="nats://unused:4222"), InMemoryEventStore()
    flow = review_flow(app)
    await request(store, flow, {"risk": 0.9})
    await attempt(flow, store)
    state = await state_of(store)
    wait = state.open_wait()
    assert wait is not None
    withdrawn = next(s for s in wait.clauses[0] if s.decisive)
    await resolve(store, withdrawn.key, {"runId": "r1"})
    assert (await attempt(flow, store)).outcome == "cancelled"
    state = await state_of(store)
    assert state.tasks["gate"].status == "cancelled"
    assert not state.in_attempt  # the worker writes nothing more; the engine cancels the run
    task_cancelled = [e for _, e in await store.read("r1") if isinstance(e, ev.TaskRecorded)][-1]
    assert ev.subject_token(task_cancelled) == ev.TASK_CANCELLED_TOKEN


async def test_a_failed_task_retries_then_fails_the_run_and_runs_on_failure() -> None:
    app, store = Tether(nats_url="nats://unused:4222"), InMemoryEventStore()
    flow = app.workflow(name="fragile")
    errors: list[dict[str, str]] = []

    @flow.task(retries=1)
    async def charge(input: Any, ctx: TaskContext) -> None:
        raise RuntimeError(f"declined on try {ctx.retry_count + 1}")

    @flow.task(parents=[charge])
    async def receipt(input: Any, ctx: TaskContext) -> str:
        return "sent"

    @flow.on_failure()
    async def cleanup(input: Any, ctx: TaskContext) -> None:
        errors.append(ctx.task_run_errors)

    await request(store, flow, {})
    assert (await attempt(flow, store)).outcome == "retrying"
    state = await state_of(store)
    assert state.status == "queued" and state.retry_at == NOW + 1.0
    assert state.tasks["charge"].failures == 1
    assert (await attempt(flow, store, now=NOW + 2)).outcome == "failed"
    state = await state_of(store)
    assert state.status == "failed"
    assert state.error == {
        "type": "RuntimeError",
        "message": "task 'charge' failed: declined on try 2",
    }
    assert errors == [{"charge": "RuntimeError: declined on try 2"}]
    assert task_statuses(state) == {"charge": "failed", "receipt": "cancelled"}


def test_a_child_with_one_parent_not_skipped_runs() -> None:
    app = Tether(nats_url="nats://unused:4222")
    flow = app.workflow(name="join")

    @flow.task()
    async def a(input: Any, ctx: TaskContext) -> None: ...

    @flow.task(skip_if=[ParentCondition(a, "true")], parents=[a])
    async def b(input: Any, ctx: TaskContext) -> None: ...

    @flow.task(parents=[a], skip_if=[ParentCondition(a, "false")])
    async def c(input: Any, ctx: TaskContext) -> None: ...

    @flow.task(parents=[b, c])
    async def joined(input: Any, ctx: TaskContext) -> None: ...

    graph = flow.graph()
    state = _state_with(graph, {"a": "completed", "b": "skipped", "c": "completed"})
    assert decide_task(state, graph.tasks[3], NOW).action == "run"
    state = _state_with(graph, {"a": "completed", "b": "skipped", "c": "skipped"})
    assert decide_task(state, graph.tasks[3], NOW).action == "skip"
    state = _state_with(graph, {"a": "completed", "b": "skipped"})
    assert decide_task(state, graph.tasks[3], NOW).action == "blocked"


def test_a_cel_error_in_a_parent_condition_fails_the_task_with_the_reason() -> None:
    app = Tether(nats_url="nats://unused:4222")
    flow = app.workflow(name="typo")

    @flow.task()
    async def a(input: Any, ctx: TaskContext) -> None: ...

    @flow.task(parents=[a], skip_if=[ParentCondition(a, "output.missing.field > 1")])
    async def b(input: Any, ctx: TaskContext) -> None: ...

    graph = flow.graph()
    decision = decide_task(_state_with(graph, {"a": "completed"}), graph.tasks[1], NOW)
    assert decision.action == "fail" and "output.missing.field" in decision.reason


def test_an_event_skip_if_without_a_wait_is_looked_up_once_the_parents_finish() -> None:
    app = Tether(nats_url="nats://unused:4222")
    flow = app.workflow(name="lookup")

    @flow.task()
    async def a(input: Any, ctx: TaskContext) -> None: ...

    @flow.task(parents=[a], skip_if=[UserEventCondition("ops:hold", "input.runId == run.id")])
    async def b(input: Any, ctx: TaskContext) -> None: ...

    graph = flow.graph()
    state = _state_with(graph, {"a": "completed"})
    first = decide_task(state, graph.tasks[1], NOW)
    assert first.action == "check_events" and list(first.lookups) == ["s0.0"]
    assert decide_task(state, graph.tasks[1], NOW, {"s0.0": True}).action == "skip"
    assert decide_task(state, graph.tasks[1], NOW, {"s0.0": False}).action == "run"


def test_declaring_checks_parents_conditions_and_cel() -> None:
    app = Tether(nats_url="nats://unused:4222")
    flow = app.workflow(name="checked")
    other = app.workflow(name="other")

    @other.task()
    async def elsewhere(input: Any, ctx: TaskContext) -> None: ...

    @flow.task()
    async def a(input: Any, ctx: TaskContext) -> None: ...

    with pytest.raises(ValueError, match="not a task of this workflow"):
        flow.task(parents=[elsewhere])(_noop)
    with pytest.raises(ValueError, match="not upstream"):
        flow.task(skip_if=[ParentCondition(a, "true")])(_noop)
    with pytest.raises(TypeError, match="ParentCondition"):
        flow.task(parents=[a], wait_for=[ParentCondition(a, "true")])(_noop)
    with pytest.raises(InvalidExpressionError):
        flow.task(parents=[a], wait_for=[UserEventCondition(KEY, "input.x ==")])(_noop)
    with pytest.raises(ValueError, match="already registered"):
        app.workflow(name="checked")


async def _noop(input: Any, ctx: TaskContext) -> None: ...


def _state_with(graph: WorkflowGraph, ended: dict[str, str]) -> RunState:
    """A run of ``graph`` whose tasks in ``ended`` ended so (no attempt recorded: the state
    machine takes an attempt's events on a run no attempt has started yet)."""
    requested = ev.RunRequested(
        run_id="r1",
        at=NOW,
        task=graph.name,
        input={},
        execution_timeout_s=60,
        workflow=graph,
        events_position=0,
    )
    log: list[tuple[int, ev.RunEvent]] = [(1, requested)]
    for seq, (name, status) in enumerate(ended.items(), start=2):
        log.append((seq, ev.TaskRecorded(run_id="r1", at=NOW, task=name, status=status)))  # type: ignore[arg-type]
    return fold("r1", log)


def test_binding_the_run_leaves_strings_alone_and_names_a_missing_field() -> None:
    assert bind_run("input.runId == run.id", "r-1", {}) == "input.runId == 'r-1'"
    assert bind_run("input.note == 'run.id'", "r-1", {}) == "input.note == 'run.id'"
    assert bind_run("input.amount < run.input.limit", "r", {"limit": 5}) == "input.amount < 5"
    assert bind_run("my_run.id == 1", "r", {}) == "my_run.id == 1"
    with pytest.raises(InvalidExpressionError, match="no field 'nope'"):
        bind_run("run.input.nope == 1", "r", {"limit": 5})
    assert cel_literal({"a": [1, "x", None, True]}) == '{"a": [1, "x", null, true]}'


def test_a_decisive_condition_resolves_a_wait_of_several_clauses() -> None:
    specs = [
        [
            ev.ConditionSpec(id="c0.0", key="alice", kind="event", event_key=KEY),
            ev.ConditionSpec(id="x0.0", key="stop", kind="event", event_key="s", decisive=True),
        ],
        [ev.ConditionSpec(id="c1.0", key="bob", kind="event", event_key=KEY)],
    ]
    wait = ev.WaitStarted(
        run_id="r1",
        at=NOW,
        position=0,
        wait_id="r1:0",
        task="t",
        event_key=KEY,
        expression=None,
        events_position=0,
        timeout_at=None,
        kind="conditions",
        label="task:t",
        clauses=specs,
    )
    request_event = ev.RunRequested(run_id="r1", at=NOW, task="t", input={}, execution_timeout_s=60)
    state = fold("r1", [(1, request_event), (2, wait)])
    [met] = decide(state, ResolveWait("r1:0", "c0.0", "alice"), NOW)
    assert isinstance(met, ev.WaitConditionMet)  # bob is still needed
    [stopped] = decide(state, ResolveWait("r1:0", "x0.0", "stop"), NOW)
    assert isinstance(stopped, ev.WaitSatisfied) and stopped.fired == ["stop"]
    assert b"decisive" in ev.encode(wait) and b"decisive" not in ev.encode(
        wait.model_copy(update={"clauses": [[specs[1][0]]]})
    )


async def test_a_task_end_written_while_the_run_waits_changes_nothing() -> None:
    """A worker credential may write task events, but only an attempt that is running
    moves the run: a forged cancellation of a waiting run's gate is ignored (and so never
    reaches the engine's cancel)."""
    app, store = Tether(nats_url="nats://unused:4222"), InMemoryEventStore()
    flow = review_flow(app)
    await request(store, flow, {"risk": 0.9})
    await attempt(flow, store)
    state = await state_of(store)
    forged = ev.TaskRecorded(run_id="r1", at=NOW, task="gate", status="cancelled")
    seq = await store.append(forged, expected_last_seq=state.last_seq)
    after = await state_of(store)
    assert after.status == "waiting" and after.was_ignored(seq)
    assert task_statuses(after)["gate"] == "waiting"
