"""Publishing work: task dispatches to workers and commands to the engine."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Mapping
from typing import Protocol

import orjson
from nats.js import JetStreamContext

from tether.engine import commands, ids, wire
from tether.engine.acked_publish import AckedPublisher
from tether.engine.run_log_reads import guarded_predecessor
from tether.engine.subjects import Names
from tether.engine.tracing import trace_headers


class StoredEvent(Protocol):
    """A run-log event as stored: a delivered message, or a write just acknowledged."""

    @property
    def subject(self) -> str: ...
    @property
    def data(self) -> bytes: ...
    @property
    def headers(self) -> Mapping[str, str] | None: ...


async def dispatch_task(
    publisher: AckedPublisher,
    names: Names,
    task: str,
    run_id: str,
    seq: int,
    headers: dict[str, str] | None = None,
    *,
    carried: StoredEvent | None = None,
) -> None:
    """Tell workers of ``task`` that ``run_id`` is runnable. ``seq`` is the log sequence of
    the event that made it runnable, so each dispatch is named once and dedupes.

    ``carried``, the stored message of that event (the run's request, or the engine's
    resolution of a wait), travels along: a worker that has the rest of the log (none
    before a request; the log a run suspended with) needs no read of the run (see
    ``tether.runtime.suspended_logs``)."""
    body: dict[str, object] = {"run_id": run_id, "seq": seq}
    event = _carried(names, run_id, carried) if carried is not None else None
    if event is not None:
        body["carried"] = event
    await publisher.publish(
        names.task_subject(task),
        orjson.dumps(body),
        headers={**(headers or {}), wire.MSG_ID: ids.dispatch_msg_id(run_id, seq)},
    )


def _carried(names: Names, run_id: str, msg: StoredEvent) -> dict[str, object] | None:
    """The event as a dispatch carries it, with the sequence its guarded append followed
    (checked by the server); None when it was written without the run's guard."""
    stored = msg.headers or {}
    previous = guarded_predecessor(stored, names.run_filter(run_id))
    if previous is None:
        return None
    return {
        "previous": previous,
        "subject": msg.subject,
        "event": orjson.Fragment(msg.data),
        "headers": trace_headers(stored),
    }


class ResolutionDispatches:
    """A resolved wait is dispatched once per process by whichever comes first: the engine
    right after writing the resolution (the short way), or the resolution's bookkeeping,
    whose message comes back until it is acknowledged (the way that survives a crash
    between the two writes). The bookkeeping skips the dispatch only once the engine's has
    been acknowledged."""

    def __init__(self, most: int = 10_000) -> None:
        # resolution seq -> the engine's dispatch (True once published), or None once the
        # bookkeeping has taken it; bounded, since a partition handed over mid-way leaves
        # its entries behind (a dispatch repeated after that dedupes)
        self._by_seq: OrderedDict[int, asyncio.Future[bool] | None] = OrderedDict()
        self._most = most

    def engine_begins(self, seq: int) -> asyncio.Future[bool] | None:
        """The engine is about to dispatch the resolution stored at ``seq``: the future to
        settle with whether it did, or None when the bookkeeping has dispatched it."""
        if seq in self._by_seq:
            del self._by_seq[seq]
            return None
        published: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._remember(seq, published)
        return published

    async def engine_dispatched(self, seq: int) -> bool:
        """For the bookkeeping: did the engine dispatch the resolution at ``seq``? False
        means the bookkeeping must (and the engine, if it comes later, will not)."""
        if seq not in self._by_seq:
            self._remember(seq, None)
            return False
        published = self._by_seq.pop(seq)
        return published is not None and await published

    def _remember(self, seq: int, entry: asyncio.Future[bool] | None) -> None:
        self._by_seq[seq] = entry
        if len(self._by_seq) > self._most:
            self._by_seq.popitem(last=False)


async def send_command(
    js: JetStreamContext,
    names: Names,
    command: commands.CommandMessage,
    headers: dict[str, str] | None = None,
) -> None:
    await js.publish(
        names.command_subject(command.kind, command.run_id),
        commands.encode(command),
        headers={**(headers or {}), wire.MSG_ID: command.msg_id()},
    )
