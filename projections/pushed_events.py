"""Pushed events as the matcher sees them: decoded with their metadata, kept for a short
window, and read back from the events stream.

A wait the matcher learns of after it has passed the wait's events-stream position is
caught up on the events since then: from the recent window (``RecentEvents``) when that
still holds them all, else from the stream (``stored_events``).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from tether.engine import codec, wire
from tether.engine.nats_io import StoredMessage
from tether.engine.subjects import Names
from tether.engine.tracing import TRACEPARENT


@dataclass(frozen=True, slots=True)
class PushedEvent:
    seq: int
    key: str
    payload: dict[str, Any]
    event_id: str | None
    metadata: dict[str, Any]
    received: float
    traceparent: str | None = None


def event_metadata(headers: dict[str, str], identity: str | None) -> dict[str, Any]:
    """The pusher's metadata, carried in a header beside the payload. The approver is the
    identity of the subject the event was pushed to (``<ns>.from.<identity>.<key>``), which
    NATS permissions tie to the pusher's credentials; one claimed in the header is dropped."""
    metadata: dict[str, Any] = {}
    raw = headers.get(codec.METADATA_HEADER)
    if raw:
        if len(raw) > codec.MAX_METADATA_BYTES:
            raise codec.InvalidJsonError(
                f"the {codec.METADATA_HEADER} header is {len(raw)} bytes, "
                f"over {codec.MAX_METADATA_BYTES}"
            )
        metadata = codec.loads_object(
            raw.encode(), f"the {codec.METADATA_HEADER} header", max_depth=codec.MAX_METADATA_DEPTH
        )
        metadata.pop("approver", None)
    if identity is not None:
        metadata["approver"] = identity
    return metadata


class RecentEvents:
    """The events pushed in the last ``window_s`` seconds (at most ``window_max``), by key."""

    def __init__(self, window_s: float, window_max: int) -> None:
        self._by_key: dict[str, deque[PushedEvent]] = {}
        self._order: deque[PushedEvent] = deque()
        self.complete_after = 0  # every event with seq > this is in the recent window
        self._window_s = window_s
        self._window_max = window_max

    def remember(self, event: PushedEvent) -> None:
        self._by_key.setdefault(event.key, deque()).append(event)
        self._order.append(event)
        horizon = event.received - self._window_s
        while self._order and (
            self._order[0].received < horizon or len(self._order) > self._window_max
        ):
            old = self._order.popleft()
            per_key = self._by_key[old.key]
            per_key.popleft()
            if not per_key:
                del self._by_key[old.key]
            self.complete_after = old.seq

    def of_key(self, key: str) -> Iterable[PushedEvent]:
        return self._by_key.get(key, ())


def stored_events(
    names: Names, key: str, stored: list[StoredMessage], until: int
) -> Iterator[PushedEvent]:
    """The events of ``key`` read back from the stream (``stored``, oldest first) up to
    sequence ``until``; those the live matcher rejected are skipped."""
    for message in stored:
        if message.seq > until:
            return
        _, identity = names.parse_event_subject(message.subject)
        try:
            payload = codec.loads_object(message.data, "payload")
            metadata = event_metadata(message.headers, identity)
        except codec.InvalidJsonError:
            continue  # rejected when the live matcher first saw it
        yield PushedEvent(
            message.seq,
            key,
            payload,
            message.headers.get(wire.MSG_ID),
            metadata,
            time.time(),
            message.headers.get(TRACEPARENT),
        )
