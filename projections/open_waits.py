"""The matcher's open waits: the run-log messages it follows, the waits it reads from them,
and the resume command a match publishes.

An open wait keeps only what matching needs: its run and task, the events-stream position
it matches from, its timeout, and its event conditions with each expression's shape (see
``tether.engine.expression_shapes``). A wait whose clauses are all met is closed.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Any

import orjson

from tether.engine import ids
from tether.engine.commands import CommandMessage
from tether.engine.events import IN_ATTEMPT_TOKENS, SUBJECT_TOKENS
from tether.engine.expression_shapes import ExpressionShape
from tether.engine.expressions import analyze
from tether.engine.subjects import run_subject_parts
from tether.projections.pushed_events import PushedEvent

log = logging.getLogger("tether.matcher")

MATCHER_TOKENS = frozenset(
    {
        "wait_started",
        "wait_satisfied",
        "wait_satisfied_in_attempt",
        "wait_timed_out",
        "condition_met",
        "condition_met_in_attempt",
        "timed_out",
        "cancelled",
    }
)


@dataclass(slots=True)
class OpenCondition:
    condition_id: str
    key: str  # the result key
    clause: int
    event_key: str
    shape: ExpressionShape


@dataclass(slots=True)
class OpenWait:
    wait_id: str
    run_id: str
    task: str
    events_position: int
    started_seq: int
    timeout_at: float | None
    clause_count: int
    conditions: list[OpenCondition]
    met_clauses: frozenset[int]  # NONE_MET (shared) until a clause is met
    traceparent: str | None = None  # the registering attempt's context, for the match span
    partition: int = 0
    # Clauses the run log records as met. Matching marks a clause met at once (so a second
    # event does not match it again); a checkpoint keeps only what the log says, so that a
    # match whose command was lost in a crash is made again after the restart.
    logged_met: frozenset[int] = frozenset()

    @property
    def event_key(self) -> str:
        return self.conditions[0].event_key if self.conditions else ""

    def open_conditions(self) -> list[OpenCondition]:
        return [c for c in self.conditions if c.clause not in self.met_clauses]


# One shared empty set for the common case: an empty set per open wait costs 216 bytes.
NONE_MET: frozenset[int] = frozenset()

# index ids: (wait id, condition id)
ConditionRef = tuple[str, str]


def parse_wait(body: dict[str, Any], seq: int, partition: int = 0) -> OpenWait:
    """The open wait a ``wait_started`` body (stored at ``seq``) registers; raises
    ``InvalidExpressionError``, or ``KeyError``/``TypeError``/``ValueError`` when malformed."""
    clauses = body["clauses"]
    if not clauses:
        raise ValueError("a wait without conditions can never be resolved")
    conditions = [
        OpenCondition(
            condition_id=sys.intern(str(spec["id"])),
            key=sys.intern(str(spec["key"])),
            clause=index,
            event_key=sys.intern(str(spec["event_key"])),
            shape=analyze(spec.get("expression")),
        )
        for index, clause in enumerate(clauses)
        for spec in clause
        if spec["kind"] == "event"
    ]
    return OpenWait(
        wait_id=str(body["wait_id"]),
        run_id=str(body["run_id"]),
        task=sys.intern(str(body["task"])),
        events_position=int(body["events_position"]),
        started_seq=seq,
        timeout_at=body.get("timeout_at"),
        clause_count=len(clauses),
        conditions=conditions,
        met_clauses=NONE_MET,
        partition=partition,
        logged_met=NONE_MET,
    )


def wait_record(wait: OpenWait) -> list[Any]:
    """A wait as a checkpoint keeps it (compact: a list, not an object)."""
    return [
        wait.wait_id,
        wait.run_id,
        wait.task,
        wait.events_position,
        wait.started_seq,
        wait.timeout_at,
        wait.clause_count,
        sorted(wait.logged_met),
        wait.traceparent,
        [[c.condition_id, c.key, c.clause, c.event_key, c.shape.source] for c in wait.conditions],
    ]


def wait_from_record(record: list[Any], partition: int) -> OpenWait:
    """The open wait a checkpoint record holds; raises on a malformed record."""
    wait_id, run_id, task, position, started, timeout_at, count, met, parent, conds = record
    logged = frozenset(int(c) for c in met) or NONE_MET
    return OpenWait(
        wait_id=str(wait_id),
        run_id=str(run_id),
        task=sys.intern(str(task)),
        events_position=int(position),
        started_seq=int(started),
        timeout_at=None if timeout_at is None else float(timeout_at),
        clause_count=int(count),
        conditions=[
            OpenCondition(
                condition_id=sys.intern(str(cid)),
                key=sys.intern(str(key)),
                clause=int(clause),
                event_key=sys.intern(str(event_key)),
                shape=analyze(source or None),
            )
            for cid, key, clause, event_key, source in conds
        ],
        met_clauses=logged,
        traceparent=parent,
        partition=partition,
        logged_met=logged,
    )


# The run-log subject tokens the matcher follows, with the event type each must carry.
_RUN_TOKEN_TYPES: dict[str, str] = {
    token: event_type
    for table in (SUBJECT_TOKENS, IN_ATTEMPT_TOKENS)
    for event_type, token in table.items()
    if token in MATCHER_TOKENS
}


def followed_body(subject: str, data: bytes) -> tuple[str, str, dict[str, Any]] | None:
    """The run id, subject token and body of a run-log message the matcher follows; None for
    a token it does not follow or a body that does not belong on its subject. A lighter twin
    of ``events.decode_stored``: the matcher sees every run event and needs a few fields of
    a few kinds, so it checks type and run on the raw JSON instead of a full decode."""
    run_id, token = run_subject_parts(subject)
    expected_type = _RUN_TOKEN_TYPES.get(token)
    if expected_type is None:
        return None
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        body = None
    # The run's state machine ignores a body that does not belong on its subject; so
    # does the matcher (a worker credential may write some tokens, not others).
    if not isinstance(body, dict) or body.get("type") != expected_type:
        log.warning("run log message ignored", extra={"subject": subject})
        return None
    if body.get("run_id") != run_id:
        log.warning("run log message for another run ignored", extra={"subject": subject})
        return None
    return run_id, token, body


def attempt_may_resolve(wait: OpenWait, body: dict[str, Any]) -> bool:
    """An attempt resolves its own wait only from events stored before it (lookback) or a
    zero sleep (no event), as the run's state machine checks too."""
    event_seq = body.get("event_seq")
    return event_seq is None or (isinstance(event_seq, int) and event_seq <= wait.events_position)


def resume_command(wait: OpenWait, condition: OpenCondition, event: PushedEvent) -> CommandMessage:
    """The command that resumes ``wait`` because ``event`` satisfied ``condition``."""
    return CommandMessage(
        kind="resume",
        run_id=wait.run_id,
        task=wait.task,
        wait_id=wait.wait_id,
        wait_seq=wait.started_seq,
        timer_key=ids.wait_deadline_key(
            wait.partition, wait.run_id, ids.wait_position(wait.wait_id)
        )
        if wait.timeout_at is not None and wait.clause_count == 1
        else None,
        condition_id=condition.condition_id,
        condition_key=condition.key,
        single_clause=wait.clause_count == 1,
        event_key=event.key,
        event_seq=event.seq,
        event_id=event.event_id,
        payload=event.payload,
        metadata=event.metadata,
    )
