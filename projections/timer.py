"""The timer projection: watches deadlines in the KV bucket and fires expiry commands.

Deadlines are written by the engine service from the run log (execution deadline on
``requested``, wait deadline on ``wait_started``); this projection only reads them, so any
number of replicas can run: their commands carry the same message id and the engine's
decisions are guarded by the run log's OCC.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time

import orjson
from nats.aio.msg import Msg
from nats.js.errors import KeyNotFoundError
from opentelemetry.trace import SpanKind
from pydantic import ValidationError

from tether.engine import ids, wire
from tether.engine.commands import CommandMessage
from tether.engine.connection import Connection
from tether.engine.dispatch import send_command
from tether.engine.tracing import TRACEPARENT, messaging
from tether.projections.follower import Follower

log = logging.getLogger("tether.timer")

LOAD_WAIT_S = 30.0  # how long own() waits for a partition's deadlines already stored
# A fired deadline the engine has not removed (the engine down, say) fires again this late.
REFIRE_AFTER_S = 60.0


class TimerProjection:
    """Fires the deadlines of the partitions it owns (``own``/``release``)."""

    def __init__(self, conn: Connection, *, retry_after_s: float = 5.0) -> None:
        self._conn = conn
        self._retry_after_s = retry_after_s
        # key -> when it is due. The entry's value (the command) is read when it fires: a
        # pending deadline then costs this process a key and a float, not its bytes.
        self._due: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._followers: dict[int, Follower] = {}
        bucket = conn.settings.names.deadlines_bucket
        self._stream = f"KV_{bucket}"
        self._key_prefix = f"$KV.{bucket}."
        self.fired = 0

    @property
    def pending(self) -> int:
        return len(self._due)

    async def start(self, partitions: list[int] | None = None) -> None:
        """Own ``partitions`` (all when None); returns once their deadlines are loaded."""
        self._tasks = [asyncio.create_task(self._fire_loop(), name="timer-fire")]
        wanted = range(self._conn.settings.names.partitions) if partitions is None else partitions
        for partition in wanted:
            await self.own(partition)

    async def own(self, partition: int) -> None:
        """Load ``partition``'s pending deadlines, then follow its changes."""
        if partition in self._followers:
            return
        # The bucket holds pending deadlines and recent purge markers only (purges carry a
        # TTL), so loading reads what is due, not history.
        follower = Follower(
            self._conn.js,
            stream=self._stream,
            subjects=[f"{self._key_prefix}{ids.deadline_prefix(partition)}>"],
            handler=self._on_entry,
            last_per_subject=True,
        )
        self._followers[partition] = follower
        if not await follower.start(catch_up_timeout_s=LOAD_WAIT_S):
            log.warning("deadlines still loading; going on", extra={"partition": partition})

    async def release(self, partition: int) -> None:
        """Stop firing ``partition``'s deadlines: another process owns them now."""
        follower = self._followers.pop(partition, None)
        if follower is not None:
            await follower.stop()
        prefix = ids.deadline_prefix(partition)
        for key in [k for k in self._due if k.startswith(prefix)]:
            del self._due[key]
        self._compact_if_stale()

    async def stop(self) -> None:
        for partition in list(self._followers):
            await self.release(partition)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _on_entry(self, msg: Msg) -> None:
        key = msg.subject[len(self._key_prefix) :]
        if ids.deadline_partition(key) not in self._followers:
            return  # a partition released while this was in flight
        operation = (msg.headers or {}).get(wire.KV_OPERATION)
        if operation in wire.KV_REMOVALS or not msg.data:
            self._due.pop(key, None)
            self._compact_if_stale()
            return
        try:
            body = orjson.loads(msg.data)
            due = float(body["due_at"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.error("ignoring malformed deadline", extra={"key": key})
            return
        self._due[key] = due
        heapq.heappush(self._heap, (due, key))
        self._wake.set()

    def _compact_if_stale(self) -> None:
        """A deleted or moved deadline leaves its heap entry behind until it comes due (a day
        for a default execution deadline), so a busy install would pile them up: rebuild the
        heap from the live deadlines once the stale entries outnumber them."""
        if len(self._heap) > 2 * len(self._due) + 1024:
            self._heap = [(due, key) for key, due in self._due.items()]
            heapq.heapify(self._heap)

    async def _fire_loop(self) -> None:
        while True:
            now = time.time()
            while self._heap and self._heap[0][0] <= now:
                due, key = heapq.heappop(self._heap)
                if self._due.get(key) != due:
                    continue  # deleted or moved since it was queued
                if ids.deadline_partition(key) not in self._followers:
                    self._due.pop(key, None)  # its partition was released meanwhile
                    continue
                await self._fire(key, due)
            delay = (self._heap[0][0] - now) if self._heap else 60.0
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(0.0, min(delay, 60.0)))

    async def _fire(self, key: str, due: float) -> None:
        try:
            entry = await self._conn.deadlines.get(key)
        except KeyNotFoundError:  # (a removed key raises its subclass KeyDeletedError)
            entry = None
        except Exception:
            log.exception("could not read a deadline; will retry", extra={"key": key})
            self._retry_at(key, due, time.time() + self._retry_after_s)
            return
        if entry is None or not entry.value:
            self._forget(key, due)  # removed meanwhile; its removal is on its way here
            return
        try:
            body = orjson.loads(entry.value)
            command = CommandMessage.model_validate({**body["command"], "timer_key": key})
            stored_due = float(body["due_at"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, ValidationError) as exc:
            log.error("ignoring malformed deadline", extra={"key": key, "error": str(exc)})
            self._forget(key, due)
            return
        if stored_due > time.time():  # moved later, and the move is on its way here
            self._retry_at(key, due, stored_due)
            return
        tracing, names = self._conn.tracing, self._conn.settings.names
        template = names.command_template(command.kind)
        traceparent = body.get("traceparent")
        try:
            with tracing.span(
                f"publish {template}",
                kind=SpanKind.PRODUCER,
                parent=tracing.context_from({TRACEPARENT: traceparent} if traceparent else None),
                attributes={
                    **messaging(
                        "publish",
                        "send",
                        names.command_subject(command.kind, command.run_id),
                        template,
                    ),
                    "tether.run_id": command.run_id,
                    "tether.wait_id": command.wait_id,
                    "tether.timer": key,
                    "tether.command": command.kind,
                },
            ):
                await send_command(self._conn.js, names, command, tracing.inject({}))
            self.fired += 1
        except Exception:
            log.exception("could not fire deadline; will retry", extra={"key": key})
            self._retry_at(key, due, time.time() + self._retry_after_s)
            return
        # Keep it until the engine deletes the key; if that never happens (engine down),
        # fire again later rather than lose the timeout.
        self._retry_at(key, due, time.time() + REFIRE_AFTER_S)

    def _retry_at(self, key: str, fired: float, again: float) -> None:
        """Fire ``key`` again at ``again``, unless it was removed or moved meanwhile."""
        if self._due.get(key) == fired:
            self._due[key] = again
            heapq.heappush(self._heap, (again, key))

    def _forget(self, key: str, due: float) -> None:
        if self._due.get(key) == due:  # (not a newer deadline stored meanwhile)
            del self._due[key]
