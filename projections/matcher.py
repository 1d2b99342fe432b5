"""The matcher projection: an index of open waits, fed by the run log, matched against pushed
events, publishing one resume command per matched wait.

No event that matches an open wait is missed, even one pushed while the wait is being
registered: each wait carries the events-stream position read before it was recorded, and
when the matcher learns of a wait after it has already passed that position, it re-reads
the events since then (from a short in-memory window, or from the stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import sys
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import orjson
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext
from opentelemetry.trace import SpanKind

from tether.engine import codec
from tether.engine.commands import CommandMessage, encode
from tether.engine.connection import Connection
from tether.engine.dispatch import send_command
from tether.engine.event_reads import read_key_events
from tether.engine.events import IN_ATTEMPT_TOKENS, SUBJECT_TOKENS
from tether.engine.expressions import (
    ExpressionEvaluationError,
    ExpressionShape,
    InvalidExpressionError,
    analyze,
    compile_program,
    equalities_hold,
)
from tether.engine.nats_io import ORDERED_IDLE_HEARTBEAT_S
from tether.engine.subjects import MAX_EVENT_KEY_LENGTH
from tether.engine.tracing import EVENT_TRACEPARENT, TRACEPARENT, messaging
from tether.projections.rejections import record_rejection
from tether.projections.wait_index import WaitIndex

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
# Rejections of events whose key is too long to repeat in a subject are recorded here.
OVERLONG_KEY = "tether:overlong-key"
# A resume command that cannot be published (NATS down, a stream without a leader) is
# retried from this delay, doubling up to the cap, for as long as it takes.
PUBLISH_RETRY_FIRST_S = 0.2
PUBLISH_RETRY_MAX_S = 5.0


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

    @property
    def event_key(self) -> str:
        return self.conditions[0].event_key if self.conditions else ""

    def open_conditions(self) -> list[OpenCondition]:
        return [c for c in self.conditions if c.clause not in self.met_clauses]


# One shared empty set for the common case: an empty set per open wait costs 216 bytes.
NONE_MET: frozenset[int] = frozenset()

# index ids: (wait id, condition id)
ConditionRef = tuple[str, str]


@dataclass(frozen=True, slots=True)
class PushedEvent:
    seq: int
    key: str
    payload: dict[str, Any]
    event_id: str | None
    metadata: dict[str, Any]
    received: float
    traceparent: str | None = None


class Matcher:
    def __init__(
        self, conn: Connection, *, window_s: float = 30.0, window_max: int = 100_000
    ) -> None:
        self._conn = conn
        self._names = conn.settings.names
        self._js: JetStreamContext = conn.js
        self.waits: dict[str, OpenWait] = {}
        self._open_by_run: dict[str, str] = {}
        self._index: WaitIndex[ConditionRef] = WaitIndex()
        # events handled so far: everything with seq <= cursor has been matched
        self.events_cursor: int | None = None
        # recent events by key, for waits that register "behind" the cursor
        self._recent: dict[str, deque[PushedEvent]] = {}
        self._recent_order: deque[PushedEvent] = deque()
        self._complete_after = 0  # every event with seq > this is in the recent window
        self._window_s = window_s
        self._window_max = window_max
        self._subs: list[Any] = []
        self._background: set[asyncio.Task[None]] = set()
        self.matched = 0
        self.rejected = 0
        self.evaluation_errors = 0

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        info = await self._js.stream_info(self._names.runs_stream)
        runs_target = int(info.state.last_seq)
        caught_up = asyncio.Event()
        if runs_target == 0:
            caught_up.set()

        async def on_run(msg: Msg) -> None:
            self._on_run_msg(msg)
            if not caught_up.is_set() and msg.metadata.sequence.stream >= runs_target:
                caught_up.set()

        self._subs.append(
            await self._js.subscribe(
                self._names.runs_all,
                cb=on_run,
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.ALL,
                idle_heartbeat=ORDERED_IDLE_HEARTBEAT_S,
            )
        )
        await caught_up.wait()
        # Start matching events from the oldest position an open wait still needs.
        info = await self._js.stream_info(self._names.events_stream)
        start = int(info.state.last_seq) + 1
        if self.waits:
            start = min(start, min(w.events_position for w in self.waits.values()) + 1)
        self.events_cursor = start - 1
        self._complete_after = start - 1
        self._subs.append(
            await self._js.subscribe(
                # every subject of the stream: anonymous pushes and approvers' own spaces
                f"{self._names.namespace}.>",
                stream=self._names.events_stream,
                cb=self._on_event_async,
                ordered_consumer=True,
                idle_heartbeat=ORDERED_IDLE_HEARTBEAT_S,
                config=ConsumerConfig(
                    deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start
                ),
            )
        )
        log.info("matcher started", extra={"open_waits": len(self.waits), "events_from": start})

    async def stop(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()
        if self._background:
            _, pending = await asyncio.wait(set(self._background), timeout=5.0)
            # Commands still unpublished are not lost: their waits are open in the run log,
            # and the next matcher replays the events after them.
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)

    # -- the run log: waits opening and closing ------------------------------------------------

    def _on_run_msg(self, msg: Msg) -> None:
        *_, run_id, token = msg.subject.split(".")
        expected_type = _RUN_TOKEN_TYPES.get(token)
        if expected_type is None:
            return
        try:
            body = orjson.loads(msg.data)
        except orjson.JSONDecodeError:
            body = None
        # The run's state machine ignores a body that does not belong on its subject; so
        # does the matcher (a worker credential may write some tokens, not others).
        if not isinstance(body, dict) or body.get("type") != expected_type:
            log.warning("run log message ignored", extra={"subject": msg.subject})
            return
        if body.get("run_id") != run_id:
            log.warning("run log message for another run ignored", extra={"subject": msg.subject})
            return
        open_wait = self.waits.get(self._open_by_run.get(run_id, ""))
        if token == "wait_started":
            if open_wait is not None:  # only a running attempt registers waits
                log.warning("wait registered on a waiting run ignored", extra={"run_id": run_id})
                return
            self._on_wait_started(msg, body)
        elif open_wait is None or body.get("wait_id", open_wait.wait_id) != open_wait.wait_id:
            return  # nothing open here (a terminal event, or a resolution already seen)
        elif token.endswith("_in_attempt") and not _attempt_may_resolve(open_wait, body):
            log.warning("in-attempt resolution ignored", extra={"subject": msg.subject})
        elif token in ("wait_satisfied", "wait_satisfied_in_attempt", "wait_timed_out"):
            self._close_wait(open_wait.wait_id)
        elif token in ("condition_met", "condition_met_in_attempt"):
            self._clause_met(open_wait, str(body.get("condition_id", "")))
        elif token in ("timed_out", "cancelled"):
            # (completed and failed end only a running attempt: a waiting run ignores them)
            self._close_wait(open_wait.wait_id)

    def _on_wait_started(self, msg: Msg, body: dict[str, Any]) -> None:
        try:
            wait = self._parse_wait(body, msg.metadata.sequence.stream)
            wait.traceparent = (msg.headers or {}).get(TRACEPARENT)
        except InvalidExpressionError as exc:
            # Workers validate before recording, so this means a foreign writer; skip it.
            log.error("wait with an invalid expression ignored", extra={"error": str(exc)})
            return
        except (KeyError, TypeError, ValueError) as exc:
            log.error("malformed wait_started skipped", extra={"error": repr(exc)})
            return
        self.waits[wait.wait_id] = wait
        self._open_by_run[wait.run_id] = wait.wait_id
        for condition in wait.conditions:
            self._index.add(
                (wait.wait_id, condition.condition_id), condition.event_key, condition.shape
            )
        if self.events_cursor is not None and wait.events_position < self.events_cursor:
            self._catch_up(wait)

    @staticmethod
    def _parse_wait(body: dict[str, Any], seq: int) -> OpenWait:
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
        )

    def _clause_met(self, wait: OpenWait, condition_id: str) -> None:
        """A clause is satisfied: its other alternatives need no more matching."""
        clause = next((c.clause for c in wait.conditions if c.condition_id == condition_id), None)
        if clause is None:  # a sleep condition: find its clause from the id "c<i>.<j>"
            with contextlib.suppress(ValueError, IndexError):
                clause = int(condition_id[1:].split(".")[0])
        if clause is None:
            return
        wait.met_clauses = wait.met_clauses | {clause}
        for condition in wait.conditions:
            if condition.clause == clause:
                self._index.remove((wait.wait_id, condition.condition_id))
        if len(wait.met_clauses) >= wait.clause_count:
            self._close_wait(wait.wait_id)

    def _close_wait(self, wait_id: str) -> None:
        wait = self.waits.pop(wait_id, None)
        if wait is None:
            return
        for condition in wait.conditions:
            self._index.remove((wait_id, condition.condition_id))
        if self._open_by_run.get(wait.run_id) == wait_id:
            del self._open_by_run[wait.run_id]

    # -- pushed events --------------------------------------------------------------------------

    async def _on_event_async(self, msg: Msg) -> None:
        self._on_event_msg(msg)

    def _on_event_msg(self, msg: Msg) -> None:
        seq = msg.metadata.sequence.stream
        key, identity = self._names.parse_event_subject(msg.subject)
        self.events_cursor = seq
        headers = msg.headers or {}
        if len(key) > MAX_EVENT_KEY_LENGTH:  # pushed by a client that skipped the check
            reason = f"event key of {len(key)} characters, over the limit of {MAX_EVENT_KEY_LENGTH}"
            self._reject(seq, OVERLONG_KEY, reason, msg.data)
            return
        try:
            payload = codec.loads_object(msg.data, "payload")
            metadata = _metadata(headers, identity)
        except codec.InvalidJsonError as exc:
            self._reject(seq, key, str(exc), msg.data)
            return
        event = PushedEvent(
            seq,
            key,
            payload,
            headers.get("Nats-Msg-Id"),
            metadata,
            time.time(),
            headers.get(TRACEPARENT),
        )
        self._remember(event)
        for wait_id, condition_id in self._index.candidates(key, payload):
            wait = self.waits.get(wait_id)
            if wait is None:
                continue
            condition = next((c for c in wait.conditions if c.condition_id == condition_id), None)
            if condition is not None and self._matches(wait, condition, event):
                self._resolve(wait, condition, event)

    def _matches(self, wait: OpenWait, condition: OpenCondition, event: PushedEvent) -> bool:
        if event.seq <= wait.events_position or condition.clause in wait.met_clauses:
            return False  # pushed before the wait began, or the clause is already satisfied
        shape = condition.shape
        if shape.fully_indexed:
            return equalities_hold(shape, event.payload)
        try:
            return compile_program(shape.source).matches(event.payload)
        except (ExpressionEvaluationError, InvalidExpressionError) as exc:
            self.evaluation_errors += 1
            log.info(
                "expression error counts as no match",
                extra={"wait_id": wait.wait_id, "event_seq": event.seq, "error": str(exc)},
            )
            return False

    def _resolve(self, wait: OpenWait, condition: OpenCondition, event: PushedEvent) -> None:
        self.matched += 1
        command = CommandMessage(
            kind="resume",
            run_id=wait.run_id,
            task=wait.task,
            wait_id=wait.wait_id,
            wait_seq=wait.started_seq,
            timer_key=f"{wait.run_id}.w{wait.wait_id.rsplit(':', 1)[-1]}"
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
        try:
            encode(command)
        except codec.EncodingError as exc:
            # Checked before the wait is closed: an event that cannot reach the run must
            # leave the wait open for one that can, not hang it.
            self._reject(event.seq, event.key, f"cannot pass the event to the run: {exc}", b"")
            return
        self._clause_met(wait, condition.condition_id)
        tracing = self._conn.tracing
        template = self._names.event_subject("{event_key}")
        with tracing.span(
            f"process {template}",
            kind=SpanKind.CONSUMER,
            parent=tracing.context_from(
                {TRACEPARENT: wait.traceparent} if wait.traceparent else None
            ),
            links=tracing.link_from(
                {TRACEPARENT: event.traceparent} if event.traceparent else None
            ),
            attributes={
                **messaging("process", "process", self._names.event_subject(event.key), template),
                "tether.run_id": wait.run_id,
                "tether.wait_id": wait.wait_id,
                "tether.event_key": event.key,
                "tether.event_seq": event.seq,
                "tether.condition": condition.key,
            },
        ):
            headers = tracing.inject({})
        if event.traceparent:
            headers[EVENT_TRACEPARENT] = event.traceparent
        self._spawn(self._publish(command, wait, headers))

    async def _publish(
        self, command: CommandMessage, wait: OpenWait, headers: dict[str, str]
    ) -> None:
        """Publish until the stream takes it: the matched event has been consumed, so giving
        up would leave the wait open with nothing left to match it until a restart replays.
        (Retries are harmless: the command's message id dedupes.)"""
        delay = PUBLISH_RETRY_FIRST_S
        for attempt in itertools.count(1):
            try:
                await send_command(self._js, self._names, command, headers)
                return
            except Exception as exc:
                log.warning(
                    "resume command not published yet; retrying",
                    extra={"wait_id": wait.wait_id, "attempt": attempt, "error": repr(exc)},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, PUBLISH_RETRY_MAX_S)

    def _reject(self, seq: int, key: str, reason: str, data: bytes) -> None:
        self.rejected += 1
        log.warning("event rejected", extra={"event_seq": seq, "event_key": key, "reason": reason})
        self._spawn(record_rejection(self._js, self._names, seq, key, reason, data))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- catching up waits that registered behind the cursor ----------------------------------

    def _remember(self, event: PushedEvent) -> None:
        self._recent.setdefault(event.key, deque()).append(event)
        self._recent_order.append(event)
        horizon = event.received - self._window_s
        while self._recent_order and (
            self._recent_order[0].received < horizon or len(self._recent_order) > self._window_max
        ):
            old = self._recent_order.popleft()
            per_key = self._recent[old.key]
            per_key.popleft()
            if not per_key:
                del self._recent[old.key]
            self._complete_after = old.seq

    def _catch_up(self, wait: OpenWait) -> None:
        if wait.events_position >= self._complete_after:
            for condition in wait.open_conditions():
                for event in self._recent.get(condition.event_key, ()):
                    if event.seq > wait.events_position and self._matches(wait, condition, event):
                        self._resolve(wait, condition, event)
                        break
            return
        self._spawn(self._catch_up_from_stream(wait, until=self.events_cursor or 0))

    async def _catch_up_from_stream(self, wait: OpenWait, until: int) -> None:
        for condition in wait.open_conditions():
            stored = await read_key_events(
                self._conn.reader,
                self._names,
                condition.event_key,
                start_seq=wait.events_position + 1,
            )
            for message in stored:
                if message.seq > until or wait.wait_id not in self.waits:
                    break
                _, identity = self._names.parse_event_subject(message.subject)
                try:
                    payload = codec.loads_object(message.data, "payload")
                    metadata = _metadata(message.headers, identity)
                except codec.InvalidJsonError:
                    continue  # rejected when the live matcher first saw it
                event = PushedEvent(
                    message.seq,
                    condition.event_key,
                    payload,
                    message.headers.get("Nats-Msg-Id"),
                    metadata,
                    time.time(),
                    message.headers.get(TRACEPARENT),
                )
                if self._matches(wait, condition, event):
                    self._resolve(wait, condition, event)
                    break


# The run-log subject tokens the matcher follows, with the event type each must carry.
_RUN_TOKEN_TYPES: dict[str, str] = {
    token: event_type
    for table in (SUBJECT_TOKENS, IN_ATTEMPT_TOKENS)
    for event_type, token in table.items()
    if token in MATCHER_TOKENS
}


def _attempt_may_resolve(wait: OpenWait, body: dict[str, Any]) -> bool:
    """An attempt resolves its own wait only from events stored before it (lookback) or a
    zero sleep (no event), as the run's state machine checks too."""
    event_seq = body.get("event_seq")
    return event_seq is None or (isinstance(event_seq, int) and event_seq <= wait.events_position)


def _metadata(headers: dict[str, str], identity: str | None) -> dict[str, Any]:
    """The pusher's metadata, carried in a header beside the payload. The approver is the
    identity of the subject the event was pushed to (``<ns>.from.<identity>.<key>``), which
    NATS permissions tie to the pusher's credentials; one claimed in the header is dropped."""
    metadata: dict[str, Any] = {}
    raw = headers.get(codec.METADATA_HEADER)
    if raw:
        if len(raw) > codec.MAX_METADATA_BYTES:
            raise codec.InvalidJsonError(
                f"the {codec.METADATA_HEADER} header is {len(raw)} bytes, "
                f"over {codec.MAX_METADATA_BYTES}"
            )
        metadata = codec.loads_object(
            raw.encode(), f"the {codec.METADATA_HEADER} header", max_depth=codec.MAX_METADATA_DEPTH
        )
        metadata.pop("approver", None)
    if identity is not None:
        metadata["approver"] = identity
    return metadata
