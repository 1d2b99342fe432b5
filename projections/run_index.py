"""The run index: a read model of runs and of the waits a person may decide, for the HTTP
API, the dashboard and the CLI.

It follows the whole run log (``<ns>.runs.>``) from the start with an ordered consumer and
folds each run with the engine's own state machine into a ``RunView``
(``tether.projections.run_view``), so its statuses are the ones ``app.runs.get`` reports and
each open wait carries what an inbox shows.

Queries never touch NATS; they answer from memory and lag the log by the delivery latency
(about a millisecond). ``sync()`` waits until everything stored before the call is applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from tether.engine import events as ev
from tether.engine.connection import Connection
from tether.engine.nats_io import ORDERED_IDLE_HEARTBEAT_S
from tether.projections.run_view import PendingWait, RunView

log = logging.getLogger("tether.run_index")


@dataclass(slots=True)
class _Changes:
    """Which runs changed at which index version, for live updates (bounded)."""

    log: deque[tuple[int, str]] = field(default_factory=lambda: deque(maxlen=10_000))

    def since(self, version: int) -> list[str] | None:
        if self.log and self.log[0][0] > version + 1:
            return None  # older than what is kept: treat as "anything may have changed"
        seen: dict[str, None] = {}
        for v, run_id in self.log:
            if v > version:
                seen[run_id] = None
        return list(seen)


class RunIndex:
    def __init__(self, conn: Connection, *, keep_events: int = 10) -> None:
        self._conn = conn
        self._names = conn.settings.names
        self._keep_events = keep_events
        self.runs: dict[str, RunView] = {}
        self.cursor = 0  # the last run-log sequence applied
        self.version = 0  # bumped on every applied event
        self.skipped = 0  # messages that are no usable event
        self._changes = _Changes()
        self._changed = asyncio.Event()
        self._advanced = asyncio.Event()
        self._sub: Any = None

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe from the start of the run log and return once caught up with it."""
        self._sub = await self._conn.js.subscribe(
            self._names.runs_all,
            cb=self._on_msg,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
            idle_heartbeat=ORDERED_IDLE_HEARTBEAT_S,
        )
        started = time.monotonic()
        await self.sync()
        log.info(
            "run index caught up",
            extra={
                "runs": len(self.runs),
                "cursor": self.cursor,
                "seconds": round(time.monotonic() - started, 3),
            },
        )

    @property
    def connection_closed(self) -> bool:
        """NATS closed this index's connection for good: it follows nothing any more."""
        return self._conn.nc.is_closed

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        self.wake()

    def wake(self) -> None:
        """Release everyone in ``wait_changed`` (they see an unchanged version)."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def sync(self) -> None:
        """Wait until every run event stored before this call has been applied."""
        info = await self._conn.js.stream_info(self._names.runs_stream)
        target = int(info.state.last_seq)
        while self.cursor < target:
            self._advanced.clear()
            await self._advanced.wait()

    # -- feeding ----------------------------------------------------------------------------

    async def _on_msg(self, msg: Msg) -> None:
        seq = msg.metadata.sequence.stream
        self.cursor = seq
        # the run is the one the subject names; a body that does not fit it is folded as an
        # unusable entry, which the run's state machine ignores
        event = ev.decode_stored(msg.subject, msg.data)
        if isinstance(event, ev.UnusableEntry):
            self.skipped += 1
            log.error(
                "unusable run log message",
                extra={"subject": msg.subject, "seq": seq, "reason": event.reason[:200]},
            )
        if event.run_id in self.runs or not isinstance(event, ev.UnusableEntry):
            self.apply(seq, event)
        self._advanced.set()

    def apply(self, seq: int, event: ev.RunEvent) -> None:
        view = self.runs.get(event.run_id)
        if view is None:
            view = self.runs[event.run_id] = RunView(event.run_id, keep_events=self._keep_events)
        view.apply(seq, event)
        self.version += 1
        self._changes.log.append((self.version, event.run_id))
        self.wake()

    async def wait_changed(self, version: int, max_wait_s: float) -> int:
        """Return the current version once it is past ``version``, or after ``max_wait_s``
        (or a ``wake()``) with no change."""
        if self.version <= version:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), max_wait_s)
        return self.version

    def changed_runs(self, since_version: int) -> list[str] | None:
        """Runs changed after ``since_version``; None when that is too far back to tell."""
        return self._changes.since(since_version)

    # -- queries ----------------------------------------------------------------------------

    def get(self, run_id: str) -> RunView | None:
        return self.runs.get(run_id)

    def list_runs(
        self,
        *,
        statuses: Iterable[str] | None = None,
        task: str | None = None,
        limit: int | None = 100,
    ) -> list[RunView]:
        """Runs, most recently updated first."""
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

    def list_waits(self, *, task: str | None = None, key: str | None = None) -> list[PendingWait]:
        """Open waits a person may decide, longest waiting first."""
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
        return sorted({v.state.task for v in self.runs.values() if v.state.task})

    def status_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for view in self.runs.values():
            if view.state.task:
                counts[view.state.status] = counts.get(view.state.status, 0) + 1
        return counts
