"""What the durable context needs around a wait: its condition records, the conditions an
attempt finds already met (lookback, a zero sleep), and the wait's span once resolved."""

from __future__ import annotations

from typing import Any

from tether.conditions import Condition, SleepCondition
from tether.engine.events import ConditionSpec, RunEvent, WaitConditionMet, WaitSatisfied
from tether.engine.expressions import satisfies
from tether.engine.state import WaitRecord
from tether.engine.tracing import EVENT_TRACEPARENT
from tether.runtime.session import Attempt


def condition_spec(condition_id: str, condition: Condition, now: float) -> ConditionSpec:
    if isinstance(condition, SleepCondition):
        return ConditionSpec(
            id=condition_id,
            key=condition.result_key,
            kind="sleep",
            due_at=now + condition.duration.total_seconds(),
        )
    expression = condition.expression.strip() if condition.expression else None
    return ConditionSpec(
        id=condition_id,
        key=condition.result_key,
        kind="event",
        event_key=condition.event_key,
        expression=expression or None,
    )


def within_attempt(event: RunEvent) -> RunEvent:
    """Mark a resolution this attempt records itself (lookback, a zero sleep): it goes to
    subjects of its own, which a worker may write while the engine's are closed to it."""
    if isinstance(event, WaitSatisfied | WaitConditionMet):
        return event.model_copy(update={"within_attempt": True})
    return event


async def already_satisfied(
    attempt: Attempt, spec: ConditionSpec, condition: Condition, events_position: int, now: float
) -> tuple[int | None, dict[str, Any] | None, str | None] | None:
    if isinstance(condition, SleepCondition):
        return (None, None, None) if condition.duration.total_seconds() == 0 else None
    if condition.lookback is None:
        return None
    since = now - condition.lookback.total_seconds()
    events = await attempt.read_events(condition.event_key, since, events_position)
    for seq, payload, event_id in sorted(events, key=lambda e: e[0], reverse=True):
        if satisfies(condition.expression, payload):
            return seq, payload, event_id
    return None


def trace_wait(attempt: Attempt, record: WaitRecord) -> None:
    """Emit the wait's span once: on the first attempt after it resolved."""
    if record.resolved_seq is None or record.resolved_seq < attempt.previous_started_seq:
        return
    if record.resolved_at is None:
        return
    tracing = attempt.tracing
    resolution = attempt.headers.get(record.resolved_seq, {})
    pushed = resolution.get(EVENT_TRACEPARENT)
    tracing.record(
        f"wait {record.name}",
        start_time=record.started_at,
        end_time=record.resolved_at,
        parent=tracing.context_from(attempt.headers.get(record.started_seq)),
        links=tracing.link_from({"traceparent": pushed} if pushed else None),
        attributes={
            "tether.run_id": attempt.state.run_id,
            "tether.wait_id": record.wait_id,
            "tether.event_key": record.event_key,
            "tether.expression": record.expression,
            "tether.wait.outcome": record.outcome,
            "tether.event_seq": record.resolved_event_seq,
        },
    )
