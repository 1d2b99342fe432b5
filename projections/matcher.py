"""The matcher projection: an index of open waits, fed by the run log, matched against pushed
events; each matched wait is resolved once, through the engine of the same process in
``tether serve`` (or by a resume command published to the engine).

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
import time
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext
from opentelemetry.trace import SpanKind

from tether.engine import codec, wire
from tether.engine.commands import CommandMessage, encode
from tether.engine.connection import Connection
from tether.engine.dispatch import send_command
from tether.engine.event_reads import read_key_events
from tether.engine.expression_shapes import equalities_hold
from tether.engine.expressions import (
    ExpressionEvaluationError,
    InvalidExpressionError,
    compile_program,
)
from tether.engine.nats_io import ORDERED_IDLE_HEARTBEAT_S, unsubscribe_quietly
from tether.engine.subjects import MAX_EVENT_KEY_LENGTH
from tether.engine.tracing import EVENT_TRACEPARENT, TRACEPARENT, messaging
from tether.projections.checkpoints import Checkpoint, Checkpoints
from tether.projections.follower import Follower
from tether.projections.open_waits import (
    OpenCondition,
    OpenWait,
    resume_command,
    wait_from_record,
)
from tether.projections.pushed_events import (
    PushedEvent,
    RecentEvents,
    event_metadata,
    stored_events,
)
from tether.projections.rejections import record_rejection
from tether.projections.wait_registry import WaitRegistry

log = logging.getLogger("tether.matcher")

# Rejections of events whose key is too long to repeat in a subject are recorded here.
OVERLONG_KEY = "tether:overlong-key"
# A resume command that cannot be published (NATS down, a stream without a leader) is
# retried from this delay, doubling up to the cap, for as long as it takes.
PUBLISH_RETRY_FIRST_S = 0.2
PUBLISH_RETRY_MAX_S = 5.0
# A catch-up read of the events stream that failed is tried again after this delay.
CATCH_UP_RETRY_S = 1.0
# How often an owner writes a partition's checkpoint (when its run log moved on).
CHECKPOINT_EVERY_S = 5.0


# Resolves a matched wait: the engine's ``handle`` in ``tether serve``, which owns the
# partition's engine work too; by default the resume command is published to the engine.
Resolve = Callable[[CommandMessage, dict[str, str]], Awaitable[None]]


def checkpoint_name(partition: int) -> str:
    return f"matcher.p{partition}"


class Matcher:
    """Matches pushed events against the open waits of the partitions it owns
    (``own``/``release``). Each partition's waits come from its checkpoint and the run log
    after it; pushed events are not partitioned, so every owner reads all of them."""

    def __init__(
        self,
        conn: Connection,
        *,
        resolve: Resolve | None = None,
        window_s: float = 30.0,
        window_max: int = 100_000,
        checkpoints: Checkpoints | None = None,
        checkpoint_every_s: float = CHECKPOINT_EVERY_S,
    ) -> None:
        self._conn = conn
        self._names = conn.settings.names
        self._js: JetStreamContext = conn.js
        self._resolve_wait: Resolve = resolve or self._send_command
        self.registry = WaitRegistry(self._names)
        # events handled so far: everything with seq <= cursor has been matched
        self.events_cursor: int | None = None
        # recent events by key, for waits that register "behind" the cursor
        self._recent = RecentEvents(window_s, window_max)
        self._followers: dict[int, Follower] = {}
        self._checkpoints = checkpoints
        self._checkpointed: dict[int, int] = {}  # partition -> position last written
        self._checkpoint_every_s = checkpoint_every_s
        self._events_sub: Any = None
        self._background: set[asyncio.Task[None]] = set()
        self._checkpoint_task: asyncio.Task[None] | None = None
        # waits registered behind the recent-events window, to match from the stream
        self._behind: dict[str, OpenWait] = {}
        self._behind_task: asyncio.Task[None] | None = None
        self.matched = 0
        self.rejected = 0
        self.evaluation_errors = 0

    @property
    def waits(self) -> dict[str, OpenWait]:
        """Open waits that events may still match."""
        return self.registry.waits

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self, partitions: list[int] | None = None) -> None:
        """Own ``partitions`` (all when None), then match pushed events from the oldest
        position an open wait still needs."""
        wanted = range(self._names.partitions) if partitions is None else partitions
        for partition in wanted:
            await self.own(partition)
        await self.follow_events()

    async def follow_events(self) -> None:
        """Match pushed events from the oldest position a loaded wait still needs (waits
        of partitions owned later catch up on their own, see ``_catch_up``)."""
        info = await self._js.stream_info(self._names.events_stream)
        start = int(info.state.last_seq) + 1
        if self.waits:
            start = min(start, min(w.events_position for w in self.waits.values()) + 1)
        self.events_cursor = start - 1
        self._recent.complete_after = start - 1
        self._events_sub = await self._js.subscribe(
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
        if self._checkpoints is not None:
            self._checkpoint_task = asyncio.create_task(self._checkpoint_loop())
        log.info("matcher started", extra={"open_waits": len(self.waits), "events_from": start})

    async def own(self, partition: int) -> None:
        """Load ``partition``'s open waits (checkpoint, then the run log after it) and match
        events against them from now on; returns once they are loaded."""
        if partition in self._followers:
            return
        after = 0
        if self._checkpoints is not None:
            checkpoint = await self._checkpoints.load(checkpoint_name(partition))
            if checkpoint is not None:
                after = self._load_checkpoint(partition, checkpoint)
        follower = Follower(
            self._js,
            stream=self._names.runs_stream,
            # one filter (see the engine's bookkeeping consumer); other tokens are skipped
            subjects=[self._names.partition_runs(partition)],
            handler=self._on_run_msg,
            after_seq=after,
        )
        self._followers[partition] = follower
        self._checkpointed[partition] = after
        await follower.start()

    def _load_checkpoint(self, partition: int, checkpoint: Checkpoint) -> int:
        try:
            waits = [wait_from_record(record, partition) for record in checkpoint.state]
        except (InvalidExpressionError, KeyError, TypeError, ValueError) as exc:
            log.error(
                "unusable matcher checkpoint; reading the partition's run log from the start",
                extra={"partition": partition, "error": repr(exc)},
            )
            return 0
        for wait in waits:
            self.registry.register(wait)
            if self.events_cursor is not None and wait.events_position < self.events_cursor:
                self._catch_up(wait)
        return checkpoint.position

    async def release(self, partition: int) -> None:
        """Stop matching ``partition``'s waits: another process owns them now."""
        follower = self._followers.pop(partition, None)
        if follower is None:
            return
        await follower.stop()
        await self._write_checkpoint(partition, follower.position)
        self._checkpointed.pop(partition, None)
        self.registry.forget_partition(partition)

    async def stop(self) -> None:
        if self._checkpoint_task is not None:
            self._checkpoint_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpoint_task
            self._checkpoint_task = None
        if self._events_sub is not None:
            sub, self._events_sub = self._events_sub, None
            await unsubscribe_quietly(sub, "matcher events")
        for partition in list(self._followers):
            await self.release(partition)
        if self._background:
            _, pending = await asyncio.wait(set(self._background), timeout=5.0)
            # Commands still unpublished are not lost: their waits are open in the run log,
            # and the next matcher replays the events after them.
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)

    def open_waits_by_partition(self) -> dict[int, int]:
        return self.registry.open_waits_by_partition()

    # -- checkpoints ----------------------------------------------------------------------------

    async def _checkpoint_loop(self) -> None:
        while True:
            await asyncio.sleep(self._checkpoint_every_s)
            due = {
                partition: follower.position
                for partition, follower in self._followers.items()
                if follower.position > self._checkpointed.get(partition, 0)
            }
            # one pass over the waits for every partition due, in one step of the event
            # loop, so each partition's waits and position agree
            records = self.registry.records_by_partition(set(due))
            for partition, position in due.items():
                await self._save_checkpoint(partition, position, records.get(partition, []))

    async def _write_checkpoint(self, partition: int, position: int) -> None:
        """The partition's waits as the run log has them up to ``position``."""
        await self._save_checkpoint(partition, position, self.registry.records(partition))

    async def _save_checkpoint(self, partition: int, position: int, records: list[Any]) -> None:
        if self._checkpoints is None or position <= 0:
            return
        if await self._checkpoints.save(checkpoint_name(partition), Checkpoint(position, records)):
            self._checkpointed[partition] = position

    # -- the run log: waits opening and closing ------------------------------------------------

    def _on_run_msg(self, msg: Msg) -> None:
        registered = self.registry.on_run_msg(msg)
        cursor = self.events_cursor
        if registered is not None and cursor is not None and registered.events_position < cursor:
            self._catch_up(registered)

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
            metadata = event_metadata(headers, identity)
        except codec.InvalidJsonError as exc:
            self._reject(seq, key, str(exc), msg.data)
            return
        event = PushedEvent(
            seq,
            key,
            payload,
            headers.get(wire.MSG_ID),
            metadata,
            time.time(),
            headers.get(TRACEPARENT),
        )
        self._recent.remember(event)
        for wait_id, condition_id in self.registry.candidates(key, payload):
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
        command = resume_command(wait, condition, event)
        try:
            encode(command)
        except codec.EncodingError as exc:
            # Checked before the wait is closed: an event that cannot reach the run must
            # leave the wait open for one that can, not hang it.
            self._reject(event.seq, event.key, f"cannot pass the event to the run: {exc}", b"")
            return
        self.registry.clause_met(wait, condition.condition_id, logged=False)
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
        self._spawn(self._resolve_until_done(command, wait, headers))

    async def _send_command(self, command: CommandMessage, headers: dict[str, str]) -> None:
        await send_command(self._js, self._names, command, headers)

    async def _resolve_until_done(
        self, command: CommandMessage, wait: OpenWait, headers: dict[str, str]
    ) -> None:
        """Resolve until it is done: the matched event has been consumed, so giving up
        would leave the wait open with nothing left to match it until a restart replays.
        (Retries are harmless: the resolution's message id dedupes, and the run log's
        optimistic concurrency resolves a wait once.)"""
        delay = PUBLISH_RETRY_FIRST_S
        for attempt in itertools.count(1):
            try:
                await self._resolve_wait(command, headers)
                return
            except Exception as exc:
                log.warning(
                    "wait not resolved yet; retrying",
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

    def _catch_up(self, wait: OpenWait) -> None:
        if wait.events_position >= self._recent.complete_after:
            for condition in wait.open_conditions():
                for event in self._recent.of_key(condition.event_key):
                    if event.seq > wait.events_position and self._matches(wait, condition, event):
                        self._resolve(wait, condition, event)
                        break
            return
        # Older than the window: read from the stream, in batches. A partition taken over
        # brings many waits at once; each event key is read once per batch, from the
        # oldest position its waits need, not once per wait.
        self._behind[wait.wait_id] = wait
        if self._behind_task is None or self._behind_task.done():
            self._behind_task = asyncio.create_task(self._catch_up_from_stream())
            self._background.add(self._behind_task)
            self._behind_task.add_done_callback(self._background.discard)

    async def _catch_up_from_stream(self) -> None:
        while self._behind:
            batch, self._behind = self._behind, {}
            until = self.events_cursor or 0
            oldest: dict[str, int] = {}  # event key -> oldest position a wait needs
            for wait in batch.values():
                for condition in wait.open_conditions():
                    key = condition.event_key
                    oldest[key] = min(oldest.get(key, wait.events_position), wait.events_position)
            try:
                for key, position in oldest.items():
                    stored = await read_key_events(
                        self._conn.reader, self._names, key, start_seq=position + 1
                    )
                    for event in stored_events(self._names, key, stored, until):
                        self._match_behind(batch, event)
            except Exception as exc:  # NATS away or a leader election: read the batch again
                log.warning(
                    "catching up waits from the events stream failed; retrying",
                    extra={"waits": len(batch), "error": repr(exc)},
                )
                self._behind = {**batch, **self._behind}
                await asyncio.sleep(CATCH_UP_RETRY_S)

    def _match_behind(self, batch: dict[str, OpenWait], event: PushedEvent) -> None:
        """Match a stored event against the waits of ``batch`` still open."""
        for wait_id, condition_id in self.registry.candidates(event.key, event.payload):
            wait = batch.get(wait_id)
            if wait is None or wait_id not in self.waits:
                continue
            condition = next((c for c in wait.conditions if c.condition_id == condition_id), None)
            if condition is not None and self._matches(wait, condition, event):
                self._resolve(wait, condition, event)
