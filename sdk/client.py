"""Client side: trigger runs, wait for results, read runs, push events."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal, Protocol, TypeVar

from opentelemetry.trace import SpanKind

from tether.durations import Duration, optional_seconds
from tether.engine import codec
from tether.engine import events as ev
from tether.engine.connection import ConnectionFactory
from tether.engine.decide import CancelRun, decide
from tether.engine.events import RunRequested
from tether.engine.nats_io import TRANSIENT_NATS_ERRORS
from tether.engine.state import TERMINAL_STATUSES, RunState, evolve, fold, terminal_outcome
from tether.engine.store import ConcurrencyConflictError, decide_and_append
from tether.engine.subjects import check_run_id
from tether.engine.tracing import messaging
from tether.engine.workflow_decisions import task_statuses
from tether.engine.workflow_graph import WorkflowGraph
from tether.errors import (
    RunAlreadyFinishedError,
    RunNotFoundError,
    raise_for_outcome,
)
from tether.sync import SyncRunner
from tether.terminal_watch import RECENT_NOTICE_S, TerminalWatch


class TaskDefinition(Protocol):
    """What triggering needs of a task (``DurableTask`` is one)."""

    name: str
    execution_timeout: timedelta
    schedule_timeout: timedelta | None

    def encode_input(self, value: Any) -> Any: ...

    def workflow_graph(self) -> WorkflowGraph | None:
        """The graph a workflow's runs store (None for a durable task)."""
        ...


class ResultRef(Protocol):
    """A run started from somewhere: ``RunRef`` here, a child run's reference in a task."""

    run_id: str

    async def result(self, timeout: Duration | None = None) -> Any: ...


log = logging.getLogger("tether.client")
T = TypeVar("T")
# Why a waiter reads the run: its first look, a terminal notice, or a re-read without one.
Prompt = Literal["first", "notice", "recheck", "full"]
_TERMINAL_EVENTS = (ev.RunCompleted, ev.RunFailed, ev.RunTimedOut, ev.RunCancelled)


@dataclass(frozen=True, slots=True)
class RunEventView:
    seq: int
    type: str
    at: float
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """One task of a workflow run: ``status`` is ``pending``, ``waiting``, ``running``,
    ``completed``, ``skipped``, ``failed`` or ``cancelled``."""

    name: str
    status: str
    parents: list[str]
    output: Any = None
    error: dict[str, str] | None = None

    def __getitem__(self, field_name: str) -> Any:
        return getattr(self, field_name)


def task_infos(state: RunState) -> dict[str, TaskInfo]:
    graph = state.workflow
    if graph is None:
        return {}
    statuses = task_statuses(state)
    infos: dict[str, TaskInfo] = {}
    for node in graph.tasks:
        outcome = state.tasks.get(node.name)
        infos[node.name] = TaskInfo(
            node.name,
            statuses[node.name],
            list(node.parents),
            outcome.output if outcome is not None else None,
            outcome.error if outcome is not None else None,
        )
    handler = state.tasks.get(graph.on_failure) if graph.on_failure else None
    if graph.on_failure and handler is not None:  # it ran after the tasks that failed
        failed = [name for name in infos if infos[name].status == "failed"]
        infos[graph.on_failure] = TaskInfo(
            graph.on_failure, handler.status, failed, handler.output, handler.error
        )
    return infos


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
    # a workflow run's tasks, in the graph's order (empty for a durable task's run)
    tasks: dict[str, TaskInfo] = field(default_factory=dict)

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


@dataclass(frozen=True, slots=True)
class _Watched:
    """The terminal notices a client was already listening to when it triggered a run."""

    watch: TerminalWatch
    epoch: int
    since: float  # monotonic time of the trigger


class RunRef:
    """A handle on a triggered run."""

    def __init__(self, runs: RunsClient, run_id: str, watched: _Watched | None = None) -> None:
        self._runs = runs
        self.run_id = run_id
        self._watched = watched

    def __repr__(self) -> str:
        return f"RunRef({self.run_id!r})"

    def result_sync(self, timeout: Duration | None = None) -> Any:
        """``result`` for synchronous code: blocks the calling thread."""
        return self._runs.sync.run(self.result(timeout))

    async def result(self, timeout: Duration | None = None) -> Any:
        """Wait for the run to end; return its output or raise the matching RunError."""
        return await self._runs._result(self.run_id, timeout, self._watched)


# When a waiter re-reads a run's log. After a notice the announced write is readable within
# milliseconds (a replica behind the stream leader may take longer), so it polls from
# AFTER_NOTICE_S. Without one it still re-reads, from FIRST_RECHECK_S backing off to
# MAX_RECHECK_S, in case a notice was lost (one sent while the connection was down is gone,
# though a reconnect wakes every waiter). Those re-reads are what an idle waiter costs, so
# they are rare, and read the run's last event only; every MAX_RECHECK_S one reads the whole
# log, which also sees an ending that a later write the run ignored has covered.
AFTER_NOTICE_S = 0.002
FIRST_RECHECK_S = 5.0
MAX_RECHECK_S = 60.0


class RunsClient:
    """Trigger runs, wait for their results, read and cancel them. Each call has a
    ``*_sync`` twin for synchronous code (see ``tether.sync``)."""

    def __init__(self, connect: ConnectionFactory, sync: SyncRunner) -> None:
        self._connect = connect
        self.sync = sync
        self._watcher: TerminalWatch | None = None

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
        """Append ``run.requested``; with ``exist_ok`` an existing run of that id is kept.
        A workflow's run stores its graph and the events stream's position: its event
        conditions count every event stored after the request."""
        conn = await self._connect()
        run_id = check_run_id(run_id) if run_id else uuid.uuid4().hex
        workflow = task.workflow_graph()
        events_position = await conn.events_position() if workflow is not None else None
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
            workflow=workflow,
            events_position=events_position,
        )
        names = conn.settings.names
        template = names.run_template("requested")
        watch = self._watcher if self._watcher is not None and self._watcher.conn is conn else None
        watched = None if watch is None else _Watched(watch, watch.epoch, time.monotonic())
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
                    headers=conn.tracing.inject({}),
                )
        except ConcurrencyConflictError:
            if not exist_ok:
                raise ValueError(
                    f"a run with id {run_id!r} already exists; pick another id"
                ) from None
            watched = None  # the run is older than this call
        return RunRef(self, run_id, watched)

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
            tasks=task_infos(state),
        )

    async def _ensure_watcher(self) -> TerminalWatch:
        conn = await self._connect()
        if self._watcher is not None and self._watcher.conn is conn:
            return self._watcher
        # first use, or the app's connection changed (a new event loop, or NATS closed the
        # old one): the old subscriptions are gone with it
        self._watcher = watcher = TerminalWatch(conn)
        await watcher.start()
        return watcher

    async def wait_terminal(self, run_id: str, timeout: Duration | None = None) -> RunInfo:
        """Wait until the run's log holds a terminal event; the run as it then stands.

        A notice of a stored terminal event wakes the waiter at once, but it is only a hint:
        the run's state machine may ignore the event, a replica may answer the read before it
        holds it, and notices are missed while the connection is down.
        So the log is read after every notice and, without notices, on a backoff from
        ``FIRST_RECHECK_S`` up to ``MAX_RECHECK_S``."""

        async def ended(prompt: Prompt) -> RunInfo | None:
            if prompt in ("first", "recheck") and await self._still_going(run_id):
                return None
            info = await self.get(run_id)
            return info if info.is_terminal else None

        return await self._until_ended(run_id, ended, timeout)

    async def _still_going(self, run_id: str) -> bool:
        """Is the run's last event one of a run going on? One read of one message, where
        telling an ending (or a forged one) apart needs the whole log."""
        conn = await self._connect()
        last = await conn.store.read_last(run_id)
        if last is None:
            raise RunNotFoundError(run_id)
        return not isinstance(last[1], (*_TERMINAL_EVENTS, ev.UnusableEntry))

    async def _until_ended(
        self,
        run_id: str,
        ended: Callable[[Prompt], Awaitable[T | None]],
        timeout: Duration | None,
        watched: _Watched | None = None,
    ) -> T:
        """Call ``ended(prompt)`` until it gives a value: first at once (``"first"``), then
        after each terminal notice of the run (``"notice"``), and on a backoff without one
        (``"recheck"``): from ``AFTER_NOTICE_S`` after a notice whose read found no end
        (the write may not be readable yet), else from ``FIRST_RECHECK_S``. A notice counts
        once: from the first look on, only notices that came after the previous look began
        prompt another.

        A run this client triggered while it was listening for notices (``watched``) needs
        no first look while every notice since is still known: none means it has not
        ended, so the waiter waits for one."""
        watcher = await self._ensure_watcher()
        recheck = FIRST_RECHECK_S
        quiet = (
            watched is not None
            and watched.watch is watcher
            and watcher.heard_all_since(watched.epoch, watched.since)
        )
        prompt: Prompt | None = None if quiet else "first"
        noticed_after = time.monotonic() - RECENT_NOTICE_S  # a notice before the call counts
        async with asyncio.timeout(optional_seconds(timeout, "timeout")):
            while True:
                # registered before reading, so no completion slips by
                fut = watcher.register(run_id, after=noticed_after)
                noticed_after = time.monotonic()
                try:
                    try:
                        done = None if prompt is None else await ended(prompt)
                    except TRANSIENT_NATS_ERRORS as exc:
                        # A reconnect or a leader election: the caller's timeout still holds.
                        log.debug("run read failed; retrying", extra={"error": repr(exc)})
                    else:
                        if done is not None:
                            return done
                    if not fut.done():
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(asyncio.shield(fut), recheck)
                    if fut.done():
                        prompt = "notice"
                    else:  # the longest re-checks read it all (see MAX_RECHECK_S)
                        prompt = "recheck" if recheck < MAX_RECHECK_S else "full"
                    # after a notice keep polling quickly, else back off
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
        """The run's output once it ends, or the RunError of how it ended.

        At first, and on each re-check without a notice, only the run's last event is
        read: while it is an event of a run going on, the run has not ended, and nothing
        more is read. Otherwise, and after a notice, the whole log is folded, which tells a
        real ending from a write the state machine ignores (a forged completion, say),
        unless the chain vouches for the ending the notice brought (a completion or
        failure right after a resolution the engine marked as taken, see
        ``tether.engine.taken``): that is returned as it came."""
        return await self._result(run_id, timeout, None)

    async def _result(self, run_id: str, timeout: Duration | None, watched: _Watched | None) -> Any:
        """``result``; for a run this client triggered, ``watched`` says what it listened to
        then (see ``_until_ended``)."""

        async def ended(prompt: Prompt) -> tuple[str, Any, dict[str, str] | None] | None:
            if prompt == "notice":
                vouched = (await self._ensure_watcher()).vouched(run_id)
                if vouched is not None:  # the chain vouches for it: no read needed
                    return terminal_outcome(vouched)
            if prompt in ("first", "recheck") and await self._still_going(run_id):
                return None
            conn = await self._connect()
            state = fold(run_id, await conn.store.read(run_id))
            if not state.exists:
                raise RunNotFoundError(run_id)
            return (state.status, state.output, state.error) if state.is_terminal else None

        status, output, error = await self._until_ended(run_id, ended, timeout, watched)
        return raise_for_outcome(run_id, status, output, error)

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
            headers=conn.tracing.inject({}),
        )
        assert appended is not None  # choose never declines: it decides or raises
        # The run's trace ends here too, as it does when a worker or the engine ends it.
        conn.tracing.record_run(appended.state, "cancelled", appended.log[0][2], appended.event.at)
        return await self.get(run_id)
