"""Permission errors on a NATS connection, named instead of timed out.

NATS refuses a publish the user may not make with an asynchronous ``-ERR`` on the
connection, never with a reply, so a denied JetStream request would just time out.
``PermissionWatch`` records those refusals and fails the request they concern at once with
a ``NatsPermissionError`` that names the subject.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from collections import deque
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")

# "permissions violation for publish to "<subject>"" (nats-py lowercases the server's text)
_VIOLATION = re.compile(r'permissions violation for (publish|subscription) to "([^"]+)"', re.I)


class NatsPermissionError(PermissionError):
    """The NATS server refused a publish (a request) to ``subject`` for this user, or
    (``inbox``) the subscription to the reply inbox its answer would come to."""

    def __init__(self, subject: str, *, inbox: str | None = None) -> None:
        if inbox is None:
            message = f"the NATS user may not publish to {subject}"
        else:
            message = (
                f"the NATS user may not receive replies on {inbox} (subscription refused), so "
                f"no request can be answered: set TETHER_INBOX_PREFIX to the inbox prefix "
                "its permissions allow (for example _INBOX_alice)"
            )
        super().__init__(message)
        self.subject = subject
        self.inbox = inbox


class PermissionWatch:
    """The permission errors the server reported on one connection.

    NATS refuses a publish the user may not make with an asynchronous ``-ERR``, never with a
    reply, so a denied JetStream request would just time out. ``guard`` races a request
    against its refusal and fails at once, naming the subject. A refused subscription
    under ``inbox_prefix`` (where replies arrive) fails every request.
    """

    def __init__(self, inbox_prefix: str | None = None) -> None:
        self._waiting: dict[str, list[asyncio.Future[None]]] = {}
        self._inbox_prefix = inbox_prefix
        self.denied: deque[str] = deque(maxlen=100)  # recently refused subjects, lowercase
        self.inbox_denied: str | None = None

    def on_error(self, error: BaseException) -> bool:
        """Record ``error`` if it is a permission violation; returns whether it was one."""
        match = _VIOLATION.search(str(error))
        if match is None:
            return False
        subject = match.group(2).lower()
        self.denied.append(subject)
        refused = self._waiting.pop(subject, [])
        inbox, subscribing = self._inbox_prefix, match.group(1).lower() == "subscription"
        if subscribing and inbox and subject.startswith(f"{inbox.lower()}."):
            self.inbox_denied = f"{inbox}.>"
            refused = [w for waiters in self._waiting.values() for w in waiters]
        for waiter in refused:
            if not waiter.done():
                waiter.set_result(None)
        return True

    async def guard(self, subject: str, operation: Awaitable[T]) -> T:
        """Await ``operation``, a request published to ``subject``; raise
        ``NatsPermissionError`` as soon as the server refuses that publish."""
        if self.inbox_denied is not None:
            if inspect.iscoroutine(operation):
                operation.close()  # never sent
            raise NatsPermissionError(subject, inbox=self.inbox_denied)
        key = subject.lower()
        refused: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append(refused)  # before the request goes out
        task = asyncio.ensure_future(operation)
        try:
            either: set[asyncio.Future[Any]] = {task, refused}
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                return task.result()
            raise NatsPermissionError(subject, inbox=self.inbox_denied)
        finally:
            if not task.done():
                task.cancel()  # refused, or the caller gave up: no one wants the answer
            waiters = self._waiting.get(key)
            if waiters is not None and refused in waiters:
                waiters.remove(refused)
                if not waiters:
                    del self._waiting[key]
