"""Coming back from a NATS connection the client closed for good.

nats-py reconnects by itself after network trouble, but some server errors (a protocol
error such as an over-long subject) make it close the connection permanently. A process
holding such a connection would answer nothing until restarted; this watch notices and
lets its owner build everything on a new connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("tether.connection")

WATCH_INTERVAL_S = 0.5
RECOVERY_RETRY_S = 1.0


class ClosedConnectionWatch:
    """Calls ``recover()`` whenever ``is_closed()`` turns true, until stopped; a recovery
    that fails (NATS still down) is tried again a second later."""

    def __init__(
        self, what: str, is_closed: Callable[[], bool], recover: Callable[[], Awaitable[None]]
    ) -> None:
        self._what = what
        self._is_closed = is_closed
        self._recover = recover
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"watch:{self._what}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            if not self._is_closed():
                continue
            log.error(
                "the NATS connection was closed; reconnecting with a new one",
                extra={"component": self._what},
            )
            while True:
                try:
                    await self._recover()
                    break
                except Exception:
                    log.exception(
                        "reconnecting failed; trying again", extra={"component": self._what}
                    )
                    await asyncio.sleep(RECOVERY_RETRY_S)
            log.warning("working again on a new NATS connection", extra={"component": self._what})
