"""Commands to a run and the pure ``decide`` that turns one into events against the run's
state (see ``tether.engine.state``). No I/O, no clock: the adapters pass the time in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tether.engine.events import (
    RunCancelled,
    RunEvent,
    RunTimedOut,
    WaitConditionMet,
    WaitSatisfied,
    WaitTimedOut,
)
from tether.engine.state import RunState, WaitRecord


@dataclass(frozen=True, slots=True)
class ResolveWait:
    """A condition of an open wait fired: a pushed event matched it, or its sleep ended."""

    wait_id: str
    condition_id: str
    condition_key: str
    event_key: str | None = None
    event_seq: int | None = None
    event_id: str | None = None
    payload: dict[str, Any] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    wait_seq: int | None = None  # the sequence of the wait_started it is for, when known


@dataclass(frozen=True, slots=True)
class ExpireWait:
    wait_id: str
    wait_seq: int | None = None  # the sequence of the wait_started it is for, when known


@dataclass(frozen=True, slots=True)
class ExpireRun:
    reason: str


@dataclass(frozen=True, slots=True)
class CancelRun:
    reason: str


@dataclass(frozen=True, slots=True)
class ExpireSchedule:
    """The schedule timeout passed: only applies if no attempt has started."""

    reason: str


Command = ResolveWait | ExpireWait | ExpireRun | ExpireSchedule | CancelRun


def wait_resolution(
    run_id: str, command: ResolveWait | ExpireWait, now: float, met: WaitRecord | None = None
) -> RunEvent:
    """The event that completes a wait, given the conditions already met (``met``); the
    caller has checked the wait is open and that ``command`` completes it."""
    if isinstance(command, ExpireWait):
        return WaitTimedOut(
            run_id=run_id, at=now, wait_id=command.wait_id, wait_seq=command.wait_seq
        )
    fired: list[str] = []
    payloads: dict[str, dict[str, Any]] = {}
    if met is not None:
        for clause in met.clauses:
            for spec in clause:
                if spec.id in met.met:
                    fired.append(spec.key)
                    payload = met.met[spec.id]
                    if payload is not None:
                        payloads[spec.key] = payload
    fired.append(command.condition_key)
    if command.payload is not None:
        payloads[command.condition_key] = command.payload
    return WaitSatisfied(
        run_id=run_id,
        at=now,
        wait_id=command.wait_id,
        event_key=command.event_key,
        event_seq=command.event_seq,
        event_id=command.event_id,
        payload=command.payload,
        metadata=command.metadata,
        fired=fired,
        payloads=payloads,
        wait_seq=command.wait_seq,
    )


def _open_as_registered(record: WaitRecord | None, wait_seq: int | None) -> bool:
    """Is the wait open, and (when the command says) the registration it is for?"""
    if record is None or record.outcome != "open":
        return False
    return wait_seq is None or wait_seq == record.started_seq


def decide(state: RunState, command: Command, now: float) -> list[RunEvent]:
    """Events that ``command`` produces against ``state``; empty when it no longer applies."""
    if not state.exists or state.is_terminal:
        return []
    run_id = state.run_id
    match command:
        case ResolveWait():
            record = state.wait(command.wait_id)
            if not _open_as_registered(record, command.wait_seq):
                return []
            assert record is not None
            spec = record.condition(command.condition_id)
            if spec is None or spec.id in record.met:
                return []
            clause = next(i for i, c in enumerate(record.clauses) if spec in c)
            if record.clause_satisfied(clause) and not spec.decisive:
                return []  # another alternative of this clause fired first
            if record.satisfied_with(command.condition_id):
                return [wait_resolution(run_id, command, now, met=record)]
            return [
                WaitConditionMet(
                    run_id=run_id,
                    at=now,
                    wait_id=command.wait_id,
                    condition_id=command.condition_id,
                    event_seq=command.event_seq,
                    event_id=command.event_id,
                    payload=command.payload,
                    metadata=command.metadata,
                    wait_seq=command.wait_seq,
                )
            ]
        case ExpireWait():
            if not _open_as_registered(state.wait(command.wait_id), command.wait_seq):
                return []
            return [wait_resolution(run_id, command, now)]
        case ExpireRun():
            return [
                RunTimedOut(
                    run_id=run_id, at=now, reason=command.reason, parent_run_id=state.parent_run_id
                )
            ]
        case ExpireSchedule():
            if state.attempt > 0 or state.status != "queued":
                return []  # a worker picked it up in time
            return [
                RunTimedOut(
                    run_id=run_id, at=now, reason=command.reason, parent_run_id=state.parent_run_id
                )
            ]
        case CancelRun():
            return [
                RunCancelled(
                    run_id=run_id, at=now, reason=command.reason, parent_run_id=state.parent_run_id
                )
            ]
    return []
