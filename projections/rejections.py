"""Pushed events that could not be used are recorded, never silently dropped."""

from __future__ import annotations

import logging

import orjson
from nats.js.client import JetStreamContext

from tether.engine import ids, wire
from tether.engine.subjects import Names

log = logging.getLogger("tether.rejections")

_KEEP_BYTES = 2048


async def record_rejection(
    js: JetStreamContext, names: Names, seq: int, key: str, reason: str, data: bytes
) -> None:
    body = {
        "event_seq": seq,
        "event_key": key,
        "reason": reason,
        "data": data[:_KEEP_BYTES].decode("utf-8", errors="replace"),
        "truncated": len(data) > _KEEP_BYTES,
    }
    try:
        await js.publish(
            names.rejected_subject(key),
            orjson.dumps(body),
            headers={wire.MSG_ID: ids.rejection_msg_id(seq)},
        )
    except Exception:
        log.exception("could not record a rejected event", extra={"event_seq": seq})
