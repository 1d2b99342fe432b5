"""Notices of runs ending, shared by every caller waiting in one client: a run's terminal
events as the run log republishes them once stored (``Names.stored_token_filter``).

A notice is a hint (the run's state machine may ignore the event, and a replica answering
a read may not hold it yet): a waiter woken by one reads the run. Except where the chain
vouches for the ending (``tether.engine.taken``): a completion or failure stored right
after an engine resolution marked as taken, both heard here, is the run's ending, and the
waiter needs no read. The latest resolutions heard are kept whoever waits (a caller may
start waiting after its run's resolution, when the push that decided it was acknowledged
late); endings are vouched for only to runs someone here waits for."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from tether.engine import events as ev
from tether.engine import wire
from tether.engine.connection import Connection
from tether.engine.subjects import run_subject_parts
from tether.engine.taken import RESOLUTION_TOKENS, TakenByRun, marked_taken, vouched_ending

# Notices are remembered this long (and at most this many) for callers that register late.
RECENT_NOTICE_S = 30.0
RECENT_NOTICE_MAX = 100_000
# Endings the chain vouched for, kept until a waiter they woke takes them (beyond this
# many, the oldest are read instead).
VOUCHED_MAX = 10_000
# Resolutions heard, by run (every one of the namespace comes here): the latest this many.
RESOLUTIONS_REMEMBERED = 10_000


class TerminalWatch:
    """One set of subscriptions on terminal run subjects, shared by every waiting caller.

    Runs noticed in the last ``RECENT_NOTICE_S`` are remembered: a caller that registers
    after a notice and reads from a replica that does not hold the event yet would otherwise
    miss the notice and find the run not ended yet."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._subs: list[Subscription] = []
        self._recent: OrderedDict[str, float] = OrderedDict()  # run id -> when noticed
        # Bumped when notices may have been lost: a reconnect (none comes while the
        # connection is down) or a recent notice forgotten to keep RECENT_NOTICE_MAX.
        self.epoch = 0
        # the marked resolution each run took, by sequence
        self._taken = TakenByRun(RESOLUTIONS_REMEMBERED)
        self._vouched: OrderedDict[str, ev.RunCompleted | ev.RunFailed] = OrderedDict()

    async def start(self) -> None:
        names = self.conn.settings.names
        for token in ev.TERMINAL_TOKENS:
            # (a run log made by an older version republishes nothing: hear the writes)
            subject = (
                names.stored_token_filter(token)
                if self.conn.stores_notices
                else names.runs_token_filter(token)
            )
            sub = await self.conn.nc.subscribe(subject, cb=self._on_msg)
            self._subs.append(sub)
        if self.conn.stores_notices:
            for token in RESOLUTION_TOKENS:
                sub = await self.conn.nc.subscribe(
                    names.stored_token_filter(token), cb=self._on_resolution
                )
                self._subs.append(sub)
        # Notices published while the connection was down are gone: every waiter re-reads.
        self.conn.on_reconnect(self.wake_all)

    async def _on_resolution(self, msg: Msg) -> None:
        run_id = run_subject_parts(msg.subject)[0]
        headers = msg.headers or {}
        seq = headers.get(wire.SEQUENCE, "")
        if marked_taken(headers) and seq.isdigit():
            self._taken.remember(run_id, int(seq))
        else:
            self._taken.forget(run_id)

    def _vouch(self, run_id: str, msg: Msg) -> None:
        """Keep the ending ``msg`` stores when the chain vouches for it."""
        taken_seq = self._taken.forget(run_id)
        if taken_seq is None or run_id not in self._waiters:
            return
        names = self.conn.settings.names
        event = ev.decode_stored(names.run_subject_of_stored(msg.subject), msg.data)
        if vouched_ending(event, msg.headers or {}, names, run_id, taken_seq):
            self._vouched[run_id] = event
            if len(self._vouched) > VOUCHED_MAX:
                self._vouched.popitem(last=False)

    def vouched(self, run_id: str) -> ev.RunCompleted | ev.RunFailed | None:
        """The run's ending, when a notice the chain vouches for has brought it (once: a
        second waiter of the same run reads it)."""
        return self._vouched.pop(run_id, None)

    async def _on_msg(self, msg: Msg) -> None:
        run_id = run_subject_parts(msg.subject)[0]
        self._vouch(run_id, msg)
        now = time.monotonic()
        recent = self._recent
        recent[run_id] = now
        recent.move_to_end(run_id)
        while recent and next(iter(recent.values())) < now - RECENT_NOTICE_S:
            recent.popitem(last=False)
        if len(recent) > RECENT_NOTICE_MAX:
            recent.popitem(last=False)
            self.epoch += 1
        self._wake(run_id)

    def _wake(self, run_id: str) -> None:
        for fut in self._waiters.pop(run_id, []):
            if not fut.done():
                fut.set_result(None)

    async def wake_all(self) -> None:
        self.epoch += 1
        for run_id in list(self._waiters):
            self._wake(run_id)

    def heard_all_since(self, epoch: int, since: float) -> bool:
        """Would any notice since ``since`` (monotonic), when ``epoch`` was current, still
        be known here? Then a run that has none has not ended since."""
        return epoch == self.epoch and time.monotonic() - since < RECENT_NOTICE_S

    def register(self, run_id: str, *, after: float = 0.0) -> asyncio.Future[None]:
        """A future set by the next notice of ``run_id``, or already set by one noticed at
        or after ``after`` (monotonic time)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        noticed = self._recent.get(run_id)
        if noticed is not None and noticed >= after:
            fut.set_result(None)
        else:
            self._waiters.setdefault(run_id, []).append(fut)
        return fut

    def discard(self, run_id: str, fut: asyncio.Future[None]) -> None:
        waiters = self._waiters.get(run_id)
        if waiters and fut in waiters:
            waiters.remove(fut)
            if not waiters:
                del self._waiters[run_id]
