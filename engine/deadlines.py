"""The deadlines bucket as the engine writes it: one key per pending deadline, holding the
command to publish when it comes due. The timer projection (``tether.projections.timer``)
follows the bucket and fires them.

A deadline that is no longer needed is purged with a marker that expires by itself, so the
bucket holds what is pending (plus the markers of the last few minutes), never one entry
per deadline ever set: a timer starting after a million runs reads only what is open.
"""

from __future__ import annotations

import logging

import orjson
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from tether.engine import commands, ids, wire
from tether.engine.acked_publish import AckedPublisher
from tether.engine.provision import DEADLINE_MARKER_TTL_S, bucket_prefix
from tether.engine.state import WaitRecord

log = logging.getLogger("tether.engine")

# A purge as KeyValue.purge(key, msg_ttl=DEADLINE_MARKER_TTL_S) writes it: the marker rolls
# up the key's entries and expires by itself.
PURGE_HEADERS = {
    wire.KV_OPERATION: wire.KV_PURGE,
    wire.ROLLUP: wire.ROLLUP_SUBJECT,
    wire.MSG_TTL: str(int(DEADLINE_MARKER_TTL_S)),
}


def wait_deadline_keys(partition: int, run_id: str, record: WaitRecord) -> list[str]:
    """Every deadline key a wait may have set: its timeout and its sleep conditions."""
    keys = []
    if record.timeout_at is not None:
        keys.append(ids.wait_deadline_key(partition, run_id, record.position))
    for clause in record.clauses:
        keys += [
            ids.sleep_deadline_key(partition, run_id, record.position, spec.id)
            for spec in clause
            if spec.kind == "sleep"
        ]
    return keys


def _entry(due_at: float, command: commands.CommandMessage, traceparent: str | None) -> bytes:
    body: dict[str, object] = {
        "due_at": due_at,
        "command": command.model_dump(mode="json", exclude_defaults=True),
    }
    if traceparent:  # the run's trace, so the timeout shows up in it when it fires
        body["traceparent"] = traceparent
    return orjson.dumps(body)


class Deadlines:
    """Writes to the deadlines bucket. A put and a purge are what nats-py's ``KeyValue``
    sends, published through ``AckedPublisher``: the bookkeeping puts one per run and one
    per wait."""

    def __init__(self, bucket: KeyValue, publisher: AckedPublisher, bucket_name: str) -> None:
        self._bucket = bucket
        self._publisher = publisher
        self._prefix = bucket_prefix(bucket_name)

    async def put(
        self,
        key: str,
        due_at: float,
        command: commands.CommandMessage,
        traceparent: str | None,
    ) -> None:
        await self._publisher.publish(self._prefix + key, _entry(due_at, command, traceparent))

    async def create(
        self,
        key: str,
        due_at: float,
        command: commands.CommandMessage,
        traceparent: str | None,
    ) -> bool:
        """``put`` where ``key`` holds no deadline; False (nothing written) where it does."""
        try:
            await self._bucket.create(key, _entry(due_at, command, traceparent))
        except KeyWrongLastSequenceError:
            return False
        return True

    async def remove(self, key: str) -> None:
        """Drop a deadline that is no longer needed. A failure is logged, not raised: the
        deadline then fires, and the engine finds its command no longer applies."""
        try:
            await self._publisher.publish(self._prefix + key, headers=PURGE_HEADERS)
        except Exception as exc:
            log.warning(
                "deadline not removed; it will fire and find nothing to do",
                extra={"key": key, "error": repr(exc)},
            )
