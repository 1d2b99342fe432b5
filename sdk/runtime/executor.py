"""Executing one attempt of a durable task: load the run, replay the function from the
top in a durable context, and record the outcome."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from opentelemetry.trace import SpanKind

from tether.engine import codec
from tether.engine.commands import EXECUTION_TIMEOUT_SCOPE
from tether.engine.events import (
    AttemptFailed,
    ErrorInfo,
    RunCompleted,
    RunEvent,
    RunFailed,
    RunTimedOut,
)
from tether.engine.state import RunState, fold
from tether.engine.store import EventStore
from tether.engine.tracing import Tracing
from tether.errors import NonRetryableError, _Abandon, _Ended, _Interrupted, _Suspend
from tether.runtime.context import DurableContext
from tether.runtime.current import current_context
from tether.runtime.session import (
    Attempt,
    ChildTrigger,
    EventReader,
    _no_child_trigger,
    _no_event_reader,
)
from tether.runtime.suspended_logs import CarriedEvent, SuspendedLogs

if TYPE_CHECKING:
    from tether.task import DurableTask

log = logging.getLogger("tether.worker")

Outcome = Literal[
    "completed",
    "failed",
    "retrying",
    "timed_out",
    "cancelled",
    "suspended",
    "skipped",
    "abandoned",
    "behind",
    "interrupted",
]


@dataclass(frozen=True, slots=True)
class AttemptResult:
    outcome: Outcome
    detail: str = ""


def error_info(exc: BaseException) -> ErrorInfo:
    """What a run or task records of an exception (its type and message, cut short)."""
    message = str(exc) or exc.__class__.__name__
    return ErrorInfo(type=type(exc).__name__, message=message[:4000])


async def run_attempt(
    task: DurableTask[Any, Any],
    store: EventStore,
    run_id: str,
    *,
    worker_id: str,
    events_position: Callable[[], Awaitable[int]],
    read_events: EventReader = _no_event_reader,
    clock: Callable[[], float] = time.time,
    tracing: Tracing | None = None,
    dispatched_seq: int = 0,
    trigger_child: ChildTrigger = _no_child_trigger,
    suspended: SuspendedLogs | None = None,
    carried: CarriedEvent | None = None,
) -> AttemptResult:
    """Execute ``run_id`` once, from the top, replaying its recorded durable calls.

    ``dispatched_seq`` is the log sequence the dispatch was sent for. A read that ends before
    it comes from a replica that has not caught up yet: the outcome is ``behind`` and the
    caller tries again later, instead of taking the run for still waiting and dropping it.

    With ``suspended`` (the logs of runs this worker suspended) and the event the dispatch
    ``carried``, a new run starts and a suspended run resumes without a read of its log;
    an attempt that suspends keeps its log there."""
    raw = None
    if suspended is not None and carried is not None:  # (an empty SuspendedLogs is falsy)
        raw = suspended.log_for(run_id, carried)
    if raw is None:
        raw = await store.read_raw(run_id)
    if dispatched_seq and (not raw or raw[-1][0] < dispatched_seq):
        last = raw[-1][0] if raw else 0
        return AttemptResult("behind", f"log read up to seq {last}, dispatched at {dispatched_seq}")
    state = fold(run_id, [(seq, event) for seq, event, _ in raw])
    if not state.exists:
        return AttemptResult("skipped", "unknown run")
    if state.is_terminal or state.status == "waiting":
        return AttemptResult("skipped", f"run is {state.status}")
    if state.task != task.name:
        log.error(
            "dispatch of a run of another task dropped",
            extra={"run_id": run_id, "task": task.name, "run_task": state.task},
        )
        return AttemptResult("skipped", f"run is of task {state.task}, not {task.name}")
    tracing = tracing or Tracing()
    headers = {seq: h for seq, _, h in raw}
    with tracing.span(
        f"process {state.task}",
        kind=SpanKind.CONSUMER,
        parent=tracing.context_from(headers.get(raw[0][0])),
        attributes={
            "messaging.system": "nats",
            "messaging.operation.name": "process",
            "messaging.operation.type": "process",
            "tether.run_id": run_id,
            "tether.task": state.task,
            "tether.attempt": state.attempt + 1,
            "tether.worker": worker_id,
        },
    ) as span:
        appended: list[tuple[int, RunEvent, dict[str, str]]] = []
        result = await _run(
            task,
            store,
            state,
            appended,
            worker_id=worker_id,
            events_position=events_position,
            read_events=read_events,
            clock=clock,
            tracing=tracing,
            headers=headers,
            trigger_child=trigger_child,
        )
        span.set_attribute("tether.outcome", result.outcome)
        if suspended is not None and result.outcome == "suspended":
            suspended.keep(run_id, [*raw, *appended])
        if result.outcome in ("completed", "failed", "timed_out"):
            tracing.record_run(state, result.outcome, headers.get(raw[0][0]), clock())
        return result


async def _run(
    task: DurableTask[Any, Any],
    store: EventStore,
    state: RunState,
    appended: list[tuple[int, RunEvent, dict[str, str]]],
    *,
    worker_id: str,
    events_position: Callable[[], Awaitable[int]],
    read_events: EventReader,
    clock: Callable[[], float],
    tracing: Tracing,
    headers: dict[int, dict[str, str]],
    trigger_child: ChildTrigger,
) -> AttemptResult:
    run_id = state.run_id
    attempt = Attempt(
        store,
        state,
        state.attempt + 1,
        events_position,
        clock,
        read_events,
        tracing,
        headers,
        trigger_child=trigger_child,
        worker_id=worker_id,
    )
    attempt.appended = appended  # the caller keeps the log of a run that suspends
    parent = state.parent_run_id
    now = clock()
    try:
        if now >= state.deadline:
            await attempt.append(
                RunTimedOut(
                    run_id=run_id, at=now, reason=_timeout_reason(state), parent_run_id=parent
                )
            )
            return AttemptResult("timed_out")
        if _start_matters(state):
            await attempt.begin()
        else:
            attempt.begin_lazily()
        ctx = DurableContext(attempt)
        token = current_context.set(ctx)
        try:
            timeout = asyncio.timeout(state.deadline - clock())
            attempt._timeout = timeout
            async with timeout:
                output = await task.invoke(state.input, ctx)
        except (_Suspend, _Ended, _Abandon, _Interrupted, asyncio.CancelledError):
            raise
        except TimeoutError as exc:
            if not timeout.expired():  # the task's own TimeoutError: an ordinary failure
                return await _record_failure(task, attempt, exc, clock)
            await attempt.append(
                RunTimedOut(
                    run_id=run_id, at=clock(), reason=_timeout_reason(state), parent_run_id=parent
                )
            )
            return AttemptResult("timed_out")
        except Exception as exc:
            return await _record_failure(task, attempt, exc, clock)
        finally:
            current_context.reset(token)
        try:
            encoded = codec.to_json_value(output)
        except codec.EncodingError as exc:
            await attempt.append(
                RunFailed(run_id=run_id, at=clock(), error=error_info(exc), parent_run_id=parent)
            )
            return AttemptResult("failed", str(exc))
        await attempt.append(
            RunCompleted(run_id=run_id, at=clock(), output=encoded, parent_run_id=parent)
        )
        return AttemptResult("completed")
    except _Suspend:
        return AttemptResult("suspended")
    except _Ended as ended:
        return AttemptResult(ended.outcome)  # type: ignore[arg-type]
    except _Interrupted as exc:
        return AttemptResult("interrupted", str(exc))
    except _Abandon:
        return await _after_conflict(store, run_id, attempt.number)
    finally:
        await attempt.close()


def _start_matters(state: RunState) -> bool:
    """Must this attempt record its start before running the task? When it takes the run
    over from an attempt that went silent (the newer number is what stops the old one), and
    when a schedule timeout waits for the run's first start."""
    return (
        state.status == "running"
        or state.in_attempt
        or (state.schedule_timeout_s is not None and state.attempt == 0)
    )


async def _after_conflict(store: EventStore, run_id: str, number: int) -> AttemptResult:
    """Someone else wrote to the run under this attempt. If the run is over, waiting, or in
    a newer attempt's hands, this one is simply done; if it is still running on this
    attempt or an older one (a write that landed late, after a NATS outage), nobody else
    will carry it on, so the dispatch is handed back and a new attempt replays it."""
    try:
        state = fold(run_id, await store.read(run_id))
    except Exception as exc:
        return AttemptResult("interrupted", f"could not re-read the run: {exc!r}")
    # (an earlier attempt's write landing late, after this attempt read the log, also
    # leaves the run running on a number at or below ours)
    if state.status == "running" and state.attempt <= number:
        return AttemptResult("interrupted", "no newer attempt holds the run; handed back")
    return AttemptResult("abandoned", f"the run changed under this attempt (now {state.status})")


async def _record_failure(
    task: DurableTask[Any, Any], attempt: Attempt, exc: Exception, clock: Callable[[], float]
) -> AttemptResult:
    """Retry with backoff while retries remain; fail at once on NonRetryableError."""
    state = attempt.state
    fields = {"run_id": state.run_id, "task": state.task, "attempt": attempt.number}
    now = clock()
    retryable = not isinstance(exc, NonRetryableError)
    if retryable and state.failures < task.retries:
        delay = task.retry_delay(state.failures + 1)
        if now + delay < state.deadline:
            await attempt.append(
                AttemptFailed(
                    run_id=state.run_id,
                    at=now,
                    attempt=attempt.number,
                    error=error_info(exc),
                    retry_at=now + delay,
                )
            )
            # WARNING and ERROR reach stderr even where the application set up no logging
            log.warning(
                f"run {state.run_id} of {state.task}: attempt {attempt.number} failed with "
                f"{type(exc).__name__}: {exc}; retrying in {delay:g}s",
                exc_info=exc,
                extra=fields,
            )
            return AttemptResult("retrying", repr(exc))
    await attempt.append(
        RunFailed(
            run_id=state.run_id, at=now, error=error_info(exc), parent_run_id=state.parent_run_id
        )
    )
    log.error(
        f"run {state.run_id} of {state.task} failed in attempt {attempt.number}: "
        f"{type(exc).__name__}: {exc}",
        exc_info=exc,
        extra=fields,
    )
    return AttemptResult("failed", repr(exc))


def _timeout_reason(state: RunState) -> str:
    return f"execution timeout of {state.execution_timeout_s:g}s passed {EXECUTION_TIMEOUT_SCOPE}"
