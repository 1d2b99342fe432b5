"""The run state machine: ``evolve`` folds events into state, and ``refusal`` says which
events a run takes; ``decide`` (``tether.engine.decide``) turns commands into events. Both
are pure (no I/O, no clock): the adapters pass time and sequence numbers in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from tether.engine.events import (
    TERMINAL_TOKENS,
    AttemptFailed,
    AttemptStarted,
    AttemptWrite,
    ConditionSpec,
    EventRejected,
    RunCancelled,
    RunCompleted,
    RunEvent,
    RunFailed,
    RunRequested,
    RunTimedOut,
    StepRecorded,
    TaskEnd,
    TaskRecorded,
    TimeoutRefreshed,
    UnusableEntry,
    WaitConditionMet,
    WaitResolution,
    WaitSatisfied,
    WaitStarted,
    WaitTimedOut,
)
from tether.engine.workflow_graph import WorkflowGraph

RunStatus = Literal["queued", "running", "waiting", "completed", "failed", "timed_out", "cancelled"]
# A run's terminal statuses are named as its terminal events' subject tokens: one list.
TERMINAL_STATUSES: frozenset[str] = frozenset(TERMINAL_TOKENS)


@dataclass(slots=True)
class StepRecord:
    position: int
    name: str
    output: Any
    kind: Literal["step"] = "step"
    owner: str | None = None  # the workflow task whose durable call this is


@dataclass(slots=True)
class WaitRecord:
    position: int
    wait_id: str
    event_key: str  # the first event condition's key, or the label when there is none
    expression: str | None
    events_position: int
    timeout_at: float | None
    started_seq: int  # log sequence of the wait_started event: the OCC anchor for resolving it
    outcome: Literal["open", "satisfied", "timed_out"] = "open"
    payload: dict[str, Any] | None = None
    kind: Literal["wait"] = "wait"
    wait_kind: Literal["event", "conditions"] = "event"
    label: str | None = None
    clauses: list[list[ConditionSpec]] = field(default_factory=list)
    met: dict[str, dict[str, Any] | None] = field(default_factory=dict)  # condition id -> payload
    fired: list[str] = field(default_factory=list)
    payloads: dict[str, dict[str, Any]] = field(default_factory=dict)
    resolved_event_seq: int | None = None
    started_at: float = 0.0
    resolved_at: float | None = None
    resolved_seq: int | None = None  # log sequence of the event that resolved the wait
    description: str | None = None
    details: dict[str, Any] | None = None
    owner: str | None = None  # the workflow task whose durable call this is

    @property
    def name(self) -> str:
        """What replay compares: the label of a ``wait_for``, the key of a ``wait_for_event``."""
        return self.label if self.wait_kind == "conditions" and self.label else self.event_key

    def condition(self, condition_id: str) -> ConditionSpec | None:
        for clause in self.clauses:
            for spec in clause:
                if spec.id == condition_id:
                    return spec
        return None

    def clause_satisfied(self, index: int) -> bool:
        return any(spec.id in self.met for spec in self.clauses[index])

    def satisfied_with(self, condition_id: str) -> bool:
        """Would every clause be satisfied once ``condition_id`` is met? (A decisive
        condition satisfies the wait by itself.)"""
        spec = self.condition(condition_id)
        if spec is not None and spec.decisive:
            return True
        return all(
            any(spec.id in self.met or spec.id == condition_id for spec in clause)
            for clause in self.clauses
        )


DurableRecord = StepRecord | WaitRecord


TaskStatus = Literal["completed", "skipped", "failed", "cancelled", "retrying"]


@dataclass(slots=True)
class TaskOutcome:
    """Where a workflow task stands in its run's log: its last ``run.task`` event (or the
    end a wait or the completion carried)."""

    status: TaskStatus
    output: Any = None
    error: dict[str, str] | None = None
    at: float = 0.0
    failures: int = 0  # attempts of it that failed and were retried

    @property
    def finished(self) -> bool:
        return self.status != "retrying"


@dataclass(slots=True)
class RunState:
    run_id: str
    task: str = ""
    status: RunStatus = "queued"
    input: Any = None
    requested_at: float = 0.0
    execution_timeout_s: float = 0.0
    metadata: dict[str, Any] = field(default_factory=dict)
    attempt: int = 0
    last_seq: int = 0  # sequence of the newest event in the run's log (0 = empty log)
    records: list[DurableRecord] = field(default_factory=list)
    output: Any = None
    error: dict[str, str] | None = None
    ended_at: float | None = None
    # how the run became runnable last: the seq of that event names its dispatch uniquely
    runnable_since_seq: int = 0
    started_seq: int = 0  # log sequence where the newest attempt began (see begin_attempt)
    failures: int = 0  # attempts that failed and were retried
    retry_at: float | None = None
    schedule_timeout_s: float | None = None
    parent_run_id: str | None = None
    rejected: list[dict[str, Any]] = field(default_factory=list)  # events a wait's model refused
    # An attempt is running and may write (``AttemptWrite`` events): from its start until it
    # suspends on a wait, fails or ends. A wait it resolves itself (lookback, a zero sleep)
    # does not end it.
    in_attempt: bool = False
    # Events in the log that did not apply (late, out of place, or for another run):
    # {"seq", "type", "status" (the run's status then), "reason"}.
    ignored: list[dict[str, Any]] = field(default_factory=list)
    # Workflow runs: the graph, where each task stands, and the events stream's position
    # when the run was requested.
    workflow: WorkflowGraph | None = None
    tasks: dict[str, TaskOutcome] = field(default_factory=dict)
    events_position: int | None = None

    @property
    def exists(self) -> bool:
        """The run was requested (its log may hold ignored events before that)."""
        return self.runnable_since_seq > 0

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def deadline(self) -> float:
        return self.requested_at + self.execution_timeout_s

    def open_wait(self) -> WaitRecord | None:
        if self.records:
            last = self.records[-1]
            if isinstance(last, WaitRecord) and last.outcome == "open":
                return last
        return None

    def wait(self, wait_id: str) -> WaitRecord | None:
        for record in reversed(self.records):
            if isinstance(record, WaitRecord) and record.wait_id == wait_id:
                return record
        return None

    def was_ignored(self, seq: int) -> bool:
        """Did the event stored at ``seq`` leave the run unchanged (see ``ignored``)?"""
        return any(entry["seq"] == seq for entry in self.ignored)


def refusal(state: RunState, event: RunEvent) -> str | None:
    """Why ``event`` cannot apply to the run as it stands, or None when it can."""
    if isinstance(event, UnusableEntry):
        return f"not a usable event: {event.reason}"
    if event.run_id != state.run_id:
        return f"written for run {event.run_id}"
    if isinstance(event, RunRequested):
        return "the run was requested already" if state.exists else None
    if not state.exists:
        return "the run was never requested"
    if state.is_terminal:
        return f"the run already ended {state.status}"
    if isinstance(event, AttemptStarted):
        # a worker may take over a running attempt whose worker went silent, never a wait
        return None if state.status in ("queued", "running") else "the run is waiting"
    if isinstance(event, AttemptWrite):
        # Only the running attempt writes these (its steps, waits and outcome). The NATS
        # permissions of a worker cannot tell one run from another, so the fold is what
        # keeps a worker credential from moving a run no attempt of it is running (a
        # waiting or finished run). A queued run takes them, as the start of an attempt:
        # whoever may write them may also write run.started first, so refusing would
        # protect nothing.
        if state.in_attempt or state.status == "queued":
            return None
        return f"no attempt is running (the run is {state.status})"
    if isinstance(event, WaitResolution):
        record = state.wait(event.wait_id)
        if record is None or record.outcome != "open":
            return f"wait {event.wait_id} is not open"
        if event.wait_seq is not None and event.wait_seq != record.started_seq:
            return (
                f"resolves wait {event.wait_id} as registered at {event.wait_seq}; "
                f"the open one was registered at {record.started_seq}"
            )
        if (
            isinstance(event, WaitSatisfied | WaitConditionMet)
            and event.within_attempt
            and not _resolved_within_attempt(state, record, event)
        ):
            # the attempt's own resolutions (workers may write them) are only lookback
            # matches and zero sleeps of the wait it just registered
            return "an attempt resolves only its own wait, by lookback or a zero sleep"
    return None


def _resolved_within_attempt(
    state: RunState, record: WaitRecord, event: WaitSatisfied | WaitConditionMet
) -> bool:
    """Did the attempt that registered the wait resolve it itself and carry on? Only it
    matches events stored before the wait (lookback) or fires a zero-length sleep; the
    matcher and the timer resolve waits after the attempt has suspended."""
    if record.started_seq < state.started_seq:
        return False  # registered by an earlier attempt
    if event.event_seq is not None:
        return event.event_seq <= record.events_position

    def fired(spec: ConditionSpec) -> bool:
        if isinstance(event, WaitConditionMet):
            return spec.id == event.condition_id
        return bool(event.fired) and spec.key == event.fired[-1]

    return any(
        spec.kind == "sleep" and fired(spec) and (spec.due_at or 0.0) <= record.started_at
        for clause in record.clauses
        for spec in clause
    )


def evolve(state: RunState, event: RunEvent, seq: int) -> RunState:
    """Apply one event (stored at ``seq``) to ``state`` in place and return it. An event
    that cannot apply (see ``refusal``) only moves ``last_seq`` and is noted in
    ``ignored``: nothing changes a finished run, and no one but the running attempt moves
    a run through its steps and waits."""
    reason = refusal(state, event)
    if reason is not None:
        state.ignored.append(
            {"seq": seq, "type": event.type, "status": state.status, "reason": reason}
        )
        state.last_seq = seq
        return state
    state.last_seq = seq
    if isinstance(event, AttemptWrite) and not state.in_attempt:
        begin_attempt(state, state.attempt + 1, seq)  # an attempt that wrote no run.started
    match event:
        case RunRequested():
            state.task = event.task
            state.input = event.input
            state.requested_at = event.at
            state.execution_timeout_s = event.execution_timeout_s
            state.metadata = dict(event.metadata)
            state.schedule_timeout_s = event.schedule_timeout_s
            state.parent_run_id = event.parent_run_id
            state.workflow = event.workflow
            state.events_position = event.events_position
            state.status = "queued"
            state.runnable_since_seq = seq
        case AttemptStarted():
            begin_attempt(state, event.attempt, seq)
        case AttemptFailed():
            state.in_attempt = False
            state.failures += 1
            state.retry_at = event.retry_at
            state.status = "queued"
            state.runnable_since_seq = seq
        case TimeoutRefreshed():
            state.execution_timeout_s = event.execution_timeout_s
        case StepRecorded():
            state.records.append(
                StepRecord(event.position, event.name, event.output, owner=event.owner)
            )
        case TaskRecorded():
            error = None if event.error is None else event.error.model_dump()
            record_task(state, event.task, event.status, event.output, error, event.at)
            if event.status == "cancelled":
                state.in_attempt = False  # the attempt ends; the engine cancels the run
        case WaitStarted():
            record_tasks(state, event.tasks, event.at)
            record = WaitRecord(
                position=event.position,
                wait_id=event.wait_id,
                event_key=event.event_key or event.label or "",
                expression=event.expression,
                events_position=event.events_position,
                timeout_at=event.timeout_at,
                started_seq=seq,
                started_at=event.at,
                description=event.description,
                details=event.details,
                wait_kind=event.kind,
                label=event.label,
                clauses=list(event.clauses),
                owner=event.owner,
            )
            if state.records and state.records[-1].position == event.position:
                state.records[-1] = record  # registered again after a rejected event
            else:
                state.records.append(record)
            state.status = "waiting"
            state.in_attempt = False  # the attempt suspends, unless it resolves the wait
        case WaitConditionMet():
            met = state.wait(event.wait_id)
            if met is not None and met.outcome == "open":
                met.met[event.condition_id] = event.payload
        case WaitSatisfied():
            satisfied = state.wait(event.wait_id)
            if satisfied is not None and satisfied.outcome == "open":
                state.in_attempt = _resolved_within_attempt(state, satisfied, event)
                satisfied.outcome = "satisfied"
                satisfied.payload = event.payload
                satisfied.fired = list(event.fired)
                satisfied.payloads = dict(event.payloads)
                satisfied.resolved_event_seq = event.event_seq
                satisfied.resolved_at = event.at
                satisfied.resolved_seq = seq
                state.status = "queued"
                state.runnable_since_seq = seq
        case EventRejected():
            state.rejected.append(
                {"wait_id": event.wait_id, "event_seq": event.event_seq, "error": event.error}
            )
        case WaitTimedOut():
            expired = state.wait(event.wait_id)
            if expired is not None and expired.outcome == "open":
                state.in_attempt = False
                expired.outcome = "timed_out"
                expired.resolved_at = event.at
                expired.resolved_seq = seq
                state.status = "queued"
                state.runnable_since_seq = seq
        case RunCompleted() | RunFailed() | RunTimedOut() | RunCancelled():
            if isinstance(event, RunCompleted):
                record_tasks(state, event.tasks, event.at)
            state.status, state.output, state.error = terminal_outcome(event)
            state.ended_at = event.at
    return state


def begin_attempt(state: RunState, attempt: int, seq: int) -> None:
    """Attempt ``attempt`` begins at ``seq``: with its run.started, or with its first write
    when it wrote none (an attempt that suspends or ends at once records no start)."""
    state.attempt = attempt
    state.started_seq = seq
    state.status = "running"
    state.retry_at = None
    state.in_attempt = True


def record_task(
    state: RunState,
    task: str,
    status: TaskStatus,
    output: Any,
    error: dict[str, str] | None,
    at: float,
) -> None:
    """A workflow task ended (or failed an attempt it will retry)."""
    before = state.tasks.get(task)
    failures = before.failures if before is not None else 0
    state.tasks[task] = TaskOutcome(status, output, error, at, failures + (status == "retrying"))


def record_tasks(state: RunState, ends: list[TaskEnd] | None, at: float) -> None:
    """The task ends a wait or a completion carries, ended just before it."""
    for end in ends or ():
        record_task(state, end.task, end.status, end.output, None, at)


def terminal_outcome(
    event: RunCompleted | RunFailed | RunTimedOut | RunCancelled,
) -> tuple[RunStatus, Any, dict[str, str] | None]:
    """The status, output and error a terminal event gives its run."""
    match event:
        case RunCompleted():
            return "completed", event.output, None
        case RunFailed():
            return "failed", None, {"type": event.error.type, "message": event.error.message}
        case RunTimedOut():
            return "timed_out", None, {"type": "RunTimeoutError", "message": event.reason}
        case RunCancelled():
            return "cancelled", None, {"type": "RunCancelledError", "message": event.reason}


def fold(run_id: str, stored: list[tuple[int, RunEvent]]) -> RunState:
    state = RunState(run_id=run_id)
    for seq, event in stored:
        evolve(state, event, seq)
    return state
