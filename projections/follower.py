"""Follow a stream from a position: deliver what is stored until caught up, then live.

The matcher, the timer and the run index each read a stream this way: from where their
checkpoint (or the bucket's current state) leaves off, so start-up reads what is open and
what happened since, not all history. An ordered consumer keeps delivery in stream order
and survives a NATS restart (nats-py recreates it after two missed idle heartbeats).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from tether.engine.nats_io import ORDERED_IDLE_HEARTBEAT_S, unsubscribe_quietly

Handler = Callable[[Msg], Awaitable[None] | None]


class Follower:
    """Delivers ``stream``'s messages on ``subjects`` after ``after_seq`` (or the last
    value per subject) to ``handler``, one at a time, in order."""

    def __init__(
        self,
        js: JetStreamContext,
        *,
        stream: str,
        subjects: list[str],
        handler: Handler,
        after_seq: int = 0,
        last_per_subject: bool = False,
    ) -> None:
        self._js = js
        self._stream = stream
        self._subjects = subjects
        self._handler = handler
        self._after_seq = after_seq
        self._last_per_subject = last_per_subject
        self.position = after_seq  # the last stream sequence handled
        self._caught_up = asyncio.Event()
        self._catch_up_target: int | None = None  # deliveries to handle before caught up
        self._handled = 0  # deliveries handled (the consumer sequence of the last one)
        self._sub: Any = None

    @property
    def caught_up(self) -> bool:
        return self._caught_up.is_set()

    async def start(self, *, catch_up_timeout_s: float | None = None) -> bool:
        """Subscribe and wait until what was stored at the start is handled; False if that
        took longer than ``catch_up_timeout_s`` (following goes on regardless)."""
        if self._last_per_subject:
            policy: dict[str, Any] = {"deliver_policy": DeliverPolicy.LAST_PER_SUBJECT}
        elif self._after_seq > 0:
            policy = {
                "deliver_policy": DeliverPolicy.BY_START_SEQUENCE,
                "opt_start_seq": self._after_seq + 1,
            }
        else:
            policy = {"deliver_policy": DeliverPolicy.ALL}
        several = len(self._subjects) > 1
        self._sub = await self._js.subscribe(
            self._subjects[0],
            stream=self._stream,
            cb=self._on_msg,
            ordered_consumer=True,
            idle_heartbeat=ORDERED_IDLE_HEARTBEAT_S,
            config=ConsumerConfig(filter_subjects=self._subjects if several else None, **policy),
        )
        info = await self._sub.consumer_info()
        if info.num_pending == 0:
            # Nothing more to deliver: caught up once what was delivered so far is handled.
            # Counted in deliveries (consumer sequence): a filtered consumer may report a
            # stream position past the last message it will ever deliver.
            delivered = int(info.delivered.consumer_seq or 0)
            if self._handled >= delivered:
                self._caught_up.set()
            else:
                self._catch_up_target = delivered
        try:
            await asyncio.wait_for(self._caught_up.wait(), catch_up_timeout_s)
        except TimeoutError:
            return False
        return True

    async def _on_msg(self, msg: Msg) -> None:
        result = self._handler(msg)
        if inspect.isawaitable(result):
            await result
        self.position = msg.metadata.sequence.stream
        self._handled = msg.metadata.sequence.consumer
        if not self._caught_up.is_set() and (
            msg.metadata.num_pending == 0
            or (self._catch_up_target is not None and self._handled >= self._catch_up_target)
        ):
            self._caught_up.set()

    async def stop(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            await unsubscribe_quietly(sub, f"follower of {self._stream}")
