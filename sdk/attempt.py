"""One attempt of a durable task: load the run, replay the function, record the outcome."""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from tether.engine import codec
from tether.engine.events import (
    AttemptStarted,
    ErrorInfo,
    RunCompleted,
    RunEvent,
    RunFailed,
    RunTimedOut,
    subject_token,
)
from tether.engine.state import RunState, evolve, fold
from tether.engine.store import ConcurrencyConflictError, EventStore
from tether.errors import _Abandon, _Suspend

if TYPE_CHECKING:
    from tether.task import DurableTask

log = logging.getLogger("tether.worker")

Outcome = Literal["completed", "failed", "timed_out", "suspended", "skipped", "abandoned"]


class Attempt:
    """Owns the run for one attempt. Every append is guarded by the sequence this attempt last
    saw, so if anyone else writes to the run, this attempt stops instead of diverging."""

    def __init__(
        self,
        store: EventStore,
        state: RunState,
        number: int,
        events_position: Callable[[], Awaitable[int]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.state = state
        self.number = number
        self.events_position = events_position
        self.clock = clock
        self._token = uuid.uuid4().hex[:12]

    async def append(self, event: RunEvent) -> int:
        msg_id = f"{event.run_id}:{self.state.last_seq}:{subject_token(event)}:{self._token}"
        try:
            seq = await self.store.append(
                event, expected_last_seq=self.state.last_seq, msg_id=msg_id
            )
        except ConcurrencyConflictError:
            raise _Abandon() from None
        self.state.last_seq = seq
        return seq

    def check_live(self) -> None:
        """Cooperative cancellation point before side effects (used by later features)."""


@dataclass(frozen=True, slots=True)
class AttemptResult:
    outcome: Outcome
    detail: str = ""


def _error_info(exc: BaseException) -> ErrorInfo:
    message = str(exc) or exc.__class__.__name__
    return ErrorInfo(type=type(exc).__name__, message=message[:4000])


async def run_attempt(
    task: DurableTask[Any, Any],
    store: EventStore,
    run_id: str,
    *,
    worker_id: str,
    events_position: Callable[[], Awaitable[int]],
    clock: Callable[[], float] = time.time,
) -> AttemptResult:
    """Execute ``run_id`` once, from the top, replaying its recorded durable calls."""
    from tether.context import DurableContext

    state = fold(run_id, await store.read(run_id))
    if not state.exists:
        return AttemptResult("skipped", "unknown run")
    if state.is_terminal or state.status == "waiting":
        return AttemptResult("skipped", f"run is {state.status}")

    attempt = Attempt(store, state, state.attempt + 1, events_position, clock)
    now = clock()
    try:
        if now >= state.deadline:
            await attempt.append(
                RunTimedOut(run_id=run_id, at=now, reason=_timeout_reason(state))
            )
            return AttemptResult("timed_out")
        seq = await attempt.append(
            AttemptStarted(run_id=run_id, at=now, attempt=attempt.number, worker=worker_id)
        )
        evolve(state, AttemptStarted(run_id=run_id, at=now, attempt=attempt.number,
                                     worker=worker_id), seq)
        ctx = DurableContext(attempt)
        try:
            async with asyncio.timeout(state.deadline - clock()):
                output = await task.invoke(state.input, ctx)
        except TimeoutError:
            await attempt.append(
                RunTimedOut(run_id=run_id, at=clock(), reason=_timeout_reason(state))
            )
            return AttemptResult("timed_out")
        except (_Suspend, _Abandon, asyncio.CancelledError):
            raise
        except Exception as exc:
            log.info(
                "task failed",
                extra={"run_id": run_id, "task": state.task, "error": repr(exc),
                       "trace": traceback.format_exc(limit=5)},
            )
            await attempt.append(RunFailed(run_id=run_id, at=clock(), error=_error_info(exc)))
            return AttemptResult("failed", repr(exc))
        try:
            encoded = codec.to_json_value(output)
        except codec.EncodingError as exc:
            await attempt.append(RunFailed(run_id=run_id, at=clock(), error=_error_info(exc)))
            return AttemptResult("failed", str(exc))
        await attempt.append(RunCompleted(run_id=run_id, at=clock(), output=encoded))
        return AttemptResult("completed")
    except _Suspend:
        return AttemptResult("suspended")
    except _Abandon:
        return AttemptResult("abandoned", "the run changed under this attempt")


def _timeout_reason(state: RunState) -> str:
    return (
        f"execution timeout of {state.execution_timeout_s:g}s passed "
        "(it covers the whole run, waits included)"
    )
