"""Logs of the runs a worker suspended, kept so that resuming one needs no read.

A dispatch carries the event that made its run runnable, with the sequence that event's
guarded append followed. A run's request follows nothing: it is the whole log of a new
run. When an attempt suspends on a wait, the worker holds the run's whole log (what it
read, plus what the attempt appended); the engine's resolution of the wait is the next
event. If the kept log ends exactly where the carried resolution follows, the log to
replay is the kept one plus the resolution, with no read of the run; otherwise (another
worker ran the run since, or this one forgot it) the run is read as usual. Anything written
after the carried event shows up as a conflict at the attempt's first write, which
abandons it like any other late write.

A log is kept as one compressed blob per run (a parsed event takes several times its bytes,
and a tuple, an int and a dict per event over 100 more; a log repeats its run id in every
event and compresses to about 40 % of its JSON), in all at most ``max_bytes``; the oldest
are forgotten first.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from dataclasses import dataclass

import orjson

from tether.engine import events as ev
from tether.engine.tracing import trace_headers

DEFAULT_MAX_BYTES = 16 * 1024 * 1024
LOG_OVERHEAD = 200  # bytes a kept log costs beyond its blob, roughly

RawLog = list[tuple[int, ev.RunEvent, dict[str, str]]]


# The fastest level: a 1 KB log goes in in about 30 microseconds and comes out in 6.
COMPRESSION_LEVEL = 1


def _encode_log(log: RawLog) -> bytes:
    """``[[seq, event, trace headers or 0], ...]`` as one compressed blob (zlib's output
    is a bytes object of its own size)."""
    entries = [[seq, orjson.Fragment(ev.encode(e)), trace_headers(h) or 0] for seq, e, h in log]
    return zlib.compress(orjson.dumps(entries), COMPRESSION_LEVEL)


def _decode_log(blob: bytes) -> RawLog:
    return [
        (int(seq), ev.decode(orjson.dumps(event)), dict(headers or {}))
        for seq, event, headers in orjson.loads(zlib.decompress(blob))
    ]


@dataclass(frozen=True, slots=True)
class CarriedEvent:
    """The event a dispatch carries: stored at ``seq`` on ``subject``, right after
    ``previous`` (0: the first of its run)."""

    seq: int
    previous: int
    subject: str
    data: bytes
    headers: dict[str, str]


class SuspendedLogs:
    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        # run id -> (the sequence its log ends at, the log's blob)
        self._logs: OrderedDict[str, tuple[int, bytes]] = OrderedDict()
        self.bytes = 0
        self.read_spared = 0  # dispatches served without a read of the run

    def __len__(self) -> int:
        return len(self._logs)

    def keep(self, run_id: str, log: RawLog) -> None:
        """Keep the log of a run whose attempt just suspended."""
        self.forget(run_id)
        if not log:
            return
        blob = _encode_log(log)
        if len(blob) + LOG_OVERHEAD > self.max_bytes:
            return
        self._logs[run_id] = (log[-1][0], blob)
        self.bytes += len(blob) + LOG_OVERHEAD
        while self.bytes > self.max_bytes:
            oldest = next(iter(self._logs))
            self.forget(oldest)

    def ends_at(self, run_id: str) -> int | None:
        """The sequence the kept log of ``run_id`` ends at; None when none is kept."""
        kept = self._logs.get(run_id)
        return None if kept is None else kept[0]

    def forget(self, run_id: str) -> None:
        kept = self._logs.pop(run_id, None)
        if kept is not None:
            self.bytes -= len(kept[1]) + LOG_OVERHEAD

    def log_for(self, run_id: str, carried: CarriedEvent) -> RawLog | None:
        """The run's log up to the carried event: the event alone when it is the run's
        request, else the kept log plus the event when the kept log ends right before it
        (which is given up either way); None when a read is needed."""
        kept = (0, b"") if carried.previous == 0 else self._logs.get(run_id)
        self.forget(run_id)
        if kept is None or kept[0] != carried.previous:
            return None
        if len(carried.subject.split(".")) < 4:
            return None  # not a run-log subject: read the run
        event = ev.decode_stored(carried.subject, carried.data)
        if event.run_id != run_id or (carried.previous == 0) != isinstance(event, ev.RunRequested):
            return None
        log = _decode_log(kept[1]) if kept[1] else []
        log.append((carried.seq, event, trace_headers(carried.headers)))
        self.read_spared += 1
        return log
