"""An attempt's session with the run log: every durable call's write goes through it,
guarded by the sequence the attempt last saw, and NATS failures become an interruption."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import nats.errors
import nats.js.errors

from tether.engine.events import RunEvent
from tether.engine.nats_io import TRANSIENT_NATS_ERRORS
from tether.engine.state import RunState
from tether.engine.store import ConcurrencyConflictError, EventStore
from tether.engine.tracing import Tracing
from tether.errors import _Abandon, _Interrupted

T = TypeVar("T")

# (key, since epoch seconds, up to events-stream seq) -> [(seq, payload, event id)]
EventReader = Callable[[str, float, int], Awaitable[list[tuple[int, dict[str, Any], str | None]]]]


async def _no_event_reader(
    key: str, since: float, until_seq: int
) -> list[tuple[int, dict[str, Any], str | None]]:
    raise RuntimeError("lookback needs a connection to the events stream")


# Starts a child run: RunsClient.trigger, given by the app that composed the worker.
ChildTrigger = Callable[..., Awaitable[object]]


async def _no_child_trigger(*args: object, **kwargs: object) -> object:
    raise RuntimeError("starting a child run needs the worker's runs client")


class Attempt:
    """Owns the run for one attempt. Every append is guarded by the sequence this attempt last
    saw, so if anyone else writes to the run (a cancel, a timeout, another worker), this
    attempt stops at its next durable call instead of diverging."""

    def __init__(
        self,
        store: EventStore,
        state: RunState,
        number: int,
        events_position: Callable[[], Awaitable[int]],
        clock: Callable[[], float] = time.time,
        read_events: EventReader = _no_event_reader,
        tracing: Tracing | None = None,
        headers: dict[int, dict[str, str]] | None = None,
        trigger_child: ChildTrigger = _no_child_trigger,
    ) -> None:
        self.store = store
        # what this attempt appended, with the headers stored beside it
        self.appended: list[tuple[int, RunEvent, dict[str, str]]] = []
        self.trigger_child = trigger_child
        self.tracing = tracing or Tracing()
        self.headers = headers or {}  # stored headers of the run's events, by sequence
        self.previous_started_seq = state.started_seq  # the last attempt before this one
        self.state = state
        self.number = number
        self._events_position = events_position
        self._read_events = read_events
        self.clock = clock
        self._timeout: asyncio.Timeout | None = None

    async def append(self, event: RunEvent) -> int:
        headers = self.tracing.inject({})
        appending = self.store.append(event, expected_last_seq=self.state.last_seq, headers=headers)
        try:
            seq = await self.call_nats("append", appending)
        except ConcurrencyConflictError:
            raise _Abandon() from None
        self.state.last_seq = seq
        self.appended.append((seq, event, headers))
        return seq

    async def events_position(self) -> int:
        return await self.call_nats("read the events stream position", self._events_position())

    async def read_events(
        self, key: str, since: float, until_seq: int
    ) -> list[tuple[int, dict[str, Any], str | None]]:
        reading = self._read_events(key, since, until_seq)
        return await self.call_nats(f"read events on {key!r}", reading)

    async def call_nats(self, what: str, operation: Awaitable[T]) -> T:
        """Await an operation of Tether's own inside the task (not the user's code): a NATS
        failure interrupts the attempt instead of counting as the task's error; any other
        error (a conflict, a write refused as too large) passes through."""
        try:
            return await operation
        except INTERRUPTING_ERRORS as exc:
            raise _Interrupted(f"could not {what}: {type(exc).__name__}: {exc}") from exc

    def extend_deadline(self, deadline: float) -> None:
        """Move the running attempt's execution deadline (after ``refresh_timeout``)."""
        if self._timeout is not None:
            loop = asyncio.get_running_loop()
            self._timeout.reschedule(loop.time() + max(0.0, deadline - self.clock()))


# Failures of NATS itself, which pass: the attempt is interrupted and replayed later. Any
# other error from a durable call (a write refused as too large, say) is definite and
# reaches the task as before.
INTERRUPTING_ERRORS: tuple[type[Exception], ...] = (
    *TRANSIENT_NATS_ERRORS,
    nats.errors.ConnectionClosedError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.ConnectionDrainingError,
    nats.js.errors.ServiceUnavailableError,
    ConnectionError,
)
