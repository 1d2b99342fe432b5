"""Versioned run events: every transition of a run is one of these, appended to its log.

Each type has a stable name (``run.<what>.v<n>``) and a subject token. Decoding is strict:
an unknown type or a malformed body raises ``EventDecodeError`` rather than being guessed.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from tether.engine import codec


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: str
    at: float  # epoch seconds, from the writer's clock


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


class AttemptStarted(_Event):
    type: Literal["run.started.v1"] = "run.started.v1"
    attempt: int
    worker: str


class StepRecorded(_Event):
    type: Literal["run.step.v1"] = "run.step.v1"
    position: int
    name: str
    output: Any


class WaitStarted(_Event):
    """The task registered a wait and suspended; it holds no slot until the wait resolves."""

    type: Literal["run.wait_started.v1"] = "run.wait_started.v1"
    position: int
    wait_id: str
    task: str
    event_key: str
    expression: str | None
    events_position: int  # last events-stream sequence before the wait; match after it
    timeout_at: float | None


class WaitSatisfied(_Event):
    type: Literal["run.wait_satisfied.v1"] = "run.wait_satisfied.v1"
    wait_id: str
    event_key: str
    event_seq: int
    event_id: str | None
    payload: dict[str, Any]
    metadata: dict[str, Any] = Field(default_factory=dict)


class WaitTimedOut(_Event):
    type: Literal["run.wait_timed_out.v1"] = "run.wait_timed_out.v1"
    wait_id: str


class RunCompleted(_Event):
    type: Literal["run.completed.v1"] = "run.completed.v1"
    output: Any


class RunFailed(_Event):
    type: Literal["run.failed.v1"] = "run.failed.v1"
    error: ErrorInfo


class RunTimedOut(_Event):
    type: Literal["run.timed_out.v1"] = "run.timed_out.v1"
    reason: str


class RunCancelled(_Event):
    type: Literal["run.cancelled.v1"] = "run.cancelled.v1"
    reason: str


RunEvent = Annotated[
    RunRequested
    | AttemptStarted
    | StepRecorded
    | WaitStarted
    | WaitSatisfied
    | WaitTimedOut
    | RunCompleted
    | RunFailed
    | RunTimedOut
    | RunCancelled,
    Field(discriminator="type"),
]

_ADAPTER: TypeAdapter[RunEvent] = TypeAdapter(RunEvent)

# Subject token per event type: one token per type lets consumers filter by kind.
SUBJECT_TOKENS: dict[str, str] = {
    "run.requested.v1": "requested",
    "run.started.v1": "started",
    "run.step.v1": "step",
    "run.wait_started.v1": "wait_started",
    "run.wait_satisfied.v1": "wait_satisfied",
    "run.wait_timed_out.v1": "wait_timed_out",
    "run.completed.v1": "completed",
    "run.failed.v1": "failed",
    "run.timed_out.v1": "timed_out",
    "run.cancelled.v1": "cancelled",
}
TERMINAL_TOKENS = ("completed", "failed", "timed_out", "cancelled")


class EventDecodeError(ValueError):
    """Bytes in a run log that are not a known event."""


def subject_token(event: RunEvent) -> str:
    return SUBJECT_TOKENS[event.type]


def encode(event: RunEvent) -> bytes:
    return codec.dumps(event.model_dump(mode="json"))


def decode(data: bytes) -> RunEvent:
    try:
        return _ADAPTER.validate_json(data)
    except ValidationError as exc:
        raise EventDecodeError(f"not a Tether run event: {exc}") from exc
