"""Pushing events (decisions) that waits match: the SDK's side of ``tether.events.<key>``."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from opentelemetry.trace import SpanKind

from tether.engine import codec, wire
from tether.engine.connection import ConnectionFactory
from tether.engine.subjects import check_event_key, check_identity
from tether.engine.tracing import messaging
from tether.sync import SyncRunner


@dataclass(frozen=True, slots=True)
class PushResult:
    id: str
    seq: int
    duplicate: bool


class EventsClient:
    """Push events (decisions) that waits match."""

    def __init__(self, connect: ConnectionFactory, sync: SyncRunner) -> None:
        self._connect = connect
        self._sync = sync

    def push_sync(
        self,
        key: str,
        payload: dict[str, Any],
        *,
        id: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> PushResult:
        """``push`` for synchronous code."""
        return self._sync.run(self.push(key, payload, id=id, metadata=metadata))

    async def push(
        self,
        key: str,
        payload: dict[str, Any],
        *,
        id: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> PushResult:
        """Publish an event to ``tether.events.<key>`` with a JetStream ack.

        ``metadata={"approver": name}`` pushes as that approver instead, to
        ``tether.from.<name>.<key>``: the run records the approver from the subject, and NATS
        permissions decide which credentials may push as whom (docs/security.md).
        Payloads nest at most 64 levels and hold integers within 64 bits; metadata is a
        JSON object of at most 4 KB and 8 levels.

        Idempotent by ``id``: pushing the same id again (within the stream's duplicate window,
        2 minutes) stores nothing new and returns ``duplicate=True``.
        """
        check_event_key(key)
        if not isinstance(payload, dict):
            raise TypeError(
                f"event payload must be a JSON object (dict), got {type(payload).__name__}; "
                "wrap the value, e.g. {'value': ...}"
            )
        codec.check_json_value(payload, "event payload")
        data = codec.dumps(payload)
        metadata = dict(metadata or {})
        approver = metadata.pop("approver", None)
        if approver is not None:
            check_identity(str(approver))
        event_id = id or uuid.uuid4().hex
        headers = {wire.MSG_ID: event_id}
        if metadata:
            codec.check_json_value(metadata, "event metadata", max_depth=codec.MAX_METADATA_DEPTH)
            encoded = codec.dumps(metadata).decode()
            if len(encoded) > codec.MAX_METADATA_BYTES:
                raise ValueError(
                    f"event metadata is {len(encoded)} bytes encoded, over the "
                    f"{codec.MAX_METADATA_BYTES}-byte limit; keep it to a few short fields"
                )
            headers[codec.METADATA_HEADER] = encoded
        conn = await self._connect()
        limit = conn.settings.max_event_bytes
        # The server's limit (the events stream's max_msg_size) counts headers too.
        header_bytes = _header_block_size(headers)
        if len(data) + header_bytes > limit:
            raise ValueError(
                f"event payload is {len(data)} bytes (plus {header_bytes} bytes of id and "
                f"metadata headers), over the {limit}-byte limit (TETHER_MAX_EVENT_BYTES); "
                "store large data elsewhere and push a reference"
            )
        names = conn.settings.names
        # An approver pushes into its own subject space, which NATS permissions tie to its
        # credentials; the matcher records the approver from the subject. Either way the
        # span is named for the logical destination, the events of the key.
        if approver is not None:
            subject = names.from_subject(str(approver), key)
        else:
            subject = names.event_subject(key)
        template = names.event_subject("{event_key}")
        with conn.tracing.span(
            f"publish {template}",
            kind=SpanKind.PRODUCER,
            attributes={
                **messaging("publish", "send", subject, template),
                "tether.event_key": key,
                "tether.event_id": event_id,
                "tether.approver": approver,
            },
        ) as span:
            # A subject this user may not publish to fails at once, not after the timeout.
            ack = await conn.permissions.guard(
                subject, conn.publisher.publish(subject, data, headers=conn.tracing.inject(headers))
            )
            span.set_attribute("tether.event_seq", int(ack.seq))
        return PushResult(id=event_id, seq=int(ack.seq), duplicate=bool(ack.duplicate))


def _header_block_size(headers: dict[str, str]) -> int:
    """Bytes of the NATS header block nats-py sends for ``headers``."""
    size = len(b"NATS/1.0\r\n\r\n")
    for key, value in headers.items():
        size += len(key.encode()) + len(b": ") + len(value.encode()) + len(b"\r\n")
    return size
