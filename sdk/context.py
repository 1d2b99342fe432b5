"""The durable context: what a task function calls to record steps and wait for events."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from tether.engine import codec
from tether.engine.events import StepRecorded, WaitStarted
from tether.engine.state import StepRecord, WaitRecord
from tether.engine.subjects import check_event_key
from tether.errors import NonDeterminismError, WaitTimeoutError, _Suspend
from tether.projections.cel_expressions import validate

if TYPE_CHECKING:
    from tether.attempt import Attempt

T = TypeVar("T")


class DurableContext:
    """Passed to every durable task. Each durable call is recorded with its position, kind
    and name; on replay the recording is returned instead of running the call again."""

    def __init__(self, attempt: Attempt) -> None:
        self._attempt = attempt
        self._position = 0

    @property
    def run_id(self) -> str:
        return self._attempt.state.run_id

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
        records = self._attempt.state.records
        if position >= len(records):
            return None
        record = records[position]
        recorded_name = record.name if isinstance(record, StepRecord) else record.event_key
        if record.kind != kind or recorded_name != name:
            raise NonDeterminismError(
                f"run {self.run_id}: durable call #{position} is {kind} {name!r} now, but the "
                f"history recorded {record.kind} {recorded_name!r}. Durable calls must happen "
                "in the same order on every replay; keep the old order for runs already in "
                "flight (or branch on a recorded value), or cancel them."
            )
        return record

    async def step(
        self, name: str, fn: Callable[..., Awaitable[T] | T], *args: Any, **kwargs: Any
    ) -> Any:
        """Run ``fn(*args, **kwargs)`` once and record its JSON result; replays return it."""
        record = self._next_record("step", name)
        if isinstance(record, StepRecord):
            return record.output
        self._attempt.check_live()
        result = fn(*args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        output = codec.to_json_value(result)
        await self._attempt.append(
            StepRecorded(
                run_id=self.run_id,
                at=self._attempt.clock(),
                position=self._position - 1,
                name=name,
                output=output,
            )
        )
        self._attempt.state.records.append(StepRecord(self._position - 1, name, output))
        return output

    async def wait_for_event(
        self,
        key: str,
        expression: str | None = None,
        *,
        timeout: timedelta | None = None,
    ) -> dict[str, Any]:
        """Wait durably for an event on ``key`` whose payload satisfies the CEL
        ``expression`` (payload as ``input``); returns the payload.

        The first time, the wait is recorded and the task suspends, freeing its slot. The
        task is re-run from the top once the wait resolves. Raises ``WaitTimeoutError`` if
        ``timeout`` passes first. Events pushed after this call began are considered.
        """
        check_event_key(key)
        record = self._next_record("wait", key)
        if isinstance(record, WaitRecord):
            if record.outcome == "satisfied":
                return dict(record.payload or {})
            if record.outcome == "timed_out":
                raise WaitTimeoutError(key, record.wait_id)
            raise _Suspend()
        expression = expression.strip() if expression else None
        validate(expression)  # a bad expression fails the task here, not in the matcher
        if timeout is not None and timeout.total_seconds() <= 0:
            raise ValueError("wait timeout must be positive")
        self._attempt.check_live()
        position = self._position - 1
        events_position = await self._attempt.events_position()
        now = self._attempt.clock()
        await self._attempt.append(
            WaitStarted(
                run_id=self.run_id,
                at=now,
                position=position,
                wait_id=f"{self.run_id}:{position}",
                task=self.task_name,
                event_key=key,
                expression=expression or None,
                events_position=events_position,
                timeout_at=now + timeout.total_seconds() if timeout is not None else None,
            )
        )
        raise _Suspend()
