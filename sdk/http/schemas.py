"""The HTTP API's request and response bodies.

The handlers validate requests and build every answer with these models, ``tether runs ...
--json`` and ``tether waits list --json`` print the same ones, and the OpenAPI document
(``tether.http.openapi``) is generated from them, so the three cannot drift apart. Times are
epoch seconds.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from tether.engine.events import ErrorInfo
from tether.engine.events import RunEvent as StoredEvent
from tether.engine.state import RunStatus
from tether.engine.workflow_decisions import TaskStatus

STATUSES: tuple[str, ...] = get_args(RunStatus)
MAX_REASON = 2000
# ``GET /api/runs`` answers where the next page of older finished runs starts (its
# ``before``) in this header, when there may be one.
NEXT_BEFORE_HEADER = "X-Tether-Next-Before"

# -- requests ---------------------------------------------------------------------------------


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PushBody(_Request):
    """An event to push to a key."""

    data: dict[str, Any] = Field(description="the event payload; the waits' CEL sees it as input")
    id: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        pattern=r"^[\x21-\x7e]+$",
        description="idempotency key: the same id within 2 minutes stores nothing new",
    )


class DecisionBody(_Request):
    """Approve or reject a run's open wait."""

    reason: str | None = Field(
        default=None, max_length=MAX_REASON, description="passed to the task in the payload"
    )


class CancelBody(_Request):
    """Cancel a run."""

    reason: str | None = Field(
        default=None,
        max_length=MAX_REASON,
        description="recorded on the run after 'cancelled by <caller>: '",
    )


# -- responses --------------------------------------------------------------------------------


class _Response(BaseModel):
    # a field the document does not describe is a server bug: refuse to build such an answer
    model_config = ConfigDict(extra="forbid")


class ErrorDetail(_Response):
    field: str = Field(description="the request field at fault, dotted; empty for the body")
    message: str = Field(description="what is wrong with it")


class ErrorBody(_Response):
    status: int = Field(description="the HTTP status, repeated")
    message: str = Field(description="what went wrong and what to do about it")
    details: list[ErrorDetail] = Field(description="one entry per invalid field (422), else []")


class Error(_Response):
    """Every error answer: a refused request writes nothing."""

    error: ErrorBody = Field(description="what went wrong")


class Health(_Response):
    ok: bool = Field(description="true while the API can reach NATS")
    nats: str = Field(
        description="the API's NATS connection: connected, reconnecting, closed or not opened"
    )
    runs_cursor: int = Field(description="the last run-log sequence the run index has applied")


class EventBrief(_Response):
    """One run event, reduced to what a run list shows."""

    seq: int = Field(description="sequence of the event in the run log stream")
    type: str = Field(description="event type, e.g. run.wait_satisfied.v1")
    at: float = Field(description="when it was recorded")
    note: str = Field(description="a short human description, e.g. 'approve by alice'")


class RunDecision(_Response):
    """How a person decided the run's latest wait (the decision convention), or that it
    expired."""

    outcome: Literal["approved", "rejected", "expired"] = Field(description="what happened")
    by: str | None = Field(description="who decided (the approver identity), if known")
    reason: str | None = Field(description="the reason given with the decision")
    at: float = Field(description="when the wait was resolved")


class _RunFields(_Response):
    run_id: str = Field(description="the run's id")
    task: str = Field(description="name of the durable task")
    status: RunStatus = Field(description="where the run is in its life")
    attempt: int = Field(description="number of the latest attempt (0: never started)")
    created_at: float = Field(description="when the run was requested")
    updated_at: float = Field(description="when its latest event was recorded")
    ended_at: float | None = Field(description="when it reached a terminal status")
    deadline: float | None = Field(description="its execution deadline; null once it has ended")
    error: ErrorInfo | None = Field(description="why it failed, timed out or was cancelled")
    waiting_on: str | None = Field(description="event key of the open wait a person may decide")
    decision: RunDecision | None = Field(description="how its latest wait was decided")


class RunSummary(_RunFields):
    """A run as lists show it."""

    last_events: list[EventBrief] = Field(description="its latest events, oldest first")


class RunList(_Response):
    runs: list[RunSummary] = Field(description="most recently updated first")


class Run(_RunFields):
    """A run with its input, output and metadata."""

    input: Any = Field(description="the run's input as requested")
    output: Any = Field(description="the task's result once completed, else null")
    metadata: dict[str, Any] = Field(description="metadata given when the run was requested")


class WaitAction(_Response):
    """What the task passed to wait_for_event as description and details."""

    source: Literal["wait"] = Field(description="the task described the decision itself")
    description: str | None = Field(description="what the person is asked to decide")
    details: dict[str, Any] | None = Field(description="structured details of the decision")


class StepAction(_Response):
    """The output of the last step recorded before the wait."""

    source: Literal["step"] = Field(description="taken from the step before the wait")
    step: str = Field(description="the step's name")
    output: Any = Field(description="the step's recorded result")


class Wait(_Response):
    """An open wait on a user event: what a person is asked to decide."""

    run_id: str = Field(description="the run that waits")
    task: str = Field(description="name of the run's durable task")
    wait_id: str = Field(description="the wait's id within the run")
    started_seq: int = Field(description="log sequence of the wait's registration")
    event_key: str = Field(description="the key a decision is pushed to")
    expression: str | None = Field(description="CEL over the payload (input); null: any event")
    conventional: bool = Field(
        description="the expression is input.runId == '<run>', so approve and reject match "
        "it; otherwise push a matching event"
    )
    other_conditions: int = Field(description="further clauses needed before the run resumes")
    label: str | None = Field(description="the wait's label (wait_for)")
    since: float = Field(description="when the wait began")
    deadline: float | None = Field(description="the wait's own timeout")
    run_deadline: float = Field(description="the run's execution deadline")
    description: str | None = Field(description="what the person is asked to decide")
    details: dict[str, Any] | None = Field(description="structured details of the decision")
    proposed_action: Annotated[WaitAction | StepAction, Field(discriminator="source")] | None = (
        Field(description="the explicit description and details, else the last step's output")
    )


class WaitList(_Response):
    waits: list[Wait] = Field(description="longest waiting first")
    total: int = Field(description="open waits matching the filters, before the limit")


class RunEvent(_Response):
    """One entry of a run's timeline."""

    seq: int = Field(description="sequence of the event in the run log stream")
    type: str = Field(description="event type, e.g. run.wait_satisfied.v1")
    at: float = Field(description="when it was recorded")
    note: str = Field(description="a short human description, e.g. 'approve by alice'")
    data: StoredEvent = Field(
        description="the stored event; run.wait_satisfied.v1 carries the payload and "
        "metadata.approver"
    )


class RunTask(_Response):
    """One task of a workflow run, as the run's log says it stands."""

    name: str = Field(description="the task's name in the workflow")
    status: TaskStatus = Field(
        description="pending: not run yet; waiting: its parents have finished and it waits "
        "on its wait_for (a gate waits for a decision); running: in the run's current "
        "attempt; failed: after its retries; cancelled: by cancel_if, a failure upstream "
        "or the run's end"
    )
    parents: list[str] = Field(description="the tasks it runs after, by name")
    output: Any = Field(description="what it returned; {skipped: true} when skipped; else null")
    error: ErrorInfo | None = Field(description="why it failed, after its retries")


class RunDetail(_Response):
    run: Run = Field(description="the run")
    wait: Wait | None = Field(description="the open wait a person may decide, if any")
    events: list[RunEvent] = Field(description="the run's whole log, oldest first")
    tasks: list[RunTask] = Field(
        description="a workflow run's tasks in the workflow's order, then its on_failure "
        "task once that ran; empty for a durable task's run"
    )


class EventRef(_Response):
    id: str = Field(description="the event's id (its Nats-Msg-Id)")
    seq: int = Field(description="its sequence in the events stream")


class Decision(_Response):
    """A decision event pushed for a run's open wait; the run resumes once it is applied."""

    run_id: str = Field(description="the run decided")
    wait_id: str = Field(description="the wait the decision answers")
    event_key: str = Field(description="the key the decision was pushed to")
    decision: Literal["approve", "reject"] = Field(description="what was decided")
    payload: dict[str, Any] = Field(description="{runId, decision, reason?} as pushed")
    approver: str = Field(description="the caller, recorded on the run as metadata.approver")
    event: EventRef = Field(description="the pushed event")


class PushResult(_Response):
    id: str = Field(description="the event's id: the given one, else a generated one")
    seq: int = Field(description="its sequence in the events stream")
    duplicate: bool = Field(description="an event with this id was already stored")
    key: str = Field(description="the event key")


class Overview(_Response):
    """Counted over the runs the API holds: every open run and the most recently finished
    ones, not the whole history."""

    tasks: list[str] = Field(description="names of the tasks with open or recent runs, sorted")
    statuses: dict[RunStatus, int] = Field(
        description="number of runs in each status: every open run, and among finished "
        "runs only the most recent ones"
    )


class Identity(_Response):
    """The caller, as its token names it."""

    name: str = Field(description="recorded as the approver of what it pushes")
    keys: list[str] = Field(description="glob patterns of the event keys it may push or decide")
    cancel: bool = Field(description="it may cancel runs")
