"""The ``Tether`` application object: task registry, clients and the NATS connection."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

from opentelemetry.trace import TracerProvider

from tether.client import RunsClient
from tether.durations import Duration, optional_timedelta, to_timedelta
from tether.engine.config import (
    DEFAULT_BACKOFF_FACTOR,
    DEFAULT_BACKOFF_INITIAL,
    DEFAULT_BACKOFF_MAX,
    DEFAULT_EXECUTION_TIMEOUT,
    Settings,
)
from tether.engine.connection import Connection
from tether.events_client import EventsClient
from tether.runtime.worker import Worker
from tether.sync import SyncRunner
from tether.task import DurableTask, TaskFunction
from tether.workflow import Workflow


class Tether:
    """Entry point. Creating it does no I/O; the connection opens on first use."""

    def __init__(
        self,
        nats_url: str | None = None,
        *,
        namespace: str | None = None,
        settings: Settings | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        """``tracer_provider``: where spans go (default: OpenTelemetry's global provider, so
        tracing is off unless one is configured)."""
        self.settings = settings or Settings.from_env(nats_url=nats_url, namespace=namespace)
        self.tracer_provider = tracer_provider
        self.tasks: dict[str, DurableTask[Any, Any]] = {}
        self.workflows: dict[str, Workflow] = {}
        self._sync = SyncRunner()
        self.runs = RunsClient(self.connection, self._sync)
        self.events = EventsClient(self.connection, self._sync)
        # One connection per event loop: a worker's loop, the loop of the *_sync calls and
        # each asyncio.run of a sync web view each get their own (a connection is bound to
        # the loop it was opened on). Kept while the loop lives.
        self._conns: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Connection] = (
            weakref.WeakKeyDictionary()
        )
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )
        self._conn: Connection | None = None  # the one used last, for connection_state()

    async def connection(self) -> Connection:
        """The connection of the running event loop, opened on first use there, and opened
        anew if NATS closed it for good (some protocol errors do; ordinary outages are
        ridden out by reconnecting)."""
        loop = asyncio.get_running_loop()
        conn = self._conns.get(loop)
        if conn is None or conn.nc.is_closed:
            lock = self._locks.setdefault(loop, asyncio.Lock())
            async with lock:
                conn = self._conns.get(loop)
                if conn is None or conn.nc.is_closed:
                    conn = await Connection.open(
                        self.settings, name="tether-sdk", tracer_provider=self.tracer_provider
                    )
                    self._conns[loop] = conn
        self._conn = conn
        return conn

    def connection_state(self) -> str:
        """``connected``, ``reconnecting``, ``closed`` (for good: the next use opens a new
        one) or ``not opened``; no I/O."""
        if self._conn is None:
            return "not opened"
        nc = self._conn.nc
        if nc.is_connected:
            return "connected"
        return "reconnecting" if nc.is_reconnecting else "closed"

    def durable_task(
        self,
        *,
        name: str | None = None,
        execution_timeout: Duration = DEFAULT_EXECUTION_TIMEOUT,
        schedule_timeout: Duration | None = None,
        retries: int = 0,
        backoff_factor: float = DEFAULT_BACKOFF_FACTOR,
        backoff_max: Duration = DEFAULT_BACKOFF_MAX,
        backoff_initial: Duration = DEFAULT_BACKOFF_INITIAL,
    ) -> Callable[[TaskFunction[Any, Any]], DurableTask[Any, Any]]:
        """Declare a durable task.

        ``execution_timeout`` bounds the whole life of a run, waits included (default 24
        hours): past it the run ends ``timed_out``. ``schedule_timeout`` ends a run
        ``timed_out`` if no worker starts it in time. ``retries`` re-runs a failed attempt
        after ``backoff_initial * backoff_factor ** (n - 1)`` (capped at ``backoff_max``);
        recorded steps and waits replay instantly; ``NonRetryableError`` fails at once.
        """

        # checked here, so a bad duration fails where the task is declared
        execution = to_timedelta(execution_timeout, "execution_timeout")
        schedule = optional_timedelta(schedule_timeout, "schedule_timeout")
        most = to_timedelta(backoff_max, "backoff_max")
        first = to_timedelta(backoff_initial, "backoff_initial")

        def register(fn: TaskFunction[Any, Any]) -> DurableTask[Any, Any]:
            task = DurableTask(
                self.runs,
                fn,
                name=name or fn.__name__,
                execution_timeout=execution,
                schedule_timeout=schedule,
                retries=retries,
                backoff_factor=backoff_factor,
                backoff_max=most,
                backoff_initial=first,
            )
            if task.name in self.tasks:
                raise ValueError(f"a task or workflow named {task.name!r} is already registered")
            self.tasks[task.name] = task
            return task

        return register

    def workflow(
        self,
        *,
        name: str,
        execution_timeout: Duration = DEFAULT_EXECUTION_TIMEOUT,
        schedule_timeout: Duration | None = None,
    ) -> Workflow:
        """Declare a workflow: a graph of ``@wf.task``s with fixed approval gates.

        ``execution_timeout`` bounds a whole run, its waits included (default 24 hours);
        ``schedule_timeout`` ends a run ``timed_out`` if no worker starts it in time."""
        if name in self.tasks:
            raise ValueError(f"a task or workflow named {name!r} is already registered")
        workflow = Workflow(
            self.runs,
            name=name,
            execution_timeout=to_timedelta(execution_timeout, "execution_timeout"),
            schedule_timeout=optional_timedelta(schedule_timeout, "schedule_timeout"),
        )
        self.workflows[name] = workflow
        self.tasks[name] = workflow.runner  # a worker runs a workflow as one task
        return workflow

    def worker(
        self,
        name: str,
        tasks: Sequence[DurableTask[Any, Any]] | None = None,
        *,
        workflows: Sequence[Workflow] | None = None,
        slots: int = 10,
    ) -> Worker:
        """A worker that runs ``tasks`` and ``workflows``, ``slots`` attempts at once (by
        default every registered task and workflow; naming either runs only those named).
        A run waiting on an event holds no slot."""
        if tasks is None and workflows is None:
            chosen = list(self.tasks.values())
        else:
            chosen = [*(tasks or []), *(workflow.runner for workflow in workflows or [])]
        return Worker(
            self.connection,
            name,
            chosen,
            slots=slots,
            trigger_child=self.runs.trigger,
        )

    async def close(self) -> None:
        """Close the connections of this event loop and of the ``*_sync`` calls."""
        loop = asyncio.get_running_loop()
        conn = self._conns.pop(loop, None)
        if conn is not None:
            await conn.close()
        sync_loop = self._sync.loop
        sync_conn = self._conns.pop(sync_loop, None) if sync_loop is not None else None
        if sync_conn is not None and sync_loop is not None and sync_loop is not loop:
            closing = asyncio.run_coroutine_threadsafe(sync_conn.close(), sync_loop)
            await asyncio.wrap_future(closing)
        self._conn = None

    def close_sync(self) -> None:
        """``close`` for synchronous code (the app's ``*_sync`` calls opened a connection)."""
        self._sync.run(self.close())

    async def __aenter__(self) -> Tether:
        await self.connection()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
