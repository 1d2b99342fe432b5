"""A continuous pull consumer that never runs more messages than it has free slots.

nats-py only offers ``fetch``; concurrent fetches on one subscription steal each other's
messages. This sends its own pull requests (one reply inbox each, under one subscription),
counts what the server still owes, and asks for more only when a slot frees, so a worker
with 2 slots never holds a third task.
Pullers sharing slots (one per task of a worker) split them; each idle puller keeps at least
one request open, and a message that arrives when every slot is taken is handed back at once,
unless its owner can settle it without a slot (``Settles``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from tether.engine import wire
from tether.engine.nats_io import DESCRIPTION, hand_back, status_of, unsubscribe_quietly

log = logging.getLogger("tether.pull")

Handler = Callable[[Msg], Awaitable[None]]
# For a message that may need no slot of its own (work already running elsewhere in the
# process), an awaitable that settles it without one: True once it is acknowledged, False
# when it needs a slot and the handler after all. None for any other message.
Settles = Callable[[Msg], Awaitable[bool] | None]

HANDLER_FAILED_REDELIVERY_S = 1.0
# A pull request lives this long on the server, which then answers 408. One that gets no
# answer by the grace after it died with the consumer's leader (or the connection): its
# count is dropped and asked again, so a failover stalls a puller for seconds, not longer.
PULL_EXPIRES_S = 3.0
PULL_GRACE_S = 1.0
# Messages handed back without being run are remembered (at most this many), so that a
# redelivery that only ever came here counts as a first delivery (``first_run``).
UNRUN_REMEMBERED = 10_000


async def finish_or_cancel(tasks: set[asyncio.Task[None]], grace_s: float) -> None:
    """Let ``tasks`` finish for up to ``grace_s``, then cancel the rest (and give them a
    second to unwind)."""
    if not tasks:
        return
    _, late = await asyncio.wait(set(tasks), timeout=grace_s)
    for task in late:
        task.cancel()
    if late:
        await asyncio.wait(late, timeout=1.0)


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

    def take(self) -> bool:
        """Take a slot for work that comes from outside the pullers; False when every slot
        runs something. (A delivery the pullers are owed that then finds every slot taken
        is handed back, as always.)"""
        if self.active >= self.capacity:
            return False
        self.active += 1
        return True

    def give_back(self) -> bool:
        """Return a slot (taken by ``take`` or by a puller's delivery); when every slot was
        taken, every puller asks again. Whether they were all taken."""
        starved = self.free() <= 0
        self.active -= 1
        if starved:
            self.wake_all()
        return starved


class SlotPuller:
    def __init__(
        self,
        nc: NATS,
        stream: str,
        consumer: str,
        handler: Handler,
        *,
        budget: SlotBudget,
        expires_s: float = PULL_EXPIRES_S,
        settles: Settles | None = None,
    ) -> None:
        self._nc = nc
        self._next_subject = wire.consumer_next(stream, consumer)
        self._consumer = consumer
        self._handler = handler
        self._settles = settles
        self._budget = budget
        budget.pullers.append(self)
        self._expires_s = expires_s
        self._prefix = nc.new_inbox()
        self._counter = 0
        # A JetStream delivery carries its stream subject, not the request's inbox, so what
        # the server still owes is counted in total: +batch per request, -1 per delivery, and
        # minus the remainder a 408/409 status reports (statuses do arrive on the inbox).
        self._owed = 0
        # open request inbox -> (batch, client-side give-up time)
        self._requests: dict[str, tuple[int, float]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._unrun: OrderedDict[int, int] = OrderedDict()  # stream seq -> hand-backs
        self._wake = asyncio.Event()
        self._stopping = False
        self._sub: Subscription | None = None
        self._loop_task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        self._wake.set()

    async def forget_requests(self) -> None:
        """After a reconnect the server has forgotten our pull requests: stop counting them
        and ask again (a surplus delivery is handed back, never run over the slots)."""
        self._requests.clear()
        self._owed = 0
        self._wake.set()

    @property
    def outstanding(self) -> int:
        return self._owed

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(f"{self._prefix}.*", cb=self._on_msg)
        self._loop_task = asyncio.create_task(self._run(), name=f"pull:{self._consumer}")

    async def _run(self) -> None:
        while not self._stopping:
            now = time.monotonic()
            for inbox, (_, give_up) in list(self._requests.items()):
                if now > give_up:  # filled (no status is sent for that) or lost in a reconnect
                    del self._requests[inbox]
            if not self._requests:
                self._owed = 0  # with no request open, nothing can be owed
            want = self._wanted()
            if want > 0 and self._nc.is_connected:
                await self._request(want)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._wake.wait()

    def _wanted(self) -> int:
        """How many messages to ask for now. Pullers sharing a budget each ask for at most
        their share of it, and an idle puller always keeps one request open while a slot is
        free: otherwise one task's standing request could hold every slot of the worker and
        starve its other tasks. A delivery beyond capacity is handed back at once (unless it
        settles without a slot).

        While messages are still owed, a puller asks again only once half its share is
        used up: a request per handled message would double the messages a busy consumer
        costs both ends, and the open requests keep deliveries coming meanwhile."""
        budget = self._budget
        share = -(-budget.capacity // max(1, len(budget.pullers)))
        want = min(budget.free(), share - self.outstanding)
        if self.outstanding > 0 and want < max(1, share // 2):
            return 0
        if want <= 0 and self.outstanding == 0 and budget.active < budget.capacity:
            want = 1
        return want

    async def _request(self, batch: int) -> None:
        self._counter += 1
        inbox = f"{self._prefix}.{self._counter}"
        self._requests[inbox] = (batch, time.monotonic() + self._expires_s + PULL_GRACE_S)
        self._owed += batch
        body = orjson.dumps({"batch": batch, "expires": int(self._expires_s * 1e9)})
        try:
            await self._nc.publish(self._next_subject, body, reply=inbox)
        except Exception:
            self._requests.pop(inbox, None)
            self._owed = max(0, self._owed - batch)
            log.exception("pull request failed", extra={"consumer": self._consumer})

    async def _on_msg(self, msg: Msg) -> None:
        status = status_of(msg)
        if status is not None:
            if status == "100":
                return
            request = self._requests.pop(msg.subject, None)
            remainder = (msg.headers or {}).get(wire.PENDING_MESSAGES)
            if remainder is not None:
                self._owed -= int(remainder)
            elif request is not None:
                self._owed -= request[0]  # refused outright (e.g. too many waiting requests)
            self._owed = max(0, self._owed)
            if status == "409":
                desc = (msg.headers or {}).get(DESCRIPTION, "")
                log.warning(
                    "pull request refused",
                    extra={"consumer": self._consumer, "reason": desc},
                )
            self._wake.set()
            return
        self._owed = max(0, self._owed - 1)
        settling = None if self._settles is None or self._stopping else self._settles(msg)
        if settling is not None:
            self._spawn(self._settle(msg, settling))
            return
        if self._stopping or self._budget.active >= self._budget.capacity:
            await self._hand_back_unrun(msg)  # rather than strand it until ack_wait
            return
        self._budget.active += 1
        self._spawn(self._handle(msg))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _settle(self, msg: Msg, settling: Awaitable[bool]) -> None:
        """Settle ``msg`` without a slot; if it needs one after all, run it in a free slot
        (or hand it back when there is none, as a delivery beyond capacity is)."""
        try:
            if await settling:
                if self._wanted() > 0:
                    self.wake()  # the delivery it was owed is used up
                return
        except Exception:
            log.exception(
                "settling a message failed; redelivering", extra={"consumer": self._consumer}
            )
            await hand_back(msg, HANDLER_FAILED_REDELIVERY_S)
            return
        if self._stopping or not self._budget.take():
            await self._hand_back_unrun(msg)
            return
        await self._handle(msg)

    async def _hand_back_unrun(self, msg: Msg) -> None:
        seq = msg.metadata.sequence.stream
        self._unrun[seq] = self._unrun.pop(seq, 0) + 1
        while len(self._unrun) > UNRUN_REMEMBERED:
            self._unrun.popitem(last=False)
        await msg.nak()

    def first_run(self, msg: Msg) -> bool:
        """Whether no earlier delivery of ``msg`` may have run it: this is its first, or
        each one before came to this puller and was handed back unrun."""
        unrun = self._unrun.get(msg.metadata.sequence.stream, 0)
        return (msg.metadata.num_delivered or 1) - unrun <= 1

    async def _handle(self, msg: Msg) -> None:
        try:
            await self._handler(msg)
        except Exception:
            log.exception(
                "message handler failed; redelivering", extra={"consumer": self._consumer}
            )
            # Soon, not after the whole ack wait: most failures are NATS passing trouble.
            await hand_back(msg, HANDLER_FAILED_REDELIVERY_S)
        finally:
            self._unrun.pop(msg.metadata.sequence.stream, None)  # run: no longer first
            # The freed slot is this puller's to ask again for; the others only gain from
            # it when the slots were all taken (otherwise they had slots to ask with).
            if not self._budget.give_back() and self._wanted() > 0:
                self.wake()

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop asking for messages, let running handlers finish (up to ``grace_s``)."""
        self._stopping = True
        if self in self._budget.pullers:  # its share goes to the pullers that remain
            self._budget.pullers.remove(self)
        self._wake.set()
        if self._loop_task is not None:
            await self._loop_task
        await finish_or_cancel(self._tasks, grace_s)
        if self._sub is not None:
            sub, self._sub = self._sub, None
            await unsubscribe_quietly(sub, f"puller {self._consumer}")
