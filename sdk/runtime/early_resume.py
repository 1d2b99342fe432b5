"""Resuming a suspended run as soon as its resolution is stored, ahead of its dispatch.

The run log republishes every event once it has stored it, with its stream sequence
(``Names.stored_runs_*``); workers hear the engine's resolutions of waits by a pushed event
(``wait_satisfied``). The worker that suspended the run holds its log (``SuspendedLogs``);
when that log ends right where the resolution follows, the worker starts the resumed
attempt at once, as if the dispatch had arrived carrying the resolution. The dispatch still
comes (it is what survives a crash or a worker that does not hold the log): for an attempt
started early it waits for that attempt and is acknowledged without running the run again,
unless the attempt was interrupted.

One message, the republished resolution, takes the place of three on the way to the worker
(the engine's acknowledgement, its dispatch, the dispatch's delivery). A republished
resolution is a hint: anything that does not fit (another worker's run, a log this worker
no longer holds, no free slot) is left to the dispatch.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from tether.engine import wire
from tether.engine.nats_io import unsubscribe_quietly
from tether.engine.pull import SlotBudget, finish_or_cancel
from tether.engine.run_log_reads import guarded_predecessor
from tether.engine.subjects import Names, run_subject_parts
from tether.runtime.suspended_logs import CarriedEvent, SuspendedLogs

if TYPE_CHECKING:
    from tether.task import DurableTask

log = logging.getLogger("tether.worker")

# The resolution a worker resumes from once stored: a wait satisfied by a pushed event, the
# one a person's decision makes.
STORED_RESOLUTION_TOKEN = "wait_satisfied"
# Outcomes after which the dispatch must run the run itself.
NOT_DONE = frozenset({"interrupted", "behind", "crashed"})
# Early attempts remembered for their dispatch; one whose dispatch never comes (a resolution
# the bookkeeping had already dispatched elsewhere) is forgotten beyond this many.
MOST_REMEMBERED = 10_000

Attempt = Callable[["DurableTask[Any, Any]", str, int, CarriedEvent], Awaitable[str]]


class EarlyResumes:
    """Starts the resumed attempts of runs this worker suspended from their stored
    resolutions; ``settled`` tells a dispatch whether one already ran."""

    def __init__(
        self,
        tasks: Mapping[str, DurableTask[Any, Any]],
        budget: SlotBudget,
        suspended: SuspendedLogs,
        attempt: Attempt,
    ) -> None:
        self._tasks = tasks
        self._budget = budget
        self._suspended = suspended
        self._attempt = attempt
        self._started: OrderedDict[tuple[str, int], asyncio.Future[str]] = OrderedDict()
        self._running: set[asyncio.Task[None]] = set()
        self._sub: Subscription | None = None
        self._names: Names | None = None
        self.started = 0

    async def start(self, nc: NATS, names: Names) -> None:
        self._names = names
        self._sub = await nc.subscribe(
            names.stored_token_filter(STORED_RESOLUTION_TOKEN), cb=self._on_stored
        )

    async def stop(self, grace_s: float = 10.0) -> None:
        """Start no more; let the attempts running finish (up to ``grace_s``: one cut short
        is run again by its dispatch, which another worker then takes)."""
        if self._sub is not None:
            sub, self._sub = self._sub, None
            await unsubscribe_quietly(sub, "stored resolutions")
        await finish_or_cancel(self._running, grace_s)

    def took(self, run_id: str, seq: int) -> bool:
        """Whether an attempt started early for the dispatch of ``run_id`` at ``seq``, and
        ``settled`` has not been asked about it yet."""
        return (run_id, seq) in self._started

    async def settled(self, run_id: str, seq: int) -> bool:
        """For the dispatch of ``run_id`` at ``seq``: True once an attempt started early
        for it has ended in a way that leaves nothing for the dispatch to do."""
        started = self._started.pop((run_id, seq), None)
        return started is not None and await started not in NOT_DONE

    async def _on_stored(self, msg: Msg) -> None:
        resumable = self._resumable(msg)
        if resumable is None or self._sub is None or not self._budget.take():
            return
        run_id, carried, task = resumable
        done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._started[(run_id, carried.seq)] = done
        while len(self._started) > MOST_REMEMBERED:
            self._started.popitem(last=False)
        self.started += 1
        running = asyncio.get_running_loop().create_task(self._run(task, run_id, carried, done))
        self._running.add(running)
        running.add_done_callback(self._running.discard)

    def _resumable(self, msg: Msg) -> tuple[str, CarriedEvent, DurableTask[Any, Any]] | None:
        """The run, its stored resolution as a dispatch would carry it, and its task, when
        this worker holds the run's log up to right before it; else None."""
        headers = msg.headers or {}
        if self._names is None:
            return None
        try:
            run_id = run_subject_parts(msg.subject)[0]
            seq = int(headers[wire.SEQUENCE])
            subject = headers[wire.SUBJECT]
        except (KeyError, ValueError, IndexError):
            return None
        previous = guarded_predecessor(headers, self._names.run_filter(run_id))
        task = self._tasks.get(headers.get(wire.TASK, ""))
        if task is None or previous is None or self._suspended.ends_at(run_id) != previous:
            return None
        if (run_id, seq) in self._started:
            return None  # the server republished it twice (a replica's copy)
        return run_id, CarriedEvent(seq, previous, subject, msg.data, dict(headers)), task

    async def _run(
        self,
        task: DurableTask[Any, Any],
        run_id: str,
        carried: CarriedEvent,
        done: asyncio.Future[str],
    ) -> None:
        outcome = "crashed"
        try:
            outcome = await self._attempt(task, run_id, carried.seq, carried)
        except asyncio.CancelledError:
            log.info("early attempt stopped; its dispatch runs it", extra={"run_id": run_id})
        except Exception:
            log.exception("early attempt crashed; its dispatch runs it", extra={"run_id": run_id})
        finally:
            self._budget.give_back()
            done.set_result(outcome)
