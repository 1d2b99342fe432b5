"""Events the engine knows its runs took, and the endings that vouches for without a read.

Whether a run takes an event is the fold's word, and the fold needs the whole log: a worker
credential may append an ending to any run, and only the fold knows that a waiting run does
not take it. One case is known from the chain alone. A run is queued right after an engine
resolution of its wait that it took, and a queued run takes any attempt write (the start of
an attempt): so a completion or failure of the run stored right after such a resolution is
one the run took. The stored guard (``Nats-Expected-Last-Subject-Sequence`` on the run's own
subjects, checked by the server) says what an event follows.

The engine marks a resolution it knows the run takes (``wire.TAKEN``): one decided on a
read of the log, or one resolving a wait the bookkeeping knows the run took. Only the
engine may write resolutions, so the mark is the engine's word (where NATS permissions are
in force; without them anyone may write anything).

The bookkeeping follows each run's chain from an anchor at which the run is queued (its
request, stored only on an empty log, or a resolution marked taken) through attempt writes
that leave a queued or running run so, whether it takes them or not (``STAYS_RUNNABLE``):
an attempt write right after such a chain (a wait, an ending) is one the run takes, and
needs no read to book.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import TypeGuard

from tether.engine import events as ev
from tether.engine import wire
from tether.engine.run_log_reads import guarded_predecessor
from tether.engine.subjects import Names

# The engine's resolutions of a wait, which only the engine may write.
RESOLUTION_TOKENS = frozenset({"wait_satisfied", "wait_timed_out"})
# Runs remembered at most; beyond this the oldest are forgotten (their endings are read).
MOST_REMEMBERED = 100_000
# Tokens of events that leave a queued or running run queued or running, whether the run
# takes them or not: attempt starts, steps, workflow tasks that did not cancel the run
# (one that did has a token of its own), rejections, timeout refreshes, failed attempts.
STAYS_RUNNABLE = frozenset(
    {
        "started",
        "restarted",
        "step",
        "task",
        "event_rejected",
        "timeout_refreshed",
        "attempt_failed",
    }
)


def marked_taken(headers: Mapping[str, str]) -> bool:
    return headers.get(wire.TAKEN) == "1"


def vouched_ending(
    event: ev.RunEvent,
    headers: Mapping[str, str],
    names: Names,
    run_id: str,
    taken_seq: int | None,
) -> TypeGuard[ev.RunCompleted | ev.RunFailed]:
    """Does the chain vouch that run ``run_id`` took ``event``, stored with ``headers``?
    Only for a completion or failure of the run stored right after a resolution the run
    took (at ``taken_seq``)."""
    return (
        taken_seq is not None
        and isinstance(event, ev.RunCompleted | ev.RunFailed)
        and event.run_id == run_id
        and guarded_predecessor(headers, names.run_filter(run_id)) == taken_seq
    )


class TakenByRun:
    """A sequence per run (the latest remembered); bounded, the oldest run forgotten first."""

    def __init__(self, most: int = MOST_REMEMBERED) -> None:
        self._seqs: OrderedDict[str, int] = OrderedDict()
        self._most = most

    def __len__(self) -> int:
        return len(self._seqs)

    def remember(self, run_id: str, seq: int) -> None:
        self._seqs[run_id] = seq
        self._seqs.move_to_end(run_id)
        if len(self._seqs) > self._most:
            self._seqs.popitem(last=False)

    def get(self, run_id: str) -> int | None:
        return self._seqs.get(run_id)

    def took(self, run_id: str, seq: int) -> bool:
        return self._seqs.get(run_id) == seq

    def forget(self, run_id: str) -> int | None:
        return self._seqs.pop(run_id, None)


class RunnableChains:
    """Runs known to be queued or running at their last event, followed along the stored
    guards of their events as they are stored, from an anchor (see the module's doc)."""

    def __init__(self, names: Names) -> None:
        self._names = names
        self._last = TakenByRun()  # run id -> the sequence the known chain ends at

    def anchor(self, run_id: str, seq: int) -> None:
        """The run is queued right after the event stored at ``seq``."""
        self._last.remember(run_id, seq)

    def follow(self, run_id: str, token: str, seq: int, headers: Mapping[str, str]) -> bool:
        """Take the run's event stored at ``seq`` on ``token``: was the run queued or
        running right before it? (False when that is not known.)"""
        previous = self._last.forget(run_id)
        if previous is None:
            return False
        if guarded_predecessor(headers, self._names.run_filter(run_id)) != previous:
            return False  # something else came in between, or it was written unguarded
        if token in STAYS_RUNNABLE:
            self._last.remember(run_id, seq)
        return True
