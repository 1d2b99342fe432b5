"""Workers pull task dispatches and run attempts, never more at once than their slots."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from tether.engine.connection import ConnectionFactory
from tether.engine.gc_freeze import freeze_long_lived
from tether.engine.nats_io import hand_back
from tether.engine.provision import ensure_pull_consumer
from tether.engine.pull import SlotBudget, SlotPuller
from tether.engine.reconnect import ClosedConnectionWatch
from tether.logs import show_tether_logs
from tether.runtime.early_resume import NOT_DONE, EarlyResumes
from tether.runtime.executor import AttemptResult, run_attempt
from tether.runtime.session import ChildTrigger
from tether.runtime.signals import until_signalled
from tether.runtime.suspended_logs import CarriedEvent, SuspendedLogs

if TYPE_CHECKING:
    from tether.task import DurableTask

log = logging.getLogger("tether.worker")

# A read behind its dispatch (a lagging replica) is retried this often, this far apart.
BEHIND_RETRIES = 20
BEHIND_RETRY_DELAY_S = 0.25
# An interrupted attempt's dispatch comes back after 1 s, doubling up to this.
INTERRUPTED_RETRY_MAX_S = 15.0


def _dispatch_of(msg: Msg) -> tuple[dict[str, Any], str, int] | None:
    """A task message's body, the run it dispatches and the log sequence it was sent for;
    None for a malformed message."""
    try:
        body = orjson.loads(msg.data)
        return body, str(body["run_id"]), int(body.get("seq", 0))
    except Exception:
        return None


def _carried(body: dict[str, Any], seq: int) -> CarriedEvent | None:
    """The event that made the run runnable, if the dispatch carries it usably (the run
    is read otherwise: a dispatch is not dropped for what it carries)."""
    carried = body.get("carried")
    if not isinstance(carried, dict):
        return None
    try:
        return CarriedEvent(
            seq=seq,
            previous=int(carried["previous"]),
            subject=str(carried["subject"]),
            data=orjson.dumps(carried["event"]),
            headers={str(k): str(v) for k, v in dict(carried.get("headers") or {}).items()},
        )
    except (KeyError, TypeError, ValueError):
        return None


class Worker:
    """Runs attempts of ``tasks``, ``slots`` at once. Made by ``app.worker(...)``, which gives
    it the app's connection and the way to start child runs."""

    def __init__(
        self,
        connect: ConnectionFactory,
        name: str,
        tasks: Sequence[DurableTask[Any, Any]],
        *,
        slots: int = 10,
        trigger_child: ChildTrigger,
    ) -> None:
        if not tasks:
            raise ValueError(f"worker {name!r} has no tasks to run")
        self._connect = connect
        self._trigger_child = trigger_child
        self.name = name
        self.tasks = {t.name: t for t in tasks}
        self.slots = slots
        self.worker_id = f"{name}@{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._budget = SlotBudget(slots)
        self._pullers: dict[str, SlotPuller] = {}  # by task name
        self._nc: NATS | None = None
        self._watch: ClosedConnectionWatch | None = None
        self._stopped = asyncio.Event()
        self._background: asyncio.Task[None] | None = None
        self.completed_attempts = 0
        self.suspended = SuspendedLogs()
        self.early = EarlyResumes(self.tasks, self._budget, self.suspended, self._early_attempt)

    @property
    def active(self) -> int:
        """Attempts running now (suspended runs are not counted: they hold no slot)."""
        return self._budget.active

    async def _open(self) -> None:
        await self._start_pullers()
        self._watch = ClosedConnectionWatch(
            f"worker {self.name}", self._connection_closed, self._restart_pullers
        )
        self._watch.start()
        freeze_long_lived()

    def _connection_closed(self) -> bool:
        return self._nc is not None and self._nc.is_closed

    async def _restart_pullers(self) -> None:
        """NATS closed the connection for good: pull again on the app's new connection.
        Attempts that were running lost their messages, which NATS redelivers."""
        await self._stop_pullers()
        await self._start_pullers()

    async def _start_pullers(self) -> None:
        conn = await self._connect()
        self._nc = conn.nc
        names = conn.settings.names
        for task in self.tasks.values():
            consumer = names.task_consumer(task.name)
            await ensure_pull_consumer(
                conn.js,
                names.tasks_stream,
                consumer,
                filter_subjects=[names.task_subject(task.name)],
                ack_wait_s=conn.settings.task_ack_wait_s,
                watch=conn.permissions,
            )
            puller = SlotPuller(
                conn.nc,
                names.tasks_stream,
                consumer,
                self._handler(task),
                budget=self._budget,
                settles=self._settles,
            )
            await puller.start()
            conn.on_reconnect(puller.forget_requests)
            self._pullers[task.name] = puller
        await self.early.start(conn.nc, names)
        log.info(
            "worker started",
            extra={"worker": self.worker_id, "slots": self.slots, "tasks": sorted(self.tasks)},
        )

    def _handler(self, task: DurableTask[Any, Any]) -> Callable[[Msg], Awaitable[None]]:
        async def handle(msg: Msg) -> None:
            await self._handle(task, msg)

        return handle

    def _settles(self, msg: Msg) -> Awaitable[bool] | None:
        """A dispatch of a run an attempt started early for needs no slot of its own: it
        waits for that attempt (which holds one) and is acknowledged if it did the work."""
        dispatch = _dispatch_of(msg)
        if dispatch is None:
            return None
        _, run_id, dispatched_seq = dispatch
        if not self.early.took(run_id, dispatched_seq):
            return None
        return self._settle(msg, run_id, dispatched_seq)

    async def _settle(self, msg: Msg, run_id: str, dispatched_seq: int) -> bool:
        conn = await self._connect()
        heartbeat = asyncio.create_task(self._keep_alive(msg, conn.settings.task_ack_wait_s))
        try:
            if not await self.early.settled(run_id, dispatched_seq):
                return False
        except asyncio.CancelledError:
            await hand_back(msg)  # (the worker is stopping: another takes it at once)
            raise
        finally:
            heartbeat.cancel()
        await msg.ack()  # resumed from its stored resolution already
        return True

    async def _handle(self, task: DurableTask[Any, Any], msg: Msg) -> None:
        dispatch = _dispatch_of(msg)
        if dispatch is None:
            log.error("malformed task message dropped", extra={"data": msg.data[:200]})
            await msg.term()
            return
        body, run_id, dispatched_seq = dispatch
        # A dispatch that was run before (an attempt interrupted, a worker gone) may have
        # writes after the event it carries: only one never run before uses it.
        puller = self._pullers.get(task.name)
        first_run = puller.first_run(msg) if puller is not None else False
        conn = await self._connect()
        heartbeat = asyncio.create_task(self._keep_alive(msg, conn.settings.task_ack_wait_s))
        try:
            if await self.early.settled(run_id, dispatched_seq):
                await msg.ack()  # resumed from its stored resolution already
                return
            carried = _carried(body, dispatched_seq) if first_run else None
            result = await self._attempt(task, run_id, dispatched_seq, carried)
        except asyncio.CancelledError:
            await hand_back(msg)
            raise
        except Exception:
            # NATS trouble mid-attempt: hand the message back for another try.
            log.exception("attempt crashed", extra={"run_id": run_id, "task": task.name})
            await hand_back(msg, 1.0)
            return
        finally:
            heartbeat.cancel()
        if result.outcome == "interrupted":
            # NATS trouble mid-attempt, or a late write that left the run on this attempt:
            # hand the dispatch back so a new attempt replays what was recorded.
            delay = min(INTERRUPTED_RETRY_MAX_S, 2.0 ** min(msg.metadata.num_delivered, 5) / 2)
            log.warning(
                "attempt interrupted; handing the run back",
                extra={"run_id": run_id, "detail": result.detail, "retry_in_s": delay},
            )
            await hand_back(msg, delay)
            return
        if result.outcome == "behind" and msg.metadata.num_delivered < BEHIND_RETRIES:
            log.info("run log not caught up yet; retrying", extra={"run_id": run_id})
            await msg.nak(delay=BEHIND_RETRY_DELAY_S)
            return
        if result.outcome == "behind":
            log.error(
                "dispatch names a log position that never became readable; dropped",
                extra={"run_id": run_id, "detail": result.detail},
            )
        self.completed_attempts += 1
        log.debug("attempt ended", extra={"run_id": run_id, "outcome": result.outcome})
        await msg.ack()

    async def _attempt(
        self,
        task: DurableTask[Any, Any],
        run_id: str,
        dispatched_seq: int,
        carried: CarriedEvent | None,
    ) -> AttemptResult:
        conn = await self._connect()
        return await run_attempt(
            task,
            conn.store,
            run_id,
            worker_id=self.worker_id,
            events_position=conn.events_position,
            read_events=conn.read_events,
            tracing=conn.tracing,
            dispatched_seq=dispatched_seq,
            trigger_child=self._trigger_child,
            suspended=self.suspended,
            carried=carried,
        )

    async def _early_attempt(
        self, task: DurableTask[Any, Any], run_id: str, seq: int, carried: CarriedEvent
    ) -> str:
        result = await self._attempt(task, run_id, seq, carried)
        if result.outcome not in NOT_DONE:
            self.completed_attempts += 1
        log.debug("early attempt ended", extra={"run_id": run_id, "outcome": result.outcome})
        return result.outcome

    @staticmethod
    async def _keep_alive(msg: Msg, ack_wait_s: float) -> None:
        while True:
            await asyncio.sleep(max(ack_wait_s / 3, 0.5))
            try:
                await msg.in_progress()
            except Exception as exc:  # NATS away: the next beat tries again
                log.debug("in-progress beat failed", extra={"error": repr(exc)})

    def run(self) -> None:
        """Run the worker in this process until SIGINT (Ctrl-C) or SIGTERM, then stop
        cleanly: running attempts get a grace period to finish, and what is not finished is
        handed back to the queue for another worker. Logs one line when it is ready (on
        stderr, if the application configured no logging). For a script's ``__main__``;
        inside an event loop, use ``await worker.start()`` or ``async with worker:``."""
        show_tether_logs()
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            asyncio.run(self._run_until_signalled())
            return
        raise RuntimeError(
            "worker.run() blocks and starts its own event loop; inside one, use "
            "`await worker.start()` or `async with worker:`"
        )

    async def _run_until_signalled(self) -> None:
        async with self:
            log.info(
                f"worker {self.name} ready: tasks {', '.join(sorted(self.tasks))}, "
                f"{self.slots} slots; Ctrl-C or SIGTERM stops it",
                extra={"worker": self.worker_id},
            )
            await until_signalled()
            log.info(f"worker {self.name} stopping", extra={"worker": self.worker_id})

    async def start(self) -> None:
        """Run until ``stop()`` is called."""
        await self._open()
        try:
            await self._stopped.wait()
        finally:
            await self._close()

    async def stop(self) -> None:
        self._stopped.set()
        if self._background is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._background
            self._background = None

    async def _stop_pullers(self) -> None:
        await self.early.stop()
        for puller in self._pullers.values():
            await puller.stop()
        self._pullers.clear()
        self._budget.pullers.clear()

    async def _close(self) -> None:
        if self._watch is not None:
            await self._watch.stop()
            self._watch = None
        await self._stop_pullers()
        log.info("worker stopped", extra={"worker": self.worker_id})

    async def __aenter__(self) -> Worker:
        await self._open()

        async def wait_then_close() -> None:
            try:
                await self._stopped.wait()
            finally:
                await self._close()

        self._background = asyncio.create_task(wait_then_close())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
