"""Logs of the runs a worker suspended, kept so that resuming one needs no read.

When an attempt suspends on a wait, the worker holds the run's whole log: what it read,
plus what the attempt appended. The engine's resolution of the wait is the next event, and
its dispatch carries it (with the sequence it follows). If the kept log ends exactly at
that sequence, the log to replay is the kept one plus the resolution, with no read of the
run; otherwise (another worker ran the run since, or this one forgot it) the run is read
as usual. Anything written after the resolution shows up as a conflict at the attempt's
first write, which abandons it like any other late write.

Entries are kept encoded (bytes take a fraction of a parsed event's memory) and in all at
most ``max_bytes``; the oldest are forgotten first.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from tether.engine import events as ev
from tether.engine.tracing import TRACE_HEADERS

DEFAULT_MAX_BYTES = 16 * 1024 * 1024
ENTRY_OVERHEAD = 120  # bytes a kept entry costs beyond its encoded event, roughly

RawLog = list[tuple[int, ev.RunEvent, dict[str, str]]]


def _compact(data: bytes) -> bytes:
    """A copy of exactly ``data``'s size: orjson's output keeps its whole 4 KB buffer."""
    return bytes(memoryview(data))


def trace_headers(headers: dict[str, str]) -> dict[str, str]:
    return {name: headers[name] for name in TRACE_HEADERS if name in headers}


@dataclass(frozen=True, slots=True)
class CarriedResolution:
    """The resolution a dispatch carries: stored at ``seq`` on ``subject``, right after
    ``previous``."""

    seq: int
    previous: int
    subject: str
    data: bytes
    headers: dict[str, str]


class SuspendedLogs:
    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._logs: OrderedDict[str, list[tuple[int, bytes, dict[str, str]]]] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self.bytes = 0
        self.resumed_without_read = 0

    def __len__(self) -> int:
        return len(self._logs)

    def keep(self, run_id: str, log: RawLog) -> None:
        """Keep the log of a run whose attempt just suspended."""
        self.forget(run_id)
        entries = [(seq, _compact(ev.encode(event)), trace_headers(h)) for seq, event, h in log]
        size = sum(len(data) + ENTRY_OVERHEAD for _, data, _ in entries)
        if size > self.max_bytes:
            return
        self._logs[run_id] = entries
        self._sizes[run_id] = size
        self.bytes += size
        while self.bytes > self.max_bytes:
            oldest = next(iter(self._logs))
            self.forget(oldest)

    def forget(self, run_id: str) -> None:
        if self._logs.pop(run_id, None) is not None:
            self.bytes -= self._sizes.pop(run_id)

    def resume(self, run_id: str, carried: CarriedResolution) -> RawLog | None:
        """The run's log up to the carried resolution, if the kept one ends right before
        it; the kept log is given up either way."""
        entries = self._logs.get(run_id)
        self.forget(run_id)
        if not entries or entries[-1][0] != carried.previous:
            return None
        log: RawLog = [(seq, ev.decode(data), h) for seq, data, h in entries]
        resolution = ev.decode_stored(carried.subject, carried.data)
        if resolution.run_id != run_id:
            return None
        log.append((carried.seq, resolution, trace_headers(carried.headers)))
        self.resumed_without_read += 1
        return log
