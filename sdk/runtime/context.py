"""The durable context: what a task function calls to record steps and wait for events."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from tether.client import TaskDefinition
from tether.conditions import (
    Condition,
    OrGroup,
    SleepCondition,
    UserEventCondition,
    WaitResult,
)
from tether.durations import Duration, optional_timedelta, to_timedelta
from tether.engine import codec
from tether.engine.decide import ResolveWait, decide
from tether.engine.events import (
    EventRejected,
    StepRecorded,
    TimeoutRefreshed,
    WaitStarted,
)
from tether.engine.expressions import (
    validate,
)
from tether.engine.state import StepRecord, WaitRecord, evolve
from tether.engine.subjects import check_event_key
from tether.errors import NonDeterminismError, WaitTimeoutError, _Suspend, raise_for_outcome
from tether.runtime.session import Attempt
from tether.runtime.wait_helpers import (
    already_satisfied,
    condition_spec,
    trace_wait,
    within_attempt,
)

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

CHILD_EVENT_PREFIX = "tether:run:"


class DurableContext:
    """Passed to every durable task. Each durable call is recorded with its position, kind
    and name; on replay the recording is returned instead of running the call again."""

    def __init__(self, attempt: Attempt, *, owner: str | None = None) -> None:
        self._attempt = attempt
        self._position = 0
        # Inside a workflow, the task whose durable calls these are: its records are its
        # own, among the run's other tasks' (see ``_records``).
        self._owner = owner

    def _records(self) -> list[StepRecord | WaitRecord]:
        """The recorded durable calls this context replays, in order."""
        records = self._attempt.state.records
        if self._owner is None:
            return records
        return [r for r in records if r.owner == self._owner]

    def _position_for(self, index: int) -> int:
        """The position the new durable call at ``index`` of this context records: that
        index, or, inside a workflow, its index in the run, which keeps wait ids and child
        run ids unique among the run's tasks."""
        return index if self._owner is None else len(self._attempt.state.records)

    @property
    def run_id(self) -> str:
        return self._attempt.state.run_id

    @property
    def session(self) -> Attempt:
        """The attempt's session with the run log (a workflow's driver works through it)."""
        return self._attempt

    @property
    def task_name(self) -> str:
        return self._attempt.state.task

    @property
    def attempt(self) -> int:
        return self._attempt.number

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self._attempt.state.metadata)

    def _next_record(self, kind: str, name: str) -> StepRecord | WaitRecord | None:
        """The recorded call at this position, checked against what the code does now."""
        position = self._position
        self._position += 1
        records = self._records()
        if position >= len(records):
            return None
        record = records[position]
        if record.kind != kind or record.name != name:
            raise NonDeterminismError(
                self.run_id, position, (record.kind, record.name), (kind, name)
            )
        return record

    # -- steps ----------------------------------------------------------------------------------

    async def step(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` once and record its JSON result; replays return it."""
        record = self._next_record("step", name)
        if isinstance(record, StepRecord):
            return record.output
        position = self._position_for(self._position - 1)
        await self._attempt.begin()
        with self._attempt.tracing.span(
            f"step {name}",
            attributes={
                "tether.run_id": self.run_id,
                "tether.step": name,
                "tether.position": position,
                "tether.attempt": self.attempt,
            },
        ):
            result = fn(*args, **kwargs)
            if inspect.isawaitable(result):
                result = await result
        output = codec.to_json_value(result)
        await self._attempt.append(
            StepRecorded(
                run_id=self.run_id,
                at=self._attempt.clock(),
                position=position,
                name=name,
                output=output,
                owner=self._owner,
            )
        )
        self._attempt.state.records.append(StepRecord(position, name, output, owner=self._owner))
        return output

    async def now(self) -> datetime:
        """The current time, recorded: the same value on every replay."""
        value = await self.step("tether:now", self._attempt.clock)
        return datetime.fromtimestamp(float(value), tz=UTC)

    async def refresh_timeout(self, extra: Duration) -> datetime:
        """Extend this run's execution timeout by ``extra``; returns the new deadline."""
        extra = to_timedelta(extra, "extra")
        if extra.total_seconds() <= 0:
            raise ValueError("refresh_timeout needs a positive duration")
        state = self._attempt.state
        new_total = state.execution_timeout_s + extra.total_seconds()
        record = self._next_record("step", "tether:refresh_timeout")
        if isinstance(record, StepRecord):
            return datetime.fromtimestamp(float(record.output), tz=UTC)
        event = TimeoutRefreshed(
            run_id=self.run_id, at=self._attempt.clock(), execution_timeout_s=new_total
        )
        evolve(state, event, await self._attempt.append(event))
        deadline = state.deadline
        position = self._position_for(self._position - 1)
        await self._attempt.append(
            StepRecorded(
                run_id=self.run_id,
                at=self._attempt.clock(),
                position=position,
                name="tether:refresh_timeout",
                output=deadline,
                owner=self._owner,
            )
        )
        state.records.append(
            StepRecord(position, "tether:refresh_timeout", deadline, owner=self._owner)
        )
        self._attempt.extend_deadline(deadline)
        return datetime.fromtimestamp(deadline, tz=UTC)

    # -- waits ----------------------------------------------------------------------------------

    async def wait_for_event(
        self,
        key: str,
        expression: str | None = None,
        *,
        timeout: Duration | None = None,
        lookback: Duration | None = None,
        model: type[M] | None = None,
        description: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> Any:
        """Wait durably for an event on ``key`` whose payload satisfies the CEL
        ``expression`` (payload as ``input``); returns the payload (a dict), or an instance
        of ``model`` when given.

        The first time, the wait is recorded and the task suspends, freeing its slot; the
        task re-runs from the top once the wait resolves. Events stored after this call
        began are considered, plus those within ``lookback`` before it. Raises
        ``WaitTimeoutError`` if ``timeout`` passes first. A payload that fails ``model``
        validation is recorded on the run as rejected and the wait stays open.
        """
        check_event_key(key)
        condition = UserEventCondition(key, expression, lookback=lookback)
        record = self._next_record("wait", key)
        if record is None:
            await self._register(
                kind="event",
                label=None,
                clauses=[[condition]],
                timeout=optional_timedelta(timeout, "timeout"),
                description=description,
                details=details,
            )
            record = self._records()[self._position - 1]
            assert isinstance(record, WaitRecord)
        return await self._event_outcome(record, model)

    async def _event_outcome(self, record: WaitRecord | StepRecord, model: type[M] | None) -> Any:
        assert isinstance(record, WaitRecord)
        trace_wait(self._attempt, record)
        if record.outcome == "timed_out":
            raise WaitTimeoutError(record.event_key, record.wait_id)
        if record.outcome != "satisfied":
            raise _Suspend()
        payload = dict(record.payload or {})
        if model is None:
            return payload
        try:
            return model.model_validate(payload)
        except ValidationError as exc:
            await self._reject_and_rewait(record, exc)
            raise _Suspend() from None

    async def _reject_and_rewait(self, record: WaitRecord, exc: ValidationError) -> None:
        """Record the refused payload and register the same wait again after it."""
        state, clock = self._attempt.state, self._attempt.clock
        satisfied_seq = record.resolved_event_seq
        rejected = EventRejected(
            run_id=self.run_id,
            at=clock(),
            wait_id=record.wait_id,
            event_seq=satisfied_seq,
            payload=record.payload,
            error=f"payload does not match the wait's model: {exc}",
        )
        evolve(state, rejected, await self._attempt.append(rejected))
        again = WaitStarted(
            run_id=self.run_id,
            at=clock(),
            position=record.position,
            wait_id=record.wait_id,
            task=self._attempt.state.task,  # what the run is dispatched to
            event_key=record.event_key,
            expression=record.expression,
            events_position=max(record.events_position, satisfied_seq or 0),
            timeout_at=record.timeout_at,
            kind=record.wait_kind,
            label=record.label,
            clauses=record.clauses,
            description=record.description,
            details=record.details,
            owner=self._owner,
        )
        evolve(state, again, await self._attempt.append(again))

    async def wait_for(self, label: str, *conditions: Condition | OrGroup) -> WaitResult:
        """Wait until every positional condition (or ``or_`` group) is satisfied.

        ``wait_for("review", or_(UserEventCondition("approval:decision", expr),
        SleepCondition(timedelta(hours=4), key="escalate")))`` resolves with
        ``fired == ["approval:decision"]`` or ``["escalate"]``.
        """
        if not conditions:
            raise ValueError("wait_for needs at least one condition")
        clauses: list[list[Condition]] = []
        for item in conditions:
            if isinstance(item, OrGroup):
                clauses.append([_waitable(c) for c in item.conditions])
            elif isinstance(item, UserEventCondition | SleepCondition):
                clauses.append([item])
            else:
                raise TypeError(f"wait_for takes conditions or or_() groups, not {item!r}")
        record = self._next_record("wait", label)
        if record is None:
            await self._register(kind="conditions", label=label, clauses=clauses)
            record = self._records()[self._position - 1]
        assert isinstance(record, WaitRecord)
        trace_wait(self._attempt, record)
        if record.outcome == "satisfied":
            return WaitResult(fired=list(record.fired), payloads=dict(record.payloads))
        if record.outcome == "timed_out":
            raise WaitTimeoutError(label, record.wait_id)
        raise _Suspend()

    async def sleep_for(self, duration: Duration) -> None:
        """Sleep durably: the task suspends, holding no slot, and resumes after ``duration``
        (measured from the first call, not from each replay)."""
        await self.wait_for("tether:sleep", SleepCondition(duration))

    async def _register(
        self,
        *,
        kind: str,
        label: str | None,
        clauses: list[list[Condition]],
        timeout: timedelta | None = None,
        description: str | None = None,
        details: dict[str, Any] | None = None,
        events_position: int | None = None,
    ) -> None:
        """Record a new wait. Conditions already satisfied (by lookback, or zero sleeps) are
        recorded at once; if that completes the wait the task carries on without suspending."""
        if timeout is not None and timeout.total_seconds() <= 0:
            raise ValueError("wait timeout must be positive")
        for clause in clauses:
            for condition in clause:
                if isinstance(condition, UserEventCondition):
                    validate(condition.expression)  # a bad expression fails the task here
        attempt, state = self._attempt, self._attempt.state
        position = self._position_for(self._position - 1)
        if events_position is None:
            events_position = await attempt.events_position()
        now = attempt.clock()
        specs = [
            [condition_spec(f"c{i}.{j}", condition, now) for j, condition in enumerate(clause)]
            for i, clause in enumerate(clauses)
        ]
        first_event = next((s for clause in specs for s in clause if s.kind == "event"), None)
        started = WaitStarted(
            run_id=self.run_id,
            at=now,
            position=position,
            wait_id=f"{self.run_id}:{position}",
            task=self._attempt.state.task,  # what the run is dispatched to
            event_key=first_event.event_key if first_event else None,
            expression=first_event.expression if first_event else None,
            events_position=events_position,
            timeout_at=now + timeout.total_seconds() if timeout is not None else None,
            kind="event" if kind == "event" else "conditions",
            label=label,
            clauses=specs,
            description=description,
            details=details,
            owner=self._owner,
        )
        evolve(state, started, await attempt.append(started))
        record = state.records[-1]
        assert isinstance(record, WaitRecord)
        for clause_specs, clause in zip(specs, clauses, strict=True):
            for spec, condition in zip(clause_specs, clause, strict=True):
                early = await already_satisfied(
                    self._attempt, spec, condition, events_position, now
                )
                if early is None:
                    continue
                seq, payload, event_id = early
                command = ResolveWait(
                    record.wait_id, spec.id, spec.key, spec.event_key, seq, event_id, payload
                )
                # the state machine decides, as in the engine: condition met, wait satisfied,
                # or nothing (its clause, or the whole wait, is already satisfied)
                for decided in decide(state, command, attempt.clock()):
                    event = within_attempt(decided)
                    evolve(state, event, await attempt.append(event))

    # -- child runs -----------------------------------------------------------------------------

    async def spawn(
        self, task: TaskDefinition, input: Any, metadata: dict[str, Any] | None = None
    ) -> ChildRunRef:
        """Start a child run once (a replay returns the recorded child)."""
        position = self._position_for(self._position)  # the spawn step's
        child_id = f"{self.run_id}-c{position}"

        async def start_child() -> dict[str, Any]:
            events_position = await self._attempt.events_position()
            await self._attempt.call_nats(
                f"start child run {child_id}",
                self._attempt.trigger_child(
                    task,
                    input,
                    metadata=metadata,
                    run_id=child_id,
                    parent_run_id=self.run_id,
                    exist_ok=True,
                ),
            )
            return {"run_id": child_id, "events_position": events_position}

        recorded = await self.step(f"tether:spawn:{task.name}", start_child)
        return ChildRunRef(self, str(recorded["run_id"]), int(recorded["events_position"]))

    async def _wait_for_child(self, child_id: str, events_position: int) -> dict[str, Any]:
        key = CHILD_EVENT_PREFIX + child_id
        record = self._next_record("wait", key)
        if record is None:
            await self._register(
                kind="event",
                label=None,
                clauses=[[UserEventCondition(key)]],
                events_position=events_position,
            )
            record = self._records()[self._position - 1]
        payload = await self._event_outcome(record, None)
        assert isinstance(payload, dict)
        return payload


def _waitable(condition: object) -> Condition:
    if isinstance(condition, UserEventCondition | SleepCondition):
        return condition
    raise TypeError(
        f"wait_for waits on events and sleeps, not {type(condition).__name__} "
        "(a ParentCondition belongs in a workflow task's skip_if or cancel_if)"
    )


class ChildRunRef:
    """A child run started from a durable task; ``await ref.result()`` waits durably."""

    def __init__(self, ctx: DurableContext, run_id: str, events_position: int) -> None:
        self._ctx = ctx
        self.run_id = run_id
        self._events_position = events_position

    async def result(self, timeout: Duration | None = None) -> Any:
        """The child's output; raises RunFailedError / RunTimeoutError / RunCancelledError.
        The parent suspends while the child runs, holding no slot."""
        payload = await self._ctx._wait_for_child(self.run_id, self._events_position)
        return raise_for_outcome(
            self.run_id, str(payload.get("status")), payload.get("output"), payload.get("error")
        )
