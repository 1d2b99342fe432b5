"""The event-store contract, checked on the in-memory store and on JetStream alike: appends
are guarded by the log's last sequence, a retried write is found again by its message id,
and a read is always a whole prefix of the log, even while someone appends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tether.engine import events as ev
from tether.engine.config import Settings
from tether.engine.connection import Connection
from tether.engine.store import ConcurrencyConflictError, EventStore, InMemoryEventStore


@pytest.fixture(params=["in-memory", "jetstream"])
async def store(request: pytest.FixtureRequest, settings: Settings) -> AsyncIterator[EventStore]:
    if request.param == "in-memory":
        yield InMemoryEventStore()
        return
    conn = await Connection.open(settings, name="store-test", manage_streams=True)
    try:
        yield conn.store
    finally:
        await conn.close()


def requested(run_id: str) -> ev.RunRequested:
    return ev.RunRequested(run_id=run_id, at=1.0, task="t", input={}, execution_timeout_s=60.0)


def step(run_id: str, position: int) -> ev.StepRecorded:
    return ev.StepRecorded(run_id=run_id, at=2.0, position=position, name="s", output=position)


def positions(events: list[tuple[int, ev.RunEvent]]) -> list[Any]:
    return [getattr(event, "position", event.type) for _, event in events]


async def test_append_is_guarded_by_the_last_sequence(store: EventStore) -> None:
    first = await store.append(requested("a"), expected_last_seq=0, msg_id="a:req")
    second = await store.append(step("a", 0), expected_last_seq=first, msg_id="a:0")
    assert second > first

    with pytest.raises(ConcurrencyConflictError, match="reload its events"):
        await store.append(step("a", 1), expected_last_seq=first, msg_id="a:stale")
    with pytest.raises(ConcurrencyConflictError):
        await store.append(requested("a"), expected_last_seq=0, msg_id="a:req-again")

    # Another run's log is independent of this one's.
    other = await store.append(requested("b"), expected_last_seq=0, msg_id="b:req")
    assert other > second
    assert positions(await store.read("a")) == ["run.requested.v1", 0]
    assert await store.read("unknown") == []


async def test_a_retried_write_is_found_by_its_message_id(store: EventStore) -> None:
    first = await store.append(requested("a"), expected_last_seq=0, msg_id="a:req")
    landed = await store.append(step("a", 0), expected_last_seq=first, msg_id="a:0")
    # The caller never saw the acknowledgement and writes again: same message, same answer.
    again = await store.append(step("a", 0), expected_last_seq=first, msg_id="a:0")
    assert again == landed
    assert positions(await store.read("a")) == ["run.requested.v1", 0]


async def test_reads_during_appends_are_whole_prefixes(store: EventStore) -> None:
    """Every step lands on the same subject, so each append moves that subject's last
    message: a read must never return a later step without the earlier ones."""
    steps = 60
    last = await store.append(requested("a"), expected_last_seq=0, msg_id="a:req")
    done = asyncio.Event()

    async def writer() -> None:
        nonlocal last
        for position in range(steps):
            last = await store.append(
                step("a", position), expected_last_seq=last, msg_id=f"a:{position}"
            )
            await asyncio.sleep(0)  # let the readers in, even on the in-memory store
        done.set()

    reads: list[list[Any]] = []

    async def reader() -> None:
        while not done.is_set():
            reads.append(positions(await store.read("a")))
            await asyncio.sleep(0)

    await asyncio.gather(writer(), reader(), reader())
    final = positions(await store.read("a"))
    assert final == ["run.requested.v1", *range(steps)]
    assert len(reads) > steps // 2  # the readers really did overlap the writes
    torn = [r for r in reads if r != final[: len(r)]]
    assert not torn, f"{len(torn)} of {len(reads)} reads were not prefixes, e.g. {torn[0]}"
