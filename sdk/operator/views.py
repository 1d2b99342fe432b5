"""Runs as people see them, for the HTTP API and the CLI alike: a run read from its own log,
and the response models of ``tether.http.schemas`` built from folded runs and open waits."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tether.app import Tether
from tether.client import task_infos
from tether.engine.events import ErrorInfo
from tether.engine.events import RunEvent as StoredEvent
from tether.engine.subjects import check_run_id
from tether.errors import RunNotFoundError
from tether.http import schemas
from tether.projections.run_view import PendingWait, RunView, fold_view

Log = list[tuple[int, StoredEvent]]


async def read_log(app: Tether, run_id: str) -> Log:
    """The run's log as stored now; RunNotFoundError if it has none."""
    check_run_id(run_id)
    conn = await app.connection()
    stored = await conn.store.read(run_id)
    if not stored:
        raise RunNotFoundError(run_id)
    return stored


async def read_view(app: Tether, run_id: str) -> RunView:
    """The run folded from its log as stored now; RunNotFoundError if it has none."""
    return fold_view(run_id, await read_log(app, run_id))


def summary(view: RunView) -> schemas.RunSummary:
    state = view.state
    pending = view.wait
    return schemas.RunSummary(
        run_id=view.run_id,
        task=state.task,
        status=state.status,
        attempt=state.attempt,
        created_at=view.created_at,
        updated_at=view.updated_at,
        ended_at=state.ended_at,
        deadline=None if state.is_terminal else state.deadline,
        error=ErrorInfo.model_validate(state.error) if state.error else None,
        waiting_on=pending.event_key if pending else None,
        decision=(
            schemas.RunDecision.model_validate(view.decision, from_attributes=True)
            if view.decision
            else None
        ),
        last_events=[
            schemas.EventBrief.model_validate(e, from_attributes=True) for e in view.recent
        ],
    )


def wait(pending: PendingWait) -> schemas.Wait:
    return schemas.Wait.model_validate(pending, from_attributes=True)


def run_list(views: Iterable[RunView]) -> schemas.RunList:
    return schemas.RunList(runs=[summary(view) for view in views])


def wait_list(waits: Sequence[PendingWait], limit: int | None = None) -> schemas.WaitList:
    """The first ``limit`` of ``waits``; ``total`` counts them all."""
    shown = waits if limit is None else waits[:limit]
    return schemas.WaitList(waits=[wait(w) for w in shown], total=len(waits))


def detail(run_id: str, stored: Log) -> schemas.RunDetail:
    """The run, its open wait, its whole timeline and a workflow run's tasks, from its log."""
    view = fold_view(run_id, stored)
    fields = summary(view).model_dump(exclude={"last_events"})
    state = view.state
    run = schemas.Run(**fields, input=state.input, output=state.output, metadata=state.metadata)
    notes = {brief.seq: brief.note for brief in view.recent}  # the fold keeps every brief
    events = [
        schemas.RunEvent(seq=seq, type=event.type, at=event.at, note=notes.get(seq, ""), data=event)
        for seq, event in stored
    ]
    pending = view.wait
    return schemas.RunDetail(
        run=run, wait=wait(pending) if pending else None, events=events, tasks=tasks(view)
    )


def tasks(view: RunView) -> list[schemas.RunTask]:
    """A workflow run's tasks with their statuses (``task_infos``: the SDK's reading); none
    for a durable task's run."""
    return [
        schemas.RunTask.model_validate(info, from_attributes=True)
        for info in task_infos(view.state).values()
    ]


async def read_detail(app: Tether, run_id: str) -> schemas.RunDetail:
    return detail(run_id, await read_log(app, run_id))
