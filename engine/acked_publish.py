"""JetStream publishes that wait for the stream's acknowledgement, lighter than nats-py's.

Every append to a run's log, every dispatch and every pushed event is one such publish.
nats-py's ``JetStreamContext.publish`` goes through its general request path (a random
token and a done-callback per request, ``asyncio.wait_for``, the standard ``json`` module
and a dataclass built by introspection), about a fifth of ``tether serve``'s CPU in a
profile of the throughput phase. This keeps nats-py's behaviour (the same errors, the same
``PubAck``) over one reply subscription with a counter for tokens: 65 instead of 92 µs of
the publisher's CPU per publish (``bench/publish_cost.py``).
"""

from __future__ import annotations

import asyncio
import itertools

import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import PubAck

from tether.engine import wire

# As the JetStream context of a connection (``nc.jetstream(timeout=10)``).
ACK_TIMEOUT_S = 10.0


class AckedPublisher:
    """Publishes to streams and waits for each acknowledgement; replies come back on one
    wildcard subscription, each to its own inbox."""

    def __init__(self, nc: NATS, *, timeout: float = ACK_TIMEOUT_S) -> None:
        self._nc = nc
        self._timeout = timeout
        self._prefix = nc.new_inbox()
        self._tokens = itertools.count(1)
        self._waiting: dict[str, asyncio.Future[Msg]] = {}
        self._sub: Subscription | None = None

    async def _ensure_sub(self) -> None:
        if self._sub is None:
            self._sub = await self._nc.subscribe(f"{self._prefix}.*", cb=self._on_reply)

    async def _on_reply(self, msg: Msg) -> None:
        waiter = self._waiting.pop(msg.subject, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(msg)

    async def publish(
        self,
        subject: str,
        payload: bytes = b"",
        *,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> PubAck:
        """Store ``payload`` on ``subject``; raises as nats-py's publish does:
        ``NoStreamResponseError`` when no stream takes the subject, an ``APIError`` for a
        refusal (``err_code`` tells which), ``nats.errors.TimeoutError`` without an answer."""
        await self._ensure_sub()
        inbox = f"{self._prefix}.{next(self._tokens)}"
        waiter: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        self._waiting[inbox] = waiter
        try:
            await self._nc.publish(subject, payload, reply=inbox, headers=headers)
            try:
                async with asyncio.timeout(self._timeout if timeout is None else timeout):
                    reply = await waiter
            except TimeoutError:
                raise nats.errors.TimeoutError from None
        finally:
            self._waiting.pop(inbox, None)
        if reply.headers and reply.headers.get(wire.STATUS) == wire.STATUS_UNAVAILABLE:
            raise nats.js.errors.NoStreamResponseError
        answer = orjson.loads(reply.data)
        if "error" in answer:
            raise nats.js.errors.APIError.from_error(answer["error"])
        return PubAck(
            stream=answer["stream"],
            seq=answer["seq"],
            domain=answer.get("domain"),
            duplicate=answer.get("duplicate"),
        )

    async def close(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            await sub.unsubscribe()
