"""Checkpoints of projections: what a projection held open at a stream position, so that
the next start reads that and the stream after it, not the whole history.

One key per projection and partition (``matcher.p7``) in the checkpoints bucket. A
checkpoint is written only by the partition's owner; a stale one is harmless, since the
projection then follows the stream from the older position and sees the same events again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import orjson
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

log = logging.getLogger("tether.checkpoints")

# A NATS message carries at most 1 MB by default (max_payload); a checkpoint larger than
# this is not written, and start-up then follows the partition from its older checkpoint.
MAX_CHECKPOINT_BYTES = 900 * 1024


@dataclass(frozen=True, slots=True)
class Checkpoint:
    position: int  # the last stream sequence the state covers
    state: Any


class Checkpoints:
    def __init__(self, bucket: KeyValue) -> None:
        self._bucket = bucket

    async def load(self, name: str) -> Checkpoint | None:
        try:
            entry = await self._bucket.get(name)
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        try:
            body = orjson.loads(entry.value)
            return Checkpoint(int(body["position"]), body["state"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            log.error(
                "unusable checkpoint ignored; following from the start",
                extra={"checkpoint": name, "error": repr(exc)},
            )
            return None

    async def save(self, name: str, checkpoint: Checkpoint) -> bool:
        """Write it; False (logged) when it is too large or NATS refused it."""
        data = orjson.dumps({"position": checkpoint.position, "state": checkpoint.state})
        if len(data) > MAX_CHECKPOINT_BYTES:
            log.warning(
                "checkpoint too large to write; start-up will read the stream from the last one",
                extra={"checkpoint": name, "bytes": len(data)},
            )
            return False
        try:
            await self._bucket.put(name, data)
        except Exception as exc:
            log.warning("checkpoint not written", extra={"checkpoint": name, "error": repr(exc)})
            return False
        return True
