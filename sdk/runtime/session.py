"""An attempt's session with the run log: every durable call's write goes through it,
guarded by the sequence the attempt last saw, and NATS failures become an interruption."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import nats.errors
import nats.js.errors

from tether.engine.events import AttemptStarted, AttemptWrite, RunEvent
from tether.engine.nats_io import TRANSIENT_NATS_ERRORS
from tether.engine.state import RunState, begin_attempt, evolve
from tether.engine.store import ConcurrencyConflictError, EventStore
from tether.engine.tracing import Tracing
from tether.errors import _Abandon, _Interrupted

T = TypeVar("T")

# An attempt that has written nothing after this long records its start (run.started), so
# that a run doing long work before its first durable call shows as running. One that
# suspends or ends sooner records no start: its first write begins it.
START_RECORD_AFTER_S = 0.25

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
    attempt stops at its next durable call instead of diverging.

    The attempt begins with ``run.started`` (``begin``) or, when it has not written one,
    with its first write, which then names the worker (see ``AttemptWrite``). Appends are
    serialized: each is guarded by the sequence the one before it got."""

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
        worker_id: str = "",
    ) -> None:
        self.store = store
        self.worker_id = worker_id
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
        self.began = False
        self._writing = asyncio.Lock()
        self._start_record: asyncio.TimerHandle | None = None
        self._recording_start: asyncio.Task[None] | None = None

    async def begin(self) -> None:
        """Record the attempt's start (``run.started``) unless it has begun. Called before a
        step's function runs: the write is guarded like any other, so a second attempt of
        the same dispatch (one delivered twice) stops here, before the side effect."""
        async with self._writing:
            if not self.began:
                await self._begin()

    async def _begin(self) -> None:
        started = AttemptStarted(
            run_id=self.state.run_id, at=self.clock(), attempt=self.number, worker=self.worker_id
        )
        evolve(self.state, started, await self._append(started))

    def begin_lazily(self) -> None:
        """Record the start only if nothing was written ``START_RECORD_AFTER_S`` from now."""
        loop = asyncio.get_running_loop()
        self._start_record = loop.call_later(START_RECORD_AFTER_S, self._record_start_soon)

    def _record_start_soon(self) -> None:
        if not self.began:
            self._recording_start = asyncio.create_task(self._record_start())

    async def _record_start(self) -> None:
        # A failure here stops nothing: the attempt's next write meets the same conflict or
        # outage and handles it.
        with contextlib.suppress(_Abandon, _Interrupted):
            await self.begin()

    async def close(self) -> None:
        """The attempt is over: no start is recorded after it."""
        if self._start_record is not None:
            self._start_record.cancel()
        if self._recording_start is not None:
            with contextlib.suppress(Exception):
                await self._recording_start

    async def append(self, event: RunEvent) -> int:
        async with self._writing:
            return await self._append(event)

    async def _append(self, event: RunEvent) -> int:
        begins = not self.began and isinstance(event, AttemptWrite)
        if begins:
            event = event.model_copy(update={"worker": self.worker_id})
        headers = self.tracing.inject({})
        appending = self.store.append(event, expected_last_seq=self.state.last_seq, headers=headers)
        try:
            seq = await self.call_nats("append", appending)
        except ConcurrencyConflictError:
            raise _Abandon() from None
        self.state.last_seq = seq
        self.appended.append((seq, event, headers))
        if begins:
            begin_attempt(self.state, self.number, seq)
        if begins or isinstance(event, AttemptStarted):
            self.began = True
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
