"""What a person does to runs, with checks first so a refused action writes nothing: push an
event, approve or reject a run's open wait, cancel a run. Shared by the HTTP API and the CLI.

The decision convention: a run waiting on key ``K`` with the expression
``input.runId == '<run id>'`` is approved by pushing
``{"runId": "<run id>", "decision": "approve", "reason": "..."}`` to ``K`` (``"reject"`` to
reject; ``reason`` only when given). The caller's name goes into the event's metadata as
``{"approver": name}``, and the engine copies it onto the run's ``run.wait_satisfied.v1``.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from tether.app import Tether
from tether.client import RunInfo
from tether.engine.expressions import satisfies
from tether.engine.subjects import check_event_key, check_run_id
from tether.errors import TetherError
from tether.events_client import PushResult
from tether.http import schemas
from tether.operator.auth import Identity
from tether.operator.views import read_view

log = logging.getLogger("tether.decisions")

Decision = Literal["approve", "reject"]


class ActionRefusedError(TetherError):
    """The action was refused before anything was written. ``status`` is the HTTP status."""

    status = 409


class NotAllowedError(ActionRefusedError):
    status = 403


class NoOpenWaitError(ActionRefusedError):
    pass


class DecisionNotMatchedError(ActionRefusedError):
    pass


class AlreadyDecidedError(ActionRefusedError):
    pass


def decision_payload(run_id: str, decision: Decision, reason: str | None) -> dict[str, Any]:
    payload: dict[str, Any] = {"runId": run_id, "decision": decision}
    if reason:
        payload["reason"] = reason
    return payload


async def push_decision(
    app: Tether,
    run_id: str,
    decision: Decision,
    *,
    identity: Identity,
    reason: str | None = None,
) -> schemas.Decision:
    """Push the decision event for the run's open wait, or raise without pushing anything."""
    view = await read_view(app, run_id)
    status = view.state.status
    if view.state.is_terminal:
        raise NoOpenWaitError(
            f"run {run_id} has already ended (status: {status}); there is nothing to decide"
        )
    wait = view.wait
    if wait is None:
        raise NoOpenWaitError(
            f"run {run_id} is {status} and has no open wait for a decision; approve or reject "
            "once it waits (GET /api/waits lists the open ones)"
        )
    if not identity.may_push(wait.event_key):
        raise NotAllowedError(
            f"{identity.name!r} may not decide waits on event key {wait.event_key!r} "
            f"(allowed keys: {', '.join(identity.keys) or 'none'})"
        )
    payload = decision_payload(run_id, decision, reason)
    if not satisfies(wait.expression, payload):
        raise DecisionNotMatchedError(
            f"run {run_id} waits on {wait.event_key!r} for {wait.expression!r}, which the "
            f"{decision} payload {payload} does not satisfy; push an event that matches "
            f"instead (POST /api/events/{wait.event_key} or `tether events push`)"
        )
    event = await app.events.push(
        wait.event_key,
        payload,
        id=f"{wait.wait_id}@{wait.started_seq}:decision",
        metadata={"approver": identity.name},
    )
    if event.duplicate:
        raise AlreadyDecidedError(
            f"a decision for run {run_id} (wait {wait.wait_id}) was already pushed as event "
            f"{event.id}; the run resumes once the engine applies it"
        )
    log.info(
        "decision pushed",
        extra={
            "run_id": run_id,
            "wait_id": wait.wait_id,
            "decision": decision,
            "approver": identity.name,
            "event_key": wait.event_key,
            "event_seq": event.seq,
        },
    )
    return schemas.Decision(
        run_id=run_id,
        wait_id=wait.wait_id,
        event_key=wait.event_key,
        decision=decision,
        payload=payload,
        approver=identity.name,
        event=schemas.EventRef(id=event.id, seq=event.seq),
    )


async def push_event(
    app: Tether,
    key: str,
    data: dict[str, Any],
    *,
    identity: Identity,
    event_id: str | None = None,
) -> PushResult:
    """Push ``data`` to ``key`` as ``identity``; raises before pushing when not allowed."""
    check_event_key(key)
    if not identity.may_push(key):
        raise NotAllowedError(
            f"{identity.name!r} may not push to event key {key!r} "
            f"(allowed keys: {', '.join(identity.keys) or 'none'})"
        )
    result = await app.events.push(key, data, id=event_id, metadata={"approver": identity.name})
    log.info(
        "event pushed",
        extra={
            "event_key": key,
            "event_id": result.id,
            "event_seq": result.seq,
            "duplicate": result.duplicate,
            "approver": identity.name,
        },
    )
    return result


async def cancel(
    app: Tether, run_id: str, *, identity: Identity, reason: str | None = None
) -> RunInfo:
    """Cancel the run, naming who did it in the recorded reason."""
    check_run_id(run_id)
    if not identity.can_cancel:
        raise NotAllowedError(f"{identity.name!r} may not cancel runs (token lacks 'cancel')")
    text = f"cancelled by {identity.name}" + (f": {reason}" if reason else "")
    info = await app.runs.cancel(run_id, reason=text)
    log.info("run cancelled", extra={"run_id": run_id, "by": identity.name})
    return info
