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


def started(run_id: str, attempt: int) -> ev.AttemptStarted:
    return ev.AttemptStarted(run_id=run_id, at=2.0, attempt=attempt, worker="w")


def positions(events: list[tuple[int, ev.RunEvent]]) -> list[Any]:
    """Steps by position, attempts as ``a<n>``, anything else by type."""
    out: list[Any] = []
    for _, event in events:
        if isinstance(event, ev.AttemptStarted):
            out.append(f"a{event.attempt}")
        else:
            out.append(getattr(event, "position", event.type))
    return out


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
    """Attempts and steps alternate, so each append moves a subject's last message past
    events of another subject: a read must never return a later event without the earlier
    ones (on JetStream, a run's subjects are read by subject and merged)."""
    rounds = 40
    last = await store.append(requested("a"), expected_last_seq=0, msg_id="a:req")
    done = asyncio.Event()

    async def writer() -> None:
        nonlocal last
        for n in range(rounds):
            for event in (started("a", n), step("a", n)):
                last = await store.append(event, expected_last_seq=last, msg_id=f"a:{last}")
                await asyncio.sleep(0)  # let the readers in, even on the in-memory store
        done.set()

    reads: list[list[Any]] = []

    async def reader() -> None:
        while not done.is_set():
            reads.append(positions(await store.read("a")))
            await asyncio.sleep(0)

    await asyncio.gather(writer(), reader(), reader())
    final = positions(await store.read("a"))
    assert final == ["run.requested.v1", *[x for n in range(rounds) for x in (f"a{n}", n)]]
    assert len(reads) > rounds  # the readers really did overlap the writes
    torn = [r for r in reads if r != final[: len(r)]]
    assert not torn, f"{len(torn)} of {len(reads)} reads were not prefixes, e.g. {torn[0]}"
