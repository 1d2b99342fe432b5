"""A continuous pull consumer that never holds more messages than it has free slots.

nats-py only offers ``fetch``; concurrent fetches on one subscription steal each other's
messages. This keeps one inbox per pull request, counts what each request may still deliver,
and asks for more only when a slot frees, so a worker with 2 slots never holds a third task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from tether.engine.nats_io import DESCRIPTION, status_of

log = logging.getLogger("tether.pull")

Handler = Callable[[Msg], Awaitable[None]]


class SlotBudget:
    """Slots shared by several pullers (one per task of a worker)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("slots must be at least 1")
        self.capacity = capacity
        self.active = 0
        self.pullers: list[SlotPuller] = []

    def free(self) -> int:
        return self.capacity - self.active - sum(p.outstanding for p in self.pullers)

    def wake_all(self) -> None:
        for puller in self.pullers:
            puller.wake()


class SlotPuller:
    def __init__(
        self,
        nc: NATS,
        stream: str,
        consumer: str,
        handler: Handler,
        *,
        budget: SlotBudget,
        expires_s: float = 5.0,
    ) -> None:
        self._nc = nc
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._consumer = consumer
        self._handler = handler
        self._budget = budget
        budget.pullers.append(self)
        self._expires_s = expires_s
        self._prefix = nc.new_inbox()
        self._counter = 0
        # request inbox -> [messages it may still deliver, client-side give-up time]
        self._requests: dict[str, list[float]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._stopping = False
        self._sub: Subscription | None = None
        self._loop_task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        self._wake.set()

    @property
    def outstanding(self) -> int:
        return int(sum(r[0] for r in self._requests.values()))

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(f"{self._prefix}.*", cb=self._on_msg)
        self._loop_task = asyncio.create_task(self._run(), name=f"pull:{self._consumer}")

    async def _run(self) -> None:
        while not self._stopping:
            now = time.monotonic()
            for inbox, (_, give_up) in list(self._requests.items()):
                if now > give_up:  # the server's 408 never came (e.g. a reconnect)
                    self._requests.pop(inbox, None)
            want = self._budget.free()
            if want > 0 and self._nc.is_connected:
                await self._request(want)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=1.0)

    async def _request(self, batch: int) -> None:
        self._counter += 1
        inbox = f"{self._prefix}.{self._counter}"
        self._requests[inbox] = [batch, time.monotonic() + self._expires_s + 5.0]
        body = orjson.dumps({"batch": batch, "expires": int(self._expires_s * 1e9)})
        try:
            await self._nc.publish(self._next_subject, body, reply=inbox)
        except Exception:
            self._requests.pop(inbox, None)
            log.exception("pull request failed", extra={"consumer": self._consumer})

    async def _on_msg(self, msg: Msg) -> None:
        status = status_of(msg)
        request = self._requests.get(msg.subject)
        if status is not None:
            if status == "100":
                return
            self._requests.pop(msg.subject, None)
            if status == "409":
                desc = (msg.headers or {}).get(DESCRIPTION, "")
                log.warning(
                    "pull request refused",
                    extra={"consumer": self._consumer, "reason": desc},
                )
            self._wake.set()
            return
        if self._stopping:
            await msg.nak()  # hand it straight back rather than strand it until ack_wait
            return
        if request is not None:
            request[0] -= 1
            if request[0] <= 0:
                self._requests.pop(msg.subject, None)
        self._budget.active += 1
        task = asyncio.create_task(self._handle(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, msg: Msg) -> None:
        try:
            await self._handler(msg)
        except Exception:
            log.exception("message handler failed", extra={"consumer": self._consumer})
        finally:
            self._budget.active -= 1
            self._budget.wake_all()

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop asking for messages, let running handlers finish (up to ``grace_s``)."""
        self._stopping = True
        self._wake.set()
        if self._loop_task is not None:
            await self._loop_task
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
