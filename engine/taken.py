"""Events the engine knows its runs took, and the endings that vouches for without a read.

Whether a run takes an event is the fold's word, and the fold needs the whole log: a worker
credential may append an ending to any run, and only the fold knows that a waiting run does
not take it. One case is known from the chain alone. A run is queued right after an engine
resolution of its wait that it took, and a queued run takes any attempt write (the start of
an attempt): so a completion or failure of the run stored right after such a resolution is
one the run took. The stored guard (``Nats-Expected-Last-Subject-Sequence`` on the run's own
subjects, checked by the server) says what an event follows.

The engine marks a resolution it knows the run takes (``wire.TAKEN``): one decided on a
read of the log, or one resolving a wait that the bookkeeping read the run take. Only the
engine may write resolutions, so the mark is the engine's word (where NATS permissions are
in force; without them anyone may write anything).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

from tether.engine import events as ev
from tether.engine import wire
from tether.engine.run_log_reads import guarded_predecessor
from tether.engine.subjects import Names

# The engine's resolutions of a wait, which only the engine may write.
RESOLUTION_TOKENS = frozenset({"wait_satisfied", "wait_timed_out"})
# Runs remembered at most; beyond this the oldest are forgotten (their endings are read).
MOST_REMEMBERED = 100_000


def marked_taken(headers: Mapping[str, str]) -> bool:
    return headers.get(wire.TAKEN) == "1"


def vouched_ending(
    event: ev.RunEvent,
    headers: Mapping[str, str],
    names: Names,
    run_id: str,
    taken_seq: int | None,
) -> bool:
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
    """The latest event of each run known to be taken, by sequence; bounded."""

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
