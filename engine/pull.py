"""A continuous pull consumer that never runs more messages than it has free slots.

nats-py only offers ``fetch``; concurrent fetches on one subscription steal each other's
messages. This keeps one inbox per pull request, counts what each request may still deliver,
and asks for more only when a slot frees, so a worker with 2 slots never holds a third task.
Pullers sharing slots (one per task of a worker) split them; each idle puller keeps at least
one request open, and a message that arrives when every slot is taken is handed back at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
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
        # One subscription per open request: a JetStream delivery carries the stream subject,
        # not the inbox, so only the subscription it arrives on says which request it used.
        self._subs: dict[str, Subscription] = {}
        self._loop_task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        self._wake.set()

    async def forget_requests(self) -> None:
        """After a reconnect the server has forgotten our pull requests: stop waiting on
        them and ask again (a surplus delivery is handed back, never run over the slots)."""
        for inbox in list(self._requests):
            await self._forget(inbox)
        self._wake.set()

    @property
    def outstanding(self) -> int:
        return int(sum(r[0] for r in self._requests.values()))

    async def start(self) -> None:
        self._loop_task = asyncio.create_task(self._run(), name=f"pull:{self._consumer}")

    async def _run(self) -> None:
        while not self._stopping:
            now = time.monotonic()
            for inbox, (_, give_up) in list(self._requests.items()):
                if now > give_up:  # the server's 408 never came (e.g. a reconnect)
                    await self._forget(inbox)
            want = self._wanted()
            if want > 0 and self._nc.is_connected:
                await self._request(want)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=1.0)

    def _wanted(self) -> int:
        """How many messages to ask for now. Pullers sharing a budget each ask for at most
        their share of it, and an idle puller always keeps one request open while a slot is
        free: otherwise one task's standing request could hold every slot of the worker and
        starve its other tasks. The rare delivery beyond capacity is handed back at once."""
        budget = self._budget
        share = -(-budget.capacity // max(1, len(budget.pullers)))
        want = min(budget.free(), share - self.outstanding)
        if want <= 0 and self.outstanding == 0 and budget.active < budget.capacity:
            want = 1
        return want

    async def _request(self, batch: int) -> None:
        self._counter += 1
        inbox = f"{self._prefix}.{self._counter}"
        self._requests[inbox] = [batch, time.monotonic() + self._expires_s + 5.0]
        body = orjson.dumps({"batch": batch, "expires": int(self._expires_s * 1e9)})
        try:
            self._subs[inbox] = await self._nc.subscribe(
                inbox, cb=functools.partial(self._on_msg, inbox)
            )
            await self._nc.publish(self._next_subject, body, reply=inbox)
        except Exception:
            await self._forget(inbox)
            log.exception("pull request failed", extra={"consumer": self._consumer})

    async def _forget(self, inbox: str) -> None:
        """The request is over (filled, expired, refused or given up): stop counting it."""
        self._requests.pop(inbox, None)
        sub = self._subs.pop(inbox, None)
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _on_msg(self, inbox: str, msg: Msg) -> None:
        # Unsubscribing cancels the task that runs this callback (nats-py), so a finished
        # request stops being counted at once but is unsubscribed only as the last step,
        # after the message has been handed on.
        status = status_of(msg)
        if status is not None:
            if status == "100":
                return
            self._requests.pop(inbox, None)
            if status == "409":
                desc = (msg.headers or {}).get(DESCRIPTION, "")
                log.warning(
                    "pull request refused",
                    extra={"consumer": self._consumer, "reason": desc},
                )
            self._wake.set()
            await self._forget(inbox)
            return
        request = self._requests.get(inbox)
        finished = False
        if request is not None:
            request[0] -= 1
            if request[0] <= 0:
                self._requests.pop(inbox, None)
                finished = True
        if self._stopping or self._budget.active >= self._budget.capacity:
            await msg.nak()  # hand it straight back rather than strand it until ack_wait
        else:
            self._budget.active += 1
            task = asyncio.create_task(self._handle(msg))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if finished:
            await self._forget(inbox)

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
        for inbox in list(self._subs):
            await self._forget(inbox)
