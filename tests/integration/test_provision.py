"""Provisioning: `tether serve` brings the streams to its settings at every start; other
processes create what is missing and leave existing streams alone."""

from __future__ import annotations

import dataclasses

from tests.helpers import wait_until
from tether import Tether
from tether.engine.config import Settings
from tether.engine.connection import Connection


async def events_config(settings: Settings) -> tuple[float | None, float | None, int | None]:
    conn = await Connection.open(settings, name="probe")
    try:
        info = await conn.js.stream_info(settings.names.events_stream)
        return info.config.max_age, info.config.duplicate_window, info.state.messages
    finally:
        await conn.close()


async def test_events_age_limit_is_set_by_serve_only(settings: Settings) -> None:
    day = dataclasses.replace(settings, events_max_age_s=86_400.0)
    serve = await Connection.open(day, name="serve", manage_streams=True)
    await serve.close()
    max_age, window, _ = await events_config(settings)
    assert (max_age, window) == (86_400.0, 120.0)

    # A worker or client with other settings does not change a stream serve manages.
    client = await Connection.open(settings, name="client")
    await client.close()
    assert (await events_config(settings))[0] == 86_400.0

    # The next serve with the default keeps events forever again.
    serve = await Connection.open(settings, name="serve", manage_streams=True)
    await serve.close()
    max_age, _, _ = await events_config(settings)
    assert not max_age


async def test_events_older_than_the_age_limit_are_dropped(settings: Settings) -> None:
    short = dataclasses.replace(settings, events_max_age_s=1.0)
    serve = await Connection.open(short, name="serve", manage_streams=True)
    await serve.close()
    _, window, _ = await events_config(settings)
    assert window == 1.0  # the duplicate window may not outlast the events it dedupes

    async with Tether(settings=short) as app:
        await app.events.push("approval:decision", {"runId": "r1", "decision": "approve"})
        assert (await events_config(settings))[2] == 1

        async def aged_out() -> bool:
            return (await events_config(settings))[2] == 0

        await wait_until(aged_out, timeout=10, interval=0.2, message="the event to age out")
