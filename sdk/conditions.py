"""Wait conditions as data: ``ctx.wait_for(label, *conditions)`` waits until every positional
condition (or ``or_`` group) is satisfied: conjunctive normal form."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from tether.durations import Duration, optional_timedelta, to_timedelta
from tether.engine.subjects import check_event_key


@dataclass(frozen=True, init=False)
class UserEventCondition:
    """Satisfied by an event on ``event_key`` whose payload makes ``expression`` true.

    ``lookback`` also accepts events pushed up to that long before the wait began (newest
    first). The default is no lookback: a wait normally answers events that come after it,
    and an old decision for the same key should not silently resolve a new request.
    """

    event_key: str
    expression: str | None
    key: str | None
    lookback: timedelta | None

    def __init__(
        self,
        event_key: str,
        expression: str | None = None,
        *,
        key: str | None = None,
        lookback: Duration | None = None,
    ) -> None:
        check_event_key(event_key)
        window = optional_timedelta(lookback, "lookback")
        if window is not None and window.total_seconds() <= 0:
            raise ValueError("lookback must be positive")
        object.__setattr__(self, "event_key", event_key)
        object.__setattr__(self, "expression", expression)
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "lookback", window)

    @property
    def result_key(self) -> str:
        return self.key or self.event_key


@dataclass(frozen=True, init=False)
class SleepCondition:
    """Satisfied once ``duration`` has passed since the wait began (durably)."""

    duration: timedelta
    key: str | None

    def __init__(self, duration: Duration, *, key: str | None = None) -> None:
        delta = to_timedelta(duration, "duration")
        if delta.total_seconds() < 0:
            raise ValueError("sleep duration must not be negative")
        object.__setattr__(self, "duration", delta)
        object.__setattr__(self, "key", key)

    @property
    def result_key(self) -> str:
        return self.key or "sleep"


Condition = UserEventCondition | SleepCondition


@dataclass(frozen=True, init=False)
class ParentCondition:
    """Of a workflow task: satisfied when CEL ``expression`` holds on an upstream task's
    output, visible as ``output`` (with ``run.id`` and ``run.input``). A skipped task's
    output is ``{"skipped": True}``. Only in ``skip_if`` and ``cancel_if``."""

    parent: str
    expression: str

    def __init__(self, parent: Any, expression: str) -> None:
        name = parent if isinstance(parent, str) else getattr(parent, "name", None)
        if not isinstance(name, str):
            raise TypeError(f"ParentCondition takes a workflow task or its name, not {parent!r}")
        if not expression or not expression.strip():
            raise ValueError(f"ParentCondition on {name!r} needs a CEL expression")
        object.__setattr__(self, "parent", name)
        object.__setattr__(self, "expression", expression)


AnyCondition = UserEventCondition | SleepCondition | ParentCondition


@dataclass(frozen=True)
class OrGroup:
    conditions: tuple[AnyCondition, ...]


def or_(*conditions: AnyCondition) -> OrGroup:
    """Any one of ``conditions`` satisfies this group."""
    if not conditions:
        raise ValueError("or_() needs at least one condition")
    for condition in conditions:
        if not isinstance(condition, UserEventCondition | SleepCondition | ParentCondition):
            raise TypeError(f"or_() takes conditions, not {type(condition).__name__}")
    return OrGroup(tuple(conditions))


@dataclass(frozen=True)
class WaitResult:
    """``fired``: keys of the satisfied conditions; ``payloads``: event payload per fired
    event condition's key."""

    fired: list[str]
    payloads: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __contains__(self, key: object) -> bool:
        return key in self.fired
