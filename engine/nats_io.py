"""Small JetStream helpers nats-py lacks: batched direct get and status inspection."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from tether.engine import wire

log = logging.getLogger("tether.nats")
T = TypeVar("T")

STATUS = wire.STATUS
DESCRIPTION = wire.DESCRIPTION
# A whole read of a run's log that comes back short (a replica behind) is tried this often.
WHOLE_READ_ATTEMPTS = 5


class StreamUnavailableError(RuntimeError):
    """JetStream answered a read with "unavailable" (no leader yet, a node restarting)."""


# Read failures that pass on their own (a reconnect, a leader election): a caller with time
# left tries again. The builtin TimeoutError is a read that got no answer in time.
TRANSIENT_NATS_ERRORS: tuple[type[Exception], ...] = (
    TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionReconnectingError,
    StreamUnavailableError,
    nats.js.errors.NoStreamResponseError,  # a publish while the stream has no leader
)


async def retry_transient(
    operation: Callable[[], Awaitable[T]], *, within_s: float, what: str
) -> T:
    """Run ``operation``, trying again while it fails transiently (a stream just created on
    a cluster, a leader election), for up to ``within_s``; then the last error is raised."""
    deadline = time.monotonic() + within_s
    delay = 0.1
    while True:
        try:
            return await operation()
        except TRANSIENT_NATS_ERRORS as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.info("retrying", extra={"what": what, "error": repr(exc)})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


# Ordered consumers live in server memory. After a NATS restart nats-py recreates one only
# once it has missed two idle heartbeats, so the heartbeat bounds how long a projection
# pauses (nats-py's default of 5 s, as its KV watcher uses, meant 10-20 s).
ORDERED_IDLE_HEARTBEAT_S = 1.0


async def unsubscribe_quietly(sub: Subscription, what: str) -> None:
    """Unsubscribe ``sub``; a connection NATS has closed already dropped it."""
    try:
        await sub.unsubscribe()
    except Exception as exc:
        log.debug("unsubscribe failed", extra={"subscription": what, "error": repr(exc)})


def status_of(msg: Msg) -> str | None:
    """The inline status code of a control message ('204', '404', '408', ...), else None."""
    if msg.headers and not msg.data:
        return msg.headers.get(STATUS)
    if msg.headers and STATUS in msg.headers:
        return msg.headers[STATUS]
    return None


@dataclass(frozen=True, slots=True)
class StoredMessage:
    seq: int
    subject: str
    data: bytes
    headers: dict[str, str]
    timestamp: str


class DirectReader:
    """Batched direct gets over one shared inbox subscription.

    Reading a run's log as one batch (``next_by_subj`` with a wildcard) costs a single
    round trip, several times cheaper than a consumer or one get per message.
    """

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._prefix = nc.new_inbox()
        self._tokens = itertools.count(1)
        self._pending: dict[str, asyncio.Queue[Msg]] = {}
        self._sub: Subscription | None = None

    async def _ensure_sub(self) -> None:
        if self._sub is None:
            self._sub = await self._nc.subscribe(f"{self._prefix}.*", cb=self._on_msg)

    async def _on_msg(self, msg: Msg) -> None:
        queue = self._pending.get(msg.subject)
        if queue is not None:
            queue.put_nowait(msg)

    async def read_subject(
        self,
        stream: str,
        subject_filter: str,
        *,
        start_seq: int = 1,
        start_time: str | None = None,
        batch: int = 500,
        timeout: float = 5.0,
    ) -> list[StoredMessage]:
        """All messages matching ``subject_filter`` from ``start_seq`` (or from the RFC 3339
        ``start_time``) on, oldest first."""
        await self._ensure_sub()
        out: list[StoredMessage] = []
        seq = start_seq
        first_time = start_time
        # Ask for one message first, then for exactly as many as the server says are left:
        # a batch bigger than what is left makes the server search for one more match up to
        # the end of the stream, a cost that grows with everything stored after the subject.
        want = 1
        while True:
            got, pending = await self._one_batch(
                stream, subject_filter, seq, want, timeout, first_time
            )
            first_time = None
            out.extend(got)
            if not pending or not got:
                return out
            seq = got[-1].seq + 1
            want = min(pending, batch)

    async def read_subjects(
        self,
        stream: str,
        subject_filter: str,
        *,
        start_seq: int = 1,
        timeout: float = 5.0,
        last_of_each: list[StoredMessage] | None = None,
    ) -> list[StoredMessage]:
        """Like ``read_subject`` for a wildcard filter, but one exact subject at a time.

        A direct get with a wildcard ``next_by_subj`` makes the server scan every message
        stored between the matches; when a run's events are interleaved with everyone
        else's, that cost grows with the traffic since the run began. The stream's
        per-subject index answers exact subjects at once, so this asks which subjects match
        (with their counts) and reads each one, concurrently, merged by sequence.

        The result is the log as it stood at the stream's last sequence in that answer, even
        while others append: the server reports that sequence before it counts subjects, so
        every message at or below it is among the counted ones, and everything is cut there.
        A subject counted once but written again before the ``multi_last`` read is answered
        with its newer message (or not at all, past the batch); that subject alone is read
        again literally, from the start. (``multi_last`` can cut at a sequence itself, with
        ``up_to_seq``, but below the stream's end that makes the server search its blocks:
        it doubled nats-server's CPU per run in ``bench/hitl_cycle.py``.)

        In a cluster any replica may answer a direct get, and one behind the leader lacks
        messages the leader counted. A whole read (from the first sequence) that comes back
        short is tried again, so a gap never reaches a replay.

        ``last_of_each``, a ``multi_last`` answer taken *before* this call, spares the first
        try that read: a subject counted once but missing from it was written since, and is
        read literally like any subject that moved.
        """
        for attempt in range(1, WHOLE_READ_ATTEMPTS + 1):
            messages, whole = await self._read_subjects_once(
                stream, subject_filter, start_seq, timeout, last_of_each
            )
            last_of_each = None
            if whole or start_seq > 1:
                return messages
            await asyncio.sleep(0.05 * attempt)
        raise RuntimeError(
            f"could not read {subject_filter} on stream {stream} whole after "
            f"{WHOLE_READ_ATTEMPTS} tries: the replicas answering direct gets are behind the "
            "stream leader; check the cluster's health and retry"
        )

    async def _read_subjects_once(
        self,
        stream: str,
        subject_filter: str,
        start_seq: int,
        timeout: float,
        known_last_of_each: list[StoredMessage] | None,
    ) -> tuple[list[StoredMessage], bool]:
        """One read; also whether every counted message at or below the cut came back."""
        await self._ensure_sub()
        reply = await self._nc.request(
            wire.stream_info(stream),
            orjson.dumps({"subjects_filter": subject_filter}),
            timeout=timeout,
        )
        info = orjson.loads(reply.data)
        if "error" in info:
            error = info["error"]
            if error.get("code") == 503:
                raise StreamUnavailableError(f"stream {stream} is unavailable: {error}")
            raise RuntimeError(f"stream info for {stream} failed: {error}")
        state = info.get("state") or {}
        counts: dict[str, int] = state.get("subjects") or {}
        up_to = int(state.get("last_seq") or 0)
        if not counts or up_to < start_seq:
            return [], True
        # Subjects holding one message come back together, as "the last message of each
        # subject"; only subjects with several messages need a read of their own.
        repeated = [subject for subject, count in counts.items() if count > 1]
        literal_reads = [
            self._one_batch(stream, subject, start_seq, counts[subject], timeout)
            for subject in repeated
        ]
        if known_last_of_each is not None:
            last_of_each = (known_last_of_each, 0)
            literal = list(await asyncio.gather(*literal_reads))
        else:
            last_of_each, *literal = await asyncio.gather(
                self._request_batch(
                    stream, {"multi_last": [subject_filter], "batch": len(counts)}, timeout
                ),
                *literal_reads,
            )
        answered = {m.subject for m in last_of_each[0] if m.seq <= up_to}
        moved = [s for s, count in counts.items() if count == 1 and s not in answered]
        if moved:  # written again since they were counted
            literal += await asyncio.gather(
                *(self._one_batch(stream, subject, start_seq, 1, timeout) for subject in moved)
            )
        # Literal reads ask for exactly the counted number: fewer means a lagging replica.
        wanted = [counts[subject] for subject in repeated] + [1] * len(moved)
        whole = all(len(got) == n for (got, _), n in zip(literal, wanted, strict=True))
        by_seq: dict[int, StoredMessage] = {}
        for got, _ in [last_of_each, *literal]:
            for message in got:
                if start_seq <= message.seq <= up_to:
                    by_seq[message.seq] = message
        return [by_seq[seq] for seq in sorted(by_seq)], whole

    async def _one_batch(
        self,
        stream: str,
        subject_filter: str,
        seq: int,
        batch: int,
        timeout: float,
        start_time: str | None = None,
    ) -> tuple[list[StoredMessage], int]:
        """Up to ``batch`` messages from ``seq`` on, and how many more match after them."""
        body: dict[str, object] = {"batch": batch, "next_by_subj": subject_filter}
        if start_time is not None:
            body["start_time"] = start_time
        else:
            body["seq"] = seq
        return await self._request_batch(stream, body, timeout)

    async def read_last(
        self, stream: str, subject_filter: str, *, timeout: float = 5.0
    ) -> StoredMessage | None:
        """The last message matching ``subject_filter`` (wildcards allowed), or None: one
        direct get, answered from the stream's subject index."""
        return await self._get_one(stream, {"last_by_subj": subject_filter}, timeout)

    async def read_seq(
        self, stream: str, seq: int, *, timeout: float = 5.0
    ) -> StoredMessage | None:
        """The message stored at ``seq``, or None."""
        return await self._get_one(stream, {"seq": seq}, timeout)

    async def last_of_each(
        self, stream: str, subject_filter: str, *, most: int, timeout: float = 5.0
    ) -> list[StoredMessage]:
        """The last message of each subject matching ``subject_filter`` (at most ``most``
        subjects), oldest first: one batched direct get, taken at one point of the stream."""
        got, _ = await self._request_batch(
            stream, {"multi_last": [subject_filter], "batch": most}, timeout
        )
        return sorted(got, key=lambda m: m.seq)

    async def _get_one(
        self, stream: str, body: dict[str, object], timeout: float
    ) -> StoredMessage | None:
        async with self._asking(stream, body) as replies, asyncio.timeout(timeout):
            msg = await replies.get()
        status = status_of(msg)
        if status == "404":
            return None
        _raise_for_status(status, msg, stream)
        return _stored(msg)

    async def _request_batch(
        self, stream: str, body: dict[str, object], timeout: float
    ) -> tuple[list[StoredMessage], int]:
        """One batched direct get: its messages, and how many more match after them."""
        out: list[StoredMessage] = []
        async with self._asking(stream, body) as replies, asyncio.timeout(timeout):
            while True:
                msg = await replies.get()
                status = status_of(msg)
                if status == "404":
                    return out, 0
                if status == "204":  # end of batch
                    return out, int((msg.headers or {}).get(wire.NUM_PENDING, "0") or 0)
                _raise_for_status(status, msg, stream)
                out.append(_stored(msg))

    @contextlib.asynccontextmanager
    async def _asking(
        self, stream: str, body: dict[str, object]
    ) -> AsyncIterator[asyncio.Queue[Msg]]:
        """Send one direct get; its replies arrive on the queue yielded, until the block
        ends."""
        await self._ensure_sub()
        inbox = f"{self._prefix}.{next(self._tokens)}"
        replies: asyncio.Queue[Msg] = asyncio.Queue()
        self._pending[inbox] = replies
        try:
            await self._nc.publish(wire.direct_get(stream), orjson.dumps(body), reply=inbox)
            yield replies
        finally:
            self._pending.pop(inbox, None)

    async def close(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None


def _raise_for_status(status: str | None, msg: Msg, stream: str) -> None:
    """A direct get answered with an error status raises; a message passes."""
    if status is None or status == "200":
        return
    desc = (msg.headers or {}).get(DESCRIPTION, "")
    if status == wire.STATUS_UNAVAILABLE:  # (a 408 here means a bad request, not a timeout)
        raise StreamUnavailableError(f"direct get on stream {stream}: {desc}")
    raise RuntimeError(
        f"direct get on stream {stream} failed: {status} {desc}; the stream needs allow_direct=True"
    )


def _stored(msg: Msg) -> StoredMessage:
    headers = dict(msg.headers or {})
    return StoredMessage(
        seq=int(headers[wire.SEQUENCE]),
        subject=headers.get(wire.SUBJECT, ""),
        data=msg.data,
        headers=headers,
        timestamp=headers.get(wire.TIME_STAMP, ""),
    )


async def hand_back(msg: Msg, delay: float | None = None) -> None:
    """Nak ``msg`` so it is delivered again (after ``delay``). A nak that cannot be sent
    (NATS away) is logged, not raised: the server then redelivers it after its ack wait."""
    try:
        await msg.nak(delay=delay)
    except Exception as exc:
        log.warning(
            "could not hand a message back; it returns after the consumer's ack wait",
            extra={"subject": msg.subject, "error": repr(exc)},
        )
