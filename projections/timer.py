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
from nats.js.kv import KeyValue
from opentelemetry.trace import SpanKind
from pydantic import ValidationError

from tether.engine.commands import CommandMessage
from tether.engine.connection import Connection
from tether.engine.dispatch import send_command
from tether.engine.tracing import TRACEPARENT, messaging

log = logging.getLogger("tether.timer")

_KV_DELETE_OPS = ("DEL", "PURGE")


class TimerProjection:
    def __init__(self, conn: Connection, *, retry_after_s: float = 5.0) -> None:
        self._conn = conn
        self._retry_after_s = retry_after_s
        # key -> (due, the entry's raw value): bytes take a third of the parsed body's memory
        self._due: dict[str, tuple[float, bytes]] = {}
        self._heap: list[tuple[float, str]] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.fired = 0

    @property
    def pending(self) -> int:
        return len(self._due)

    async def start(self) -> None:
        watcher = await self._conn.deadlines.watchall()
        ready = asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._watch(watcher, ready), name="timer-watch"),
            asyncio.create_task(self._fire_loop(), name="timer-fire"),
        ]
        await ready.wait()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _watch(self, watcher: KeyValue.KeyWatcher, ready: asyncio.Event) -> None:
        async for entry in watcher:
            if entry is None:  # initial values delivered
                ready.set()
                continue
            ready.set()
            if entry.operation in _KV_DELETE_OPS or not entry.value:
                self._due.pop(entry.key, None)
                self._compact_if_stale()
                continue
            try:
                body = orjson.loads(entry.value)
                due = float(body["due_at"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                log.error("ignoring malformed deadline", extra={"key": entry.key})
                continue
            self._due[entry.key] = (due, entry.value)
            heapq.heappush(self._heap, (due, entry.key))
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
