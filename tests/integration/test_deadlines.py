"""The deadlines bucket as the engine writes it: a put is the key's pending deadline, and a
removal leaves only a purge marker that expires by itself."""

from __future__ import annotations

import time

import orjson
import pytest
from nats.js.errors import KeyNotFoundError

from tether.engine import commands, ids
from tether.engine.connection import Connection
from tether.engine.deadlines import Deadlines
from tether.engine.provision import DEADLINE_MARKER_TTL_S


async def test_a_removed_deadline_leaves_a_marker_that_expires(conn: Connection) -> None:
    names = conn.settings.names
    deadlines = Deadlines(conn.deadlines, conn.publisher, names.deadlines_bucket)
    key = ids.run_deadline_key(0, "r1")
    command = commands.CommandMessage(kind="expire_run", run_id="r1", timer_key=key)
    due_at = time.time() + 60

    await deadlines.put(key, due_at, command, None)
    await deadlines.put(key, due_at + 1, command, None)  # moved: the later put replaces it
    entry = await conn.deadlines.get(key)
    assert entry.value is not None
    stored = orjson.loads(entry.value)
    assert stored["due_at"] == due_at + 1
    assert commands.CommandMessage.model_validate(stored["command"]) == command

    await deadlines.remove(key)
    with pytest.raises(KeyNotFoundError):
        await conn.deadlines.get(key)
    subject = f"$KV.{names.deadlines_bucket}.{key}"
    marker = await conn.js.get_last_msg(f"KV_{names.deadlines_bucket}", subject)
    headers = marker.headers or {}
    assert headers.get("KV-Operation") == "PURGE"
    assert headers.get("Nats-TTL") == str(DEADLINE_MARKER_TTL_S)
    # the marker rolled up the key: it is all the bucket holds for it
    info = await conn.js.stream_info(f"KV_{names.deadlines_bucket}", subjects_filter=subject)
    assert info.state.messages == 1
