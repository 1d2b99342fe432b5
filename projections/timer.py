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
from typing import Any

import orjson
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy
from opentelemetry.trace import SpanKind
from pydantic import ValidationError

from tether.engine.commands import CommandMessage
from tether.engine.connection import Connection
from tether.engine.dispatch import send_command
from tether.engine.nats_io import ORDERED_IDLE_HEARTBEAT_S
from tether.engine.tracing import TRACEPARENT, messaging

log = logging.getLogger("tether.timer")

KV_OPERATION = "KV-Operation"  # the header a KV delete or purge carries
_KV_DELETE_OPS = ("DEL", "PURGE")
LOAD_WAIT_S = 30.0  # how long start() waits for the deadlines already stored


class TimerProjection:
    def __init__(self, conn: Connection, *, retry_after_s: float = 5.0) -> None:
        self._conn = conn
        self._retry_after_s = retry_after_s
        # key -> (due, the entry's raw value): bytes take a third of the parsed body's memory
        self._due: dict[str, tuple[float, bytes]] = {}
        self._heap: list[tuple[float, str]] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._sub: Any = None
        self._key_prefix = ""
        self.fired = 0

    @property
    def pending(self) -> int:
        return len(self._due)

    async def start(self) -> None:
        """Load every deadline, then follow changes; returns once the deadlines are loaded."""
        bucket = self._conn.settings.names.deadlines_bucket
        stream = f"KV_{bucket}"
        self._key_prefix = f"$KV.{bucket}."
        loaded = asyncio.Event()
        info = await self._conn.js.stream_info(stream)
        if info.state.messages == 0:
            loaded.set()

        async def on_entry(msg: Msg) -> None:
            self._on_entry(msg)
            if msg.metadata.num_pending == 0:
                loaded.set()

        # Not nats-py's KV watcher: it cannot set the idle heartbeat of its ordered consumer,
        # and with the default a NATS restart left new deadlines unseen for 10-20 s.
        self._sub = await self._conn.js.subscribe(
            f"{self._key_prefix}>",
            stream=stream,
            cb=on_entry,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            idle_heartbeat=ORDERED_IDLE_HEARTBEAT_S,
        )
        self._tasks = [asyncio.create_task(self._fire_loop(), name="timer-fire")]
        try:
            await asyncio.wait_for(loaded.wait(), LOAD_WAIT_S)
        except TimeoutError:  # deadlines keep arriving and firing; start() just stops waiting
            log.warning("deadlines still loading; starting anyway", extra={"loaded": self.pending})

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _on_entry(self, msg: Msg) -> None:
        key = msg.subject[len(self._key_prefix) :]
        operation = (msg.headers or {}).get(KV_OPERATION)
        if operation in _KV_DELETE_OPS or not msg.data:
            self._due.pop(key, None)
            self._compact_if_stale()
            return
        try:
            body = orjson.loads(msg.data)
            due = float(body["due_at"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.error("ignoring malformed deadline", extra={"key": key})
            return
        self._due[key] = (due, msg.data)
        heapq.heappush(self._heap, (due, key))
        self._wake.set()

    def _compact_if_stale(self) -> None:
        """A deleted or moved deadline leaves its heap entry behind until it comes due (a day
        for a default execution deadline), so a busy install would pile them up: rebuild the
        heap from the live deadlines once the stale entries outnumber them."""
        if len(self._heap) > 2 * len(self._due) + 1024:
            self._heap = [(due, key) for key, (due, _) in self._due.items()]
            heapq.heapify(self._heap)

    async def _fire_loop(self) -> None:
        while True:
            now = time.time()
            while self._heap and self._heap[0][0] <= now:
                due, key = heapq.heappop(self._heap)
                current = self._due.get(key)
                if current is None or current[0] != due:
                    continue  # deleted or moved since it was queued
                await self._fire(key, current[1])
            delay = (self._heap[0][0] - now) if self._heap else 60.0
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(0.0, min(delay, 60.0)))

    async def _fire(self, key: str, raw: bytes) -> None:
        try:
            body = orjson.loads(raw)
            command = CommandMessage.model_validate({**body["command"], "timer_key": key})
        except (orjson.JSONDecodeError, KeyError, TypeError, ValidationError) as exc:
            log.error("ignoring malformed deadline", extra={"key": key, "error": str(exc)})
            self._due.pop(key, None)
            return
        tracing, names = self._conn.tracing, self._conn.settings.names
        template = names.command_subject(command.kind, "{run_id}")
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
            due = time.time() + self._retry_after_s
            self._due[key] = (due, raw)
            heapq.heappush(self._heap, (due, key))
            return
        # Keep it until the engine deletes the key; if that never happens (engine down),
        # fire again later rather than lose the timeout.
        due = time.time() + 60.0
        self._due[key] = (due, raw)
        heapq.heappush(self._heap, (due, key))
