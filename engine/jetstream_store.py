"""The event store on JetStream: one subject per (run, event type), OCC over the run's wildcard."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError

from tether.engine import events as ev
from tether.engine import wire
from tether.engine.acked_publish import AckedPublisher
from tether.engine.nats_io import DirectReader, StoredMessage
from tether.engine.run_log_reads import read_run_log
from tether.engine.store import ConcurrencyConflictError
from tether.engine.subjects import Names

# How long to wait, in turn, for a replica that answers direct gets to show a run its
# stream's leader already holds (about a second in all).
LAGGING_REPLICA_DELAYS_S = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4)


@dataclass(frozen=True, slots=True)
class WrittenEvent:
    """A run-log event as a guarded append stores it: subject, body and headers."""

    subject: str
    data: bytes
    headers: dict[str, str]


def guarded_write(
    names: Names,
    event: ev.RunEvent,
    expected_last_seq: int,
    headers: Mapping[str, str] | None = None,
) -> WrittenEvent:
    """``event`` as appended to its run's log after ``expected_last_seq``: the guard headers
    (which the server checks, and which every stored event keeps) beside ``headers``."""
    run_id = event.run_id
    return WrittenEvent(
        names.run_subject(run_id, ev.subject_token(event)),
        ev.encode(event),
        {
            **(headers or {}),
            wire.EXPECTED_LAST_SUBJECT_SEQ: str(expected_last_seq),
            wire.EXPECTED_LAST_SUBJECT_SEQ_SUBJECT: names.run_filter(run_id),
        },
    )


def is_occ_conflict(exc: BaseException) -> bool:
    return isinstance(exc, APIError) and exc.err_code in wire.OCC_CONFLICT_CODES


class JetStreamEventStore:
    def __init__(
        self,
        nc: NATS,
        js: JetStreamContext,
        names: Names,
        reader: DirectReader,
        publisher: AckedPublisher,
    ) -> None:
        self._nc = nc
        self._js = js
        self._names = names
        self._reader = reader
        self._publisher = publisher

    async def append(
        self,
        event: ev.RunEvent,
        *,
        expected_last_seq: int,
        headers: dict[str, str] | None = None,
    ) -> int:
        run_id = event.run_id
        write = guarded_write(self._names, event, expected_last_seq, headers)
        subject, data = write.subject, write.data
        try:
            ack = await self._publisher.publish(subject, data, headers=write.headers)
        except APIError as exc:
            if not is_occ_conflict(exc):
                raise
            # A retry of a write that already landed (its acknowledgement lost) is refused
            # as a conflict too: look for this very write to tell them apart. (The run log
            # carries no Nats-Msg-Id: the guard refuses a repeat anyway, and the server
            # would hold an entry per event for its duplicate window.)
            landed = await self._find_write(run_id, subject, data, after=expected_last_seq)
            if landed is not None:
                return landed
            raise ConcurrencyConflictError(run_id, expected_last_seq) from exc
        return int(ack.seq)

    async def _find_write(
        self, run_id: str, subject: str, data: bytes, *, after: int
    ) -> int | None:
        stored = await self._reader.read_subjects(
            self._names.runs_stream, self._names.run_filter(run_id), start_seq=after + 1
        )
        for message in stored:
            if message.subject == subject and message.data == data:
                return message.seq
        return None

    async def _read_log(self, run_id: str) -> list[StoredMessage]:
        stream, run_filter = self._names.runs_stream, self._names.run_filter(run_id)
        stored = await read_run_log(self._reader, stream, run_filter)
        if stored:
            return stored
        # Direct gets may be answered by a replica that has not stored a run's first write
        # yet (they are not read-after-write coherent on a replicated stream): before
        # calling a run unknown, ask the stream's leader.
        for delay in LAGGING_REPLICA_DELAYS_S:
            if await self._leader_last(stream, run_filter) is None:
                return []
            await asyncio.sleep(delay)
            stored = await read_run_log(self._reader, stream, run_filter)
            if stored:
                return stored
        raise TimeoutError(f"run {run_id}: the stream's replicas are behind its leader")

    async def read(self, run_id: str) -> list[tuple[int, ev.RunEvent]]:
        stored = await self._read_log(run_id)
        return [(m.seq, ev.decode_stored(m.subject, m.data)) for m in stored]

    async def read_raw(self, run_id: str) -> list[tuple[int, ev.RunEvent, dict[str, str]]]:
        """Events with their stored headers (trace context, the sequence each append followed)."""
        stored = await self._read_log(run_id)
        return [(m.seq, ev.decode_stored(m.subject, m.data), m.headers) for m in stored]

    async def read_last(self, run_id: str) -> tuple[int, ev.RunEvent] | None:
        """The run's last event (None for a run with no log): one read, however long the
        log is."""
        stream, run_filter = self._names.runs_stream, self._names.run_filter(run_id)
        stored = await self._reader.read_last(stream, run_filter)
        if stored is not None:
            return stored.seq, ev.decode_stored(stored.subject, stored.data)
        leader = await self._leader_last(stream, run_filter)  # (a replica may be behind it)
        if leader is None:
            return None
        seq, subject, data = leader
        return seq, ev.decode_stored(subject, data)

    async def _leader_last(self, stream: str, run_filter: str) -> tuple[int, str, bytes] | None:
        """The sequence, subject and body of the run's last message as the stream's leader
        has it (not a direct get, which a replica behind the leader may answer); None when
        the run has no log."""
        try:
            last = await self._js.get_last_msg(stream, run_filter)
        except NotFoundError:
            return None
        if last.seq is None or last.subject is None:
            return None
        return last.seq, last.subject, last.data or b""
