"""Client side: trigger runs, wait for results, read runs, push events."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from opentelemetry.trace import SpanKind

from tether.durations import Duration, optional_seconds
from tether.engine import codec, ids
from tether.engine import events as ev
from tether.engine.connection import Connection, ConnectionFactory
from tether.engine.decide import CancelRun, decide
from tether.engine.events import RunRequested
from tether.engine.nats_io import TRANSIENT_NATS_ERRORS
from tether.engine.state import TERMINAL_STATUSES, RunState, evolve
from tether.engine.store import ConcurrencyConflictError, decide_and_append
from tether.engine.subjects import check_run_id, run_subject_parts
from tether.engine.tracing import messaging
from tether.errors import (
    RunAlreadyFinishedError,
    RunNotFoundError,
    raise_for_outcome,
)
from tether.sync import SyncRunner


class TaskDefinition(Protocol):
    """What triggering needs of a task (``DurableTask`` is one)."""

    name: str
    execution_timeout: timedelta
    schedule_timeout: timedelta | None

    def encode_input(self, value: Any) -> Any: ...


class ResultRef(Protocol):
    """A run started from somewhere: ``RunRef`` here, a child run's reference in a task."""

    run_id: str

    async def result(self, timeout: Duration | None = None) -> Any: ...


log = logging.getLogger("tether.client")


@dataclass(frozen=True, slots=True)
class RunEventView:
    seq: int
    type: str
    at: float
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RunInfo:
    run_id: str
    task: str
    status: str
    input: Any
    output: Any
    error: dict[str, str] | None
    attempt: int
    created_at: float
    ended_at: float | None
    events: list[RunEventView] = field(default_factory=list)

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


def _raise_for(info: RunInfo) -> Any:
    return raise_for_outcome(info.run_id, info.status, info.output, info.error)


class RunRef:
    """A handle on a triggered run."""

    def __init__(self, runs: RunsClient, run_id: str) -> None:
        self._runs = runs
        self.run_id = run_id

    def __repr__(self) -> str:
        return f"RunRef({self.run_id!r})"

    def result_sync(self, timeout: Duration | None = None) -> Any:
        """``result`` for synchronous code: blocks the calling thread."""
        return self._runs.sync.run(self.result(timeout))

    async def result(self, timeout: Duration | None = None) -> Any:
        """Wait for the run to end; return its output or raise the matching RunError."""
        return await self._runs.result(self.run_id, timeout=timeout)


class _TerminalWatcher:
    """One set of subscriptions on terminal run subjects, shared by every waiting caller."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._subs: list[Subscription] = []

    async def start(self) -> None:
        names = self.conn.settings.names
        for token in ev.TERMINAL_TOKENS:
            sub = await self.conn.nc.subscribe(names.runs_token_filter(token), cb=self._on_msg)
            self._subs.append(sub)
        # Notices published while the connection was down are gone: every waiter re-reads.
        self.conn.on_reconnect(self.wake_all)

    async def _on_msg(self, msg: Msg) -> None:
        self._wake(run_subject_parts(msg.subject)[0])

    def _wake(self, run_id: str) -> None:
        for fut in self._waiters.pop(run_id, []):
            if not fut.done():
                fut.set_result(None)

    async def wake_all(self) -> None:
        for run_id in list(self._waiters):
            self._wake(run_id)

    def register(self, run_id: str) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(run_id, []).append(fut)
        return fut

    def discard(self, run_id: str, fut: asyncio.Future[None]) -> None:
        waiters = self._waiters.get(run_id)
        if waiters and fut in waiters:
            waiters.remove(fut)
            if not waiters:
                del self._waiters[run_id]


# When a waiter re-reads a run's log. After a notice the announced write is readable within
# milliseconds, so it polls from AFTER_NOTICE_S. Without one it still re-reads, from
# FIRST_RECHECK_S backing off to MAX_RECHECK_S: a notice can be missed, because the server
# fans a write out to core subscribers before the stream stores it (a subscription made in
# that moment gets no notice and a read does not see the write yet), and notices sent while
# the connection is down are lost.
AFTER_NOTICE_S = 0.01
FIRST_RECHECK_S = 0.25
MAX_RECHECK_S = 5.0


class RunsClient:
    """Trigger runs, wait for their results, read and cancel them. Each call has a
    ``*_sync`` twin for synchronous code (see ``tether.sync``)."""

    def __init__(self, connect: ConnectionFactory, sync: SyncRunner) -> None:
        self._connect = connect
        self.sync = sync
        self._watcher: _TerminalWatcher | None = None

    async def trigger(
        self,
        task: TaskDefinition,
        input: Any,
        *,
        metadata: dict[str, Any] | None = None,
        run_id: str | None = None,
        parent_run_id: str | None = None,
        exist_ok: bool = False,
    ) -> RunRef:
        """Append ``run.requested``; with ``exist_ok`` an existing run of that id is kept."""
        conn = await self._connect()
        run_id = check_run_id(run_id) if run_id else uuid.uuid4().hex
        event = RunRequested(
            run_id=run_id,
            at=time.time(),
            task=task.name,
            input=task.encode_input(input),
            execution_timeout_s=task.execution_timeout.total_seconds(),
            metadata=codec.to_json_value(metadata or {}),
            schedule_timeout_s=(
                task.schedule_timeout.total_seconds() if task.schedule_timeout else None
            ),
            parent_run_id=parent_run_id,
        )
        names = conn.settings.names
        template = names.run_template("requested")
        try:
            # The trigger's span anchors the run's trace; its context is stored with the
            # request so that every attempt, however late, joins it.
            with conn.tracing.span(
                f"publish {template}",
                kind=SpanKind.PRODUCER,
                attributes={
                    **messaging(
                        "publish", "send", names.run_subject(run_id, "requested"), template
                    ),
                    "tether.run_id": run_id,
                    "tether.task": task.name,
                    "tether.parent_run_id": parent_run_id,
                },
            ):
                await conn.store.append(
                    event,
                    expected_last_seq=0,
                    msg_id=ids.request_msg_id(run_id),
                    headers=conn.tracing.inject({}),
                )
        except ConcurrencyConflictError:
            if not exist_ok:
                raise ValueError(
                    f"a run with id {run_id!r} already exists; pick another id"
                ) from None
        return RunRef(self, run_id)

    def ref(self, run_id: str) -> RunRef:
        return RunRef(self, run_id)

    async def state(self, run_id: str) -> tuple[RunState, list[RunEventView]]:
        conn = await self._connect()
        state = RunState(run_id=run_id)
        views: list[RunEventView] = []
        for seq, event in await conn.store.read(run_id):
            evolve(state, event, seq)
            views.append(RunEventView(seq, event.type, event.at, event.model_dump(mode="json")))
        return state, views

    async def get(self, run_id: str) -> RunInfo:
        """The run's status, output or error, and its events; RunNotFoundError if unknown."""
        state, views = await self.state(run_id)
        if not state.exists:
            raise RunNotFoundError(run_id)
        return RunInfo(
            run_id=run_id,
            task=state.task,
            status=state.status,
            input=state.input,
            output=state.output,
            error=state.error,
            attempt=state.attempt,
            created_at=state.requested_at,
            ended_at=state.ended_at,
            events=views,
        )

    async def _ensure_watcher(self) -> _TerminalWatcher:
        conn = await self._connect()
        if self._watcher is not None and self._watcher.conn is conn:
            return self._watcher
        # first use, or the app's connection changed (a new event loop, or NATS closed the
        # old one): the old subscriptions are gone with it
        self._watcher = watcher = _TerminalWatcher(conn)
        await watcher.start()
        return watcher

    async def wait_terminal(self, run_id: str, timeout: Duration | None = None) -> RunInfo:
        """Wait until the run's log holds a terminal event.

        A notice on a terminal subject wakes the waiter at once, but it is only a hint: core
        subscribers also see writes the store refused (a lost OCC race), can see a stored
        write before it is readable, and miss what is written while they subscribe or while
        the connection is down. So the log is re-read after every notice and, without
        notices, on a backoff from ``FIRST_RECHECK_S`` up to ``MAX_RECHECK_S``."""
        watcher = await self._ensure_watcher()
        recheck = FIRST_RECHECK_S
        async with asyncio.timeout(optional_seconds(timeout, "timeout")):
            while True:
                fut = watcher.register(run_id)  # before reading, so no completion slips by
                try:
                    try:
                        info = await self.get(run_id)
                    except TRANSIENT_NATS_ERRORS as exc:
                        # A reconnect or a leader election: the caller's timeout still holds.
                        log.debug("run read failed; retrying", extra={"error": repr(exc)})
                    else:
                        if info.is_terminal:
                            return info
                    if not fut.done():
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(asyncio.shield(fut), recheck)
                    # re-read now; after a notice keep polling quickly, else back off
                    recheck = AFTER_NOTICE_S if fut.done() else min(recheck * 2, MAX_RECHECK_S)
                finally:
                    watcher.discard(run_id, fut)

    def get_sync(self, run_id: str) -> RunInfo:
        """``get`` for synchronous code."""
        return self.sync.run(self.get(run_id))

    def cancel_sync(self, run_id: str, *, reason: str = "cancelled") -> RunInfo:
        """``cancel`` for synchronous code."""
        return self.sync.run(self.cancel(run_id, reason=reason))

    async def result(self, run_id: str, timeout: Duration | None = None) -> Any:
        return _raise_for(await self.wait_terminal(run_id, timeout=timeout))

    async def cancel(self, run_id: str, *, reason: str = "cancelled") -> RunInfo:
        """End a queued, running or waiting run ``cancelled``.

        A waiting run's wait is closed and its deadlines removed; a running attempt stops at
        its next durable call (its write is refused). Raises ``RunNotFoundError`` for an
        unknown run and ``RunAlreadyFinishedError`` for one that has already ended.
        """
        conn = await self._connect()

        def choose(state: RunState) -> ev.RunEvent:
            if not state.exists:
                raise RunNotFoundError(run_id)
            if state.is_terminal:
                raise RunAlreadyFinishedError(run_id, state.status)
            return decide(state, CancelRun(reason=reason), time.time())[0]

        appended = await decide_and_append(
            conn.store,
            run_id,
            choose,
            msg_id=lambda state: ids.cancel_msg_id(run_id, state.last_seq),
            headers=conn.tracing.inject({}),
        )
        assert appended is not None  # choose never declines: it decides or raises
        # The run's trace ends here too, as it does when a worker or the engine ends it.
        conn.tracing.record_run(appended.state, "cancelled", appended.log[0][2], appended.event.at)
        return await self.get(run_id)
