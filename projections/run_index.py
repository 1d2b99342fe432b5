"""The run index: a read model of runs and of the waits a person may decide, for the HTTP
API, the dashboard and the CLI.

It folds each run with the engine's own state machine into a ``RunView``
(``tether.projections.run_view``), so its statuses are the ones ``app.runs.get`` reports and
each open wait carries what an inbox shows.

It holds open runs and the ``RECENT_FINISHED`` most recently finished ones, not history: a
finished run is dropped once that many newer ones have finished. Start-up reads what it held
at its last checkpoint (``run_index_checkpoint``: those runs' ids and the run-log position
they cover), reads those runs' logs, then follows the log after that position; only the
first start, with no checkpoint yet, follows the log from the beginning. The checkpoint is
written every few seconds while the log moves on, and on stop. Older runs are read from the
log on demand (``lookup``, ``list_finished``; ``tether.projections.run_history``).

Queries on what it holds never touch NATS; they lag the log by the delivery latency (about a
millisecond). ``sync()`` waits until everything stored before the call is applied.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Iterable

from nats.aio.msg import Msg

from tether.engine import events as ev
from tether.engine.connection import Connection
from tether.engine.subjects import check_run_id
from tether.projections.follower import Follower
from tether.projections.run_changes import RunChanges
from tether.projections.run_history import RunPage, finished_page, read_view, read_views
from tether.projections.run_index_checkpoint import CHECKPOINT_EVERY_S, IndexCheckpoint, Snapshot
from tether.projections.run_view import PendingWait, RunView

log = logging.getLogger("tether.run_index")

# Finished runs held besides the open ones, for the list of recent runs; older ones are
# read from the log when asked for.
RECENT_FINISHED = 1_000


class RunIndex(RunChanges):
    """See the module; live updates (``version``, ``wait_changed``) from ``RunChanges``."""

    def __init__(
        self,
        conn: Connection,
        *,
        keep_events: int = 10,
        recent_finished: int | None = None,
        checkpoints: bool = True,
        write_checkpoints: bool = True,
        checkpoint_every_s: float = CHECKPOINT_EVERY_S,
    ) -> None:
        """``recent_finished``: finished runs held (default ``RECENT_FINISHED``);
        ``checkpoints=False`` follows the whole log and writes nothing;
        ``write_checkpoints=False`` starts from the checkpoint but leaves it to others (a
        short-lived reader such as the CLI)."""
        super().__init__()
        self._conn = conn
        self._names = conn.settings.names
        self._keep_events = keep_events
        self._recent_finished = RECENT_FINISHED if recent_finished is None else recent_finished
        self._checkpoint = (
            IndexCheckpoint(conn, self._held, write=write_checkpoints, every_s=checkpoint_every_s)
            if checkpoints
            else None
        )
        self.runs: dict[str, RunView] = {}
        # (ended_seq, run id) of the finished runs held: the earliest finished is dropped first
        self._finished: list[tuple[int, str]] = []
        self.cursor = 0  # the last run-log sequence applied
        self.skipped = 0  # messages that are no usable event
        self.handled = 0  # run-log messages delivered since start (the tail, not history)
        self.started_after = 0  # the run-log position start-up followed from
        self.loaded = 0  # runs read from their own logs at start-up
        self._advanced = asyncio.Event()
        self._follower: Follower | None = None

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the runs held at the checkpoint, then follow the log after it; return once
        caught up with the log."""
        started = time.monotonic()
        snapshot = Snapshot(0, []) if self._checkpoint is None else await self._checkpoint.load()
        views = await read_views(self._conn, snapshot.run_ids, keep_events=self._keep_events)
        self._hold(views.values())
        self.cursor = self.started_after = snapshot.position
        self._follower = Follower(
            self._conn.js,
            stream=self._names.runs_stream,
            subjects=[self._names.runs_all],
            handler=self._on_msg,
            after_seq=snapshot.position,
        )
        await self._follower.start()
        if self._checkpoint is not None:
            self._checkpoint.start_writing()
        log.info(
            "run index caught up",
            extra={
                "runs": len(self.runs),
                "loaded": self.loaded,
                "from_position": snapshot.position,
                "tail": self.handled,
                "cursor": self.cursor,
                "seconds": round(time.monotonic() - started, 3),
            },
        )

    def _hold(self, views: Iterable[RunView]) -> None:
        """Hold runs read from their logs."""
        for view in views:
            self.runs[view.run_id] = view
            if view.ended_seq:
                heapq.heappush(self._finished, (view.ended_seq, view.run_id))
            self.loaded += 1
        self._evict()

    @property
    def connection_closed(self) -> bool:
        """NATS closed this index's connection for good: it follows nothing any more."""
        return self._conn.nc.is_closed

    async def stop(self) -> None:
        if self._follower is not None:
            await self._follower.stop()
            self._follower = None
        if self._checkpoint is not None:
            await self._checkpoint.stop()
        self.wake()

    def _held(self) -> tuple[int, list[str]]:
        """What a checkpoint records: the position applied and the runs held then."""
        return self.cursor, list(self.runs)

    async def write_checkpoint(self) -> bool:
        """Write the checkpoint now (it is also written every few seconds and on stop)."""
        return self._checkpoint is not None and await self._checkpoint.write()

    async def sync(self) -> None:
        """Wait until every run event stored before this call has been applied."""
        info = await self._conn.js.stream_info(self._names.runs_stream)
        target = int(info.state.last_seq)
        while self.cursor < target:
            self._advanced.clear()
            await self._advanced.wait()

    # -- feeding ----------------------------------------------------------------------------

    def _on_msg(self, msg: Msg) -> None:
        seq = msg.metadata.sequence.stream
        self.cursor = seq
        self.handled += 1
        # the run is the one the subject names; a body that does not fit it is folded as an
        # unusable entry, which the run's state machine ignores
        event = ev.decode_stored(msg.subject, msg.data)
        if isinstance(event, ev.UnusableEntry):
            self.skipped += 1
            log.error(
                "unusable run log message",
                extra={"subject": msg.subject, "seq": seq, "reason": event.reason[:200]},
            )
        view = self.runs.get(event.run_id)
        if view is not None:
            if seq > view.state.last_seq:  # not already read from its log at start-up
                self.apply(seq, event)
        elif isinstance(event, ev.RunRequested):
            self.apply(seq, event)
        # else a run that finished before the ones held (nothing changes it any more), or
        # an entry of a run never requested: nothing to show either way
        self._advanced.set()

    def apply(self, seq: int, event: ev.RunEvent) -> None:
        view = self.runs.get(event.run_id)
        if view is None:
            view = self.runs[event.run_id] = RunView(
                event.run_id, keep_events=self._keep_events, payloads=False
            )
        ended = view.ended_seq
        view.apply(seq, event)
        if view.ended_seq and not ended:
            heapq.heappush(self._finished, (view.ended_seq, event.run_id))
            self._evict()
        self.changed(event.run_id)

    def _evict(self) -> None:
        """Drop the earliest finished runs beyond the recent ones kept. By where each ended,
        not by when it was applied: after a start from keys of different positions, the
        tail replays runs that ended before some of the runs already read."""
        while len(self._finished) > self._recent_finished:
            self.runs.pop(heapq.heappop(self._finished)[1], None)

    # -- queries ----------------------------------------------------------------------------

    def get(self, run_id: str) -> RunView | None:
        """The run if held (open, or among the recent finished); see ``lookup``."""
        return self.runs.get(run_id)

    async def lookup(self, run_id: str) -> RunView | None:
        """The run, held or read from its log (a run finished before the recent ones); None
        if it was never requested. ValueError for an id no run can have."""
        view = self.runs.get(check_run_id(run_id))
        if view is not None:
            return view
        return await read_view(self._conn, run_id, keep_events=self._keep_events)

    def list_runs(
        self,
        *,
        statuses: Iterable[str] | None = None,
        task: str | None = None,
        limit: int | None = 100,
    ) -> list[RunView]:
        """Runs held (open and recently finished), most recently updated first; older
        finished runs page through ``list_finished``."""
        wanted = set(statuses) if statuses else None
        found = [
            view
            for view in self.runs.values()
            if view.state.exists
            and view.state.task
            and (wanted is None or view.state.status in wanted)
            and (task is None or view.state.task == task)
        ]
        found.sort(key=lambda v: (v.updated_at, v.state.last_seq), reverse=True)
        return found[:limit] if limit is not None else found

    async def list_finished(
        self,
        before: int,
        *,
        statuses: Iterable[str] | None = None,
        task: str | None = None,
        limit: int = 100,
    ) -> RunPage:
        """Finished runs whose final event is stored before run-log sequence ``before``,
        most recently finished first, read from the log where not held."""
        return await finished_page(
            self._conn,
            before,
            statuses=statuses,
            task=task,
            limit=limit,
            held=self.runs.get,
            keep_events=self._keep_events,
        )

    def next_before(self, listed: Iterable[RunView], statuses: Iterable[str] | None) -> int | None:
        """Where ``list_finished`` goes on after a ``list_runs`` answer: before the earliest
        end among the finished runs listed, else before everything applied so far; None
        when the status filter admits no finished run."""
        wanted = set(statuses) if statuses else None
        if wanted is not None and not wanted & set(ev.TERMINAL_TOKENS):
            return None
        ends = [view.ended_seq for view in listed if view.ended_seq]
        return min(ends) if ends else self.cursor + 1

    def list_waits(self, *, task: str | None = None, key: str | None = None) -> list[PendingWait]:
        """Open waits a person may decide, longest waiting first (every open run is held)."""
        waits = [
            wait
            for view in self.runs.values()
            if view.state.status == "waiting" and (wait := view.wait) is not None
        ]
        waits = [
            w
            for w in waits
            if (task is None or w.task == task) and (key is None or w.event_key == key)
        ]
        waits.sort(key=lambda w: (w.since, w.run_id))
        return waits

    def tasks(self) -> list[str]:
        """Tasks of the runs held: every task with an open run or a recently finished one."""
        return sorted({v.state.task for v in self.runs.values() if v.state.task})

    def status_counts(self) -> dict[str, int]:
        """Runs held by status: every open run, and finished runs among the recent ones only
        (at most ``RECENT_FINISHED`` in all), not every run in the history."""
        counts: dict[str, int] = {}
        for view in self.runs.values():
            if view.state.task:
                counts[view.state.status] = counts.get(view.state.status, 0) + 1
        return counts
