"""The run state machine: ``evolve`` folds events into state, ``decide`` turns commands into
events. Both are pure (no I/O, no clock): the adapters pass time and sequence numbers in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from tether.engine.events import (
    AttemptStarted,
    RunCancelled,
    RunCompleted,
    RunEvent,
    RunFailed,
    RunRequested,
    RunTimedOut,
    StepRecorded,
    WaitSatisfied,
    WaitStarted,
    WaitTimedOut,
)

RunStatus = Literal["queued", "running", "waiting", "completed", "failed", "timed_out", "cancelled"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "timed_out", "cancelled"})


@dataclass(slots=True)
class StepRecord:
    position: int
    name: str
    output: Any
    kind: Literal["step"] = "step"


@dataclass(slots=True)
class WaitRecord:
    position: int
    wait_id: str
    event_key: str
    expression: str | None
    events_position: int
    timeout_at: float | None
    started_seq: int  # log sequence of the wait_started event: the OCC anchor for resolving it
    outcome: Literal["open", "satisfied", "timed_out"] = "open"
    payload: dict[str, Any] | None = None
    kind: Literal["wait"] = "wait"


DurableRecord = StepRecord | WaitRecord


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

    @property
    def exists(self) -> bool:
        return self.last_seq > 0

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


def evolve(state: RunState, event: RunEvent, seq: int) -> RunState:
    """Apply one event (stored at ``seq``) to ``state`` in place and return it."""
    state.last_seq = seq
    if state.is_terminal:
        return state  # nothing changes a finished run; late writes are ignored
    match event:
        case RunRequested():
            state.task = event.task
            state.input = event.input
            state.requested_at = event.at
            state.execution_timeout_s = event.execution_timeout_s
            state.metadata = dict(event.metadata)
            state.status = "queued"
            state.runnable_since_seq = seq
        case AttemptStarted():
            state.attempt = event.attempt
            state.status = "running"
        case StepRecorded():
            state.records.append(StepRecord(event.position, event.name, event.output))
        case WaitStarted():
            state.records.append(
                WaitRecord(
                    position=event.position,
                    wait_id=event.wait_id,
                    event_key=event.event_key,
                    expression=event.expression,
                    events_position=event.events_position,
                    timeout_at=event.timeout_at,
                    started_seq=seq,
                )
            )
            state.status = "waiting"
        case WaitSatisfied():
            record = state.wait(event.wait_id)
            if record is not None and record.outcome == "open":
                record.outcome = "satisfied"
                record.payload = event.payload
                state.status = "queued"
                state.runnable_since_seq = seq
        case WaitTimedOut():
            record = state.wait(event.wait_id)
            if record is not None and record.outcome == "open":
                record.outcome = "timed_out"
                state.status = "queued"
                state.runnable_since_seq = seq
        case RunCompleted():
            state.status = "completed"
            state.output = event.output
            state.ended_at = event.at
        case RunFailed():
            state.status = "failed"
            state.error = {"type": event.error.type, "message": event.error.message}
            state.ended_at = event.at
        case RunTimedOut():
            state.status = "timed_out"
            state.error = {"type": "RunTimeoutError", "message": event.reason}
            state.ended_at = event.at
        case RunCancelled():
            state.status = "cancelled"
            state.error = {"type": "RunCancelledError", "message": event.reason}
            state.ended_at = event.at
    return state


def fold(run_id: str, stored: list[tuple[int, RunEvent]]) -> RunState:
    state = RunState(run_id=run_id)
    for seq, event in stored:
        evolve(state, event, seq)
    return state


# -- commands -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResolveWait:
    """A pushed event matched an open wait."""

    wait_id: str
    event_key: str
    event_seq: int
    event_id: str | None
    payload: dict[str, Any]
    metadata: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ExpireWait:
    wait_id: str


@dataclass(frozen=True, slots=True)
class ExpireRun:
    reason: str


@dataclass(frozen=True, slots=True)
class CancelRun:
    reason: str


Command = ResolveWait | ExpireWait | ExpireRun | CancelRun


def wait_resolution(run_id: str, command: ResolveWait | ExpireWait, now: float) -> RunEvent:
    """The event that resolves a wait, whatever the run's state (``decide`` checks that)."""
    if isinstance(command, ResolveWait):
        return WaitSatisfied(
            run_id=run_id,
            at=now,
            wait_id=command.wait_id,
            event_key=command.event_key,
            event_seq=command.event_seq,
            event_id=command.event_id,
            payload=command.payload,
            metadata=command.metadata,
        )
    return WaitTimedOut(run_id=run_id, at=now, wait_id=command.wait_id)


def decide(state: RunState, command: Command, now: float) -> list[RunEvent]:
    """Events that ``command`` produces against ``state``; empty when it no longer applies."""
    if not state.exists or state.is_terminal:
        return []
    run_id = state.run_id
    match command:
        case ResolveWait() | ExpireWait():
            record = state.wait(command.wait_id)
            if record is None or record.outcome != "open":
                return []
            return [wait_resolution(run_id, command, now)]
        case ExpireRun():
            return [RunTimedOut(run_id=run_id, at=now, reason=command.reason)]
        case CancelRun():
            return [RunCancelled(run_id=run_id, at=now, reason=command.reason)]
    return []
