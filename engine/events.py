"""Versioned run events: every transition of a run is one of these, appended to its log.

Each type has a stable name (``run.<what>.v<n>``) and a subject token. Decoding is strict:
an unknown type or a malformed body raises ``EventDecodeError`` rather than being guessed.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from tether.engine import codec
from tether.engine.subjects import run_subject_parts
from tether.engine.workflow_graph import WorkflowGraph


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: str
    at: float  # epoch seconds, from the writer's clock


class AttemptWrite(_Event):
    """An event only a running attempt writes (its steps, waits and outcome). An attempt
    that wrote no ``run.started`` began with its first such write (the fold counts the
    attempt there), and that write names the worker: each attempt names its worker once."""

    worker: str | None = None


class ErrorInfo(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    type: str
    message: str


class RunRequested(_Event):
    type: Literal["run.requested.v1"] = "run.requested.v1"
    task: str
    input: Any
    execution_timeout_s: float
    metadata: dict[str, Any] = Field(default_factory=dict)
    # a run that no worker has started within this many seconds ends timed_out
    schedule_timeout_s: float | None = None
    parent_run_id: str | None = None  # set for child runs: the parent is told when it ends
    # Workflow runs: the graph of tasks, and the events stream's last sequence when the run
    # was requested (its event conditions count every event stored after it).
    workflow: WorkflowGraph | None = None
    events_position: int | None = None


class ConditionSpec(BaseModel):
    """One condition of a wait: an event on a key (optionally filtered by CEL) or a sleep."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str  # position in the wait's conjunctive normal form: "c<clause>.<alternative>"
    key: str  # what the result calls it
    kind: Literal["event", "sleep"]
    event_key: str | None = None
    expression: str | None = None
    due_at: float | None = None  # sleeps: when it fires
    # Fires the whole wait by itself, whatever its clauses (a workflow task's skip_if or
    # cancel_if condition, watched while the task waits on its wait_for).
    decisive: bool = False


class AttemptStarted(_Event):
    type: Literal["run.started.v1"] = "run.started.v1"
    attempt: int
    worker: str


class StepRecorded(AttemptWrite):
    type: Literal["run.step.v1"] = "run.step.v1"
    position: int
    name: str
    output: Any
    owner: str | None = None  # the workflow task whose durable call this is


class TaskEnd(BaseModel):
    """A workflow task that ended, carried by the write that follows it at once (the run's
    wait or its completion), so that the end costs no write of its own."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task: str
    status: Literal["completed", "skipped"]
    output: Any = None
    reason: str | None = None


class WaitStarted(AttemptWrite):
    """The task registered a wait and suspended; it holds no slot until the wait resolves.

    ``clauses`` are in conjunctive normal form: every clause needs one satisfied condition.
    ``event_key``/``expression`` repeat the first event condition for simple readers.
    """

    type: Literal["run.wait_started.v1"] = "run.wait_started.v1"
    position: int
    wait_id: str
    task: str
    event_key: str | None
    expression: str | None
    events_position: int  # last events-stream sequence before the wait; match after it
    timeout_at: float | None
    kind: Literal["event", "conditions"] = "event"
    label: str | None = None
    clauses: list[list[ConditionSpec]] = Field(default_factory=list)
    description: str | None = None  # what the human is asked to decide, for inboxes
    details: dict[str, Any] | None = None
    tasks: list[TaskEnd] | None = None  # workflow tasks that ended just before the wait
    owner: str | None = None  # the workflow task whose durable call this is


class WaitResolution(_Event):
    """A wait's condition met, or the wait satisfied or timed out."""

    wait_id: str
    # The sequence of the wait_started the engine resolved (None: written without it). A
    # resolution of a wait registered at another sequence, as a forged wait_started reusing
    # an open wait's id would bring, is ignored.
    wait_seq: int | None = None


class WaitConditionMet(WaitResolution):
    """One condition of a multi-clause wait fired; the wait stays open for the others."""

    type: Literal["run.wait_condition_met.v1"] = "run.wait_condition_met.v1"
    condition_id: str
    event_seq: int | None = None
    event_id: str | None = None
    payload: dict[str, Any] | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    # recorded by the attempt that registered the wait (see WaitSatisfied)
    within_attempt: bool = False


class EventRejected(AttemptWrite):
    """A matched event failed the wait's model validation; the wait is registered again."""

    type: Literal["run.event_rejected.v1"] = "run.event_rejected.v1"
    wait_id: str
    event_seq: int | None
    payload: dict[str, Any] | None
    error: str


class TaskRecorded(AttemptWrite):
    """A task of a workflow run ended (``completed``, ``skipped``, ``failed`` after its
    retries, ``cancelled``) or failed an attempt it will retry (``retrying``)."""

    type: Literal["run.task.v1"] = "run.task.v1"
    task: str
    status: Literal["completed", "skipped", "failed", "cancelled", "retrying"]
    output: Any = None
    error: ErrorInfo | None = None
    reason: str | None = None


class AttemptFailed(AttemptWrite):
    """An attempt raised and the task has retries left: the run retries at ``retry_at``."""

    type: Literal["run.attempt_failed.v1"] = "run.attempt_failed.v1"
    attempt: int
    error: ErrorInfo
    retry_at: float


class TimeoutRefreshed(AttemptWrite):
    type: Literal["run.timeout_refreshed.v1"] = "run.timeout_refreshed.v1"
    execution_timeout_s: float  # the new total, counted from the request


class WaitSatisfied(WaitResolution):
    """The wait resolved. ``fired``/``payloads`` name every satisfied condition; the
    ``event_*``/``payload``/``metadata`` fields describe the event that completed it."""

    type: Literal["run.wait_satisfied.v1"] = "run.wait_satisfied.v1"
    event_key: str | None
    event_seq: int | None
    event_id: str | None
    payload: dict[str, Any] | None
    metadata: dict[str, Any] = Field(default_factory=dict)
    fired: list[str] = Field(default_factory=list)
    payloads: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # Recorded by the attempt that registered the wait, which matched it at once (lookback,
    # a zero sleep). Such resolutions have subject tokens of their own, so NATS permissions
    # can let workers write them and not the engine's resolutions of a suspended run.
    within_attempt: bool = False


class WaitTimedOut(WaitResolution):
    type: Literal["run.wait_timed_out.v1"] = "run.wait_timed_out.v1"


class _Terminal(_Event):
    parent_run_id: str | None = None  # copied from the request so the parent is told


class RunCompleted(_Terminal, AttemptWrite):
    type: Literal["run.completed.v1"] = "run.completed.v1"
    output: Any
    tasks: list[TaskEnd] | None = None  # workflow tasks that ended just before the run


class RunFailed(_Terminal, AttemptWrite):
    type: Literal["run.failed.v1"] = "run.failed.v1"
    error: ErrorInfo


class RunTimedOut(_Terminal):
    type: Literal["run.timed_out.v1"] = "run.timed_out.v1"
    reason: str


class RunCancelled(_Terminal):
    type: Literal["run.cancelled.v1"] = "run.cancelled.v1"
    reason: str


class UnusableEntry(_Event):
    """Stands for a message in a run's log that is no usable event: bytes that do not
    decode, or a body whose type or run does not match the subject it was written to. Never
    written, only read: it keeps the log's sequence numbers (optimistic concurrency counts
    every message) while the state machine ignores it."""

    type: Literal["run.unusable_entry.v1"] = "run.unusable_entry.v1"
    subject: str
    reason: str


RunEvent = Annotated[
    RunRequested
    | AttemptStarted
    | StepRecorded
    | TaskRecorded
    | WaitStarted
    | WaitSatisfied
    | WaitTimedOut
    | WaitConditionMet
    | EventRejected
    | AttemptFailed
    | TimeoutRefreshed
    | RunCompleted
    | RunFailed
    | RunTimedOut
    | RunCancelled
    | UnusableEntry,
    Field(discriminator="type"),
]

_ADAPTER: TypeAdapter[RunEvent] = TypeAdapter(RunEvent)

# Subject token per event type: one token per type lets consumers filter by kind.
SUBJECT_TOKENS: dict[str, str] = {
    "run.requested.v1": "requested",
    "run.started.v1": "started",
    "run.step.v1": "step",
    "run.task.v1": "task",
    "run.wait_started.v1": "wait_started",
    "run.wait_satisfied.v1": "wait_satisfied",
    "run.wait_timed_out.v1": "wait_timed_out",
    "run.wait_condition_met.v1": "condition_met",
    "run.event_rejected.v1": "event_rejected",
    "run.attempt_failed.v1": "attempt_failed",
    "run.timeout_refreshed.v1": "timeout_refreshed",
    "run.completed.v1": "completed",
    "run.failed.v1": "failed",
    "run.timed_out.v1": "timed_out",
    "run.cancelled.v1": "cancelled",
    "run.unusable_entry.v1": "unusable_entry",
}
# Resolutions an attempt records itself (``within_attempt``): tokens of their own.
IN_ATTEMPT_TOKENS: dict[str, str] = {
    "run.wait_satisfied.v1": "wait_satisfied_in_attempt",
    "run.wait_condition_met.v1": "condition_met_in_attempt",
}
TERMINAL_TOKENS = ("completed", "failed", "timed_out", "cancelled")
# A workflow task whose cancel_if held: the engine cancels the run when it books this token
# (workers may not write the run's cancellation themselves).
TASK_CANCELLED_TOKEN = "task_cancelled"
# Attempts after the first (a resume, a retry, a takeover) start on a token of their own:
# a run that waited once then holds one message per subject, and its whole log comes back
# in one read (see ``run_log_reads``). Logs written before it have them on "started".
LATER_ATTEMPT_TOKEN = "restarted"


class EventDecodeError(ValueError):
    """Bytes in a run log that are not a known event."""


def subject_token(event: RunEvent) -> str:
    if isinstance(event, WaitSatisfied | WaitConditionMet) and event.within_attempt:
        return IN_ATTEMPT_TOKENS[event.type]
    if isinstance(event, AttemptStarted) and event.attempt > 1:
        return LATER_ATTEMPT_TOKEN
    if isinstance(event, TaskRecorded) and event.status == "cancelled":
        return TASK_CANCELLED_TOKEN
    return SUBJECT_TOKENS[event.type]


def _on_its_subject(event: RunEvent, token: str) -> bool:
    expected = subject_token(event)
    # (a later attempt stored on "started" comes from a log written before its own token)
    return token == expected or (expected == LATER_ATTEMPT_TOKEN and token == "started")


def decode_stored(subject: str, data: bytes) -> RunEvent:
    """Decode a message of a run's log (``<ns>.runs.<run_id>.<token>``); what does not
    decode, or does not belong on its subject, comes back as an :class:`UnusableEntry`."""
    run_id, token = run_subject_parts(subject)
    try:
        event = decode(data)
    except EventDecodeError as exc:
        return UnusableEntry(run_id=run_id, at=0.0, subject=subject, reason=str(exc)[:500])
    if event.run_id != run_id or not _on_its_subject(event, token):
        reason = f"a {event.type} body of run {event.run_id} on subject token {token!r}"
        return UnusableEntry(run_id=run_id, at=event.at, subject=subject, reason=reason)
    return event


def encode(event: RunEvent) -> bytes:
    # Fields at their defaults are left out (decoding fills them in): an unset optional
    # field would cost every event that carries it bytes in the server's memory for as long
    # as the run lives, for nothing. The type always stays: it picks the event's model.
    body = event.model_dump(mode="json", exclude_defaults=True)
    body["type"] = event.type
    return codec.dumps(body)


def decode(data: bytes) -> RunEvent:
    try:
        return _ADAPTER.validate_json(data)
    except ValidationError as exc:
        raise EventDecodeError(f"not a Tether run event: {exc}") from exc
