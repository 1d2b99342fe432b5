"""The event-store contract, checked on the in-memory store and on JetStream alike: appends
are guarded by the log's last sequence, a retried write is found again by its content,
and a read is always a whole prefix of the log, even while someone appends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tether.engine import events as ev
from tether.engine.config import Settings
from tether.engine.connection import Connection
from tether.engine.run_log_reads import MOST_SUBJECTS, read_chained
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


def requested(run_id: str, at: float = 1.0) -> ev.RunRequested:
    return ev.RunRequested(run_id=run_id, at=at, task="t", input={}, execution_timeout_s=60.0)


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
    first = await store.append(requested("a"), expected_last_seq=0)
    second = await store.append(step("a", 0), expected_last_seq=first)
    assert second > first

    with pytest.raises(ConcurrencyConflictError, match="reload its events"):
        await store.append(step("a", 1), expected_last_seq=first)
    with pytest.raises(ConcurrencyConflictError):
        # another writer's request for the same run id
        await store.append(requested("a", at=5.0), expected_last_seq=0)

    # Another run's log is independent of this one's.
    other = await store.append(requested("b"), expected_last_seq=0)
    assert other > second
    assert positions(await store.read("a")) == ["run.requested.v1", 0]
    assert await store.read("unknown") == []


async def test_a_retried_write_is_found_by_its_content(store: EventStore) -> None:
    first = await store.append(requested("a"), expected_last_seq=0)
    landed = await store.append(step("a", 0), expected_last_seq=first)
    # The caller never saw the acknowledgement and writes again: same event, same answer.
    again = await store.append(step("a", 0), expected_last_seq=first)
    assert again == landed
    # A different event at that position is someone else's write: a conflict.
    with pytest.raises(ConcurrencyConflictError):
        await store.append(step("a", 7), expected_last_seq=first)
    assert positions(await store.read("a")) == ["run.requested.v1", 0]


async def test_reads_during_appends_are_whole_prefixes(store: EventStore) -> None:
    """Attempts and steps alternate, so each append moves a subject's last message past
    events of another subject: a read must never return a later event without the earlier
    ones (on JetStream, a run's subjects are read by subject and merged)."""
    rounds = 40
    last = await store.append(requested("a"), expected_last_seq=0)
    done, read_done = asyncio.Event(), asyncio.Event()

    async def writer() -> None:
        nonlocal last
        for n in range(rounds):
            for event in (started("a", n), step("a", n)):
                last = await store.append(event, expected_last_seq=last)
                # a read ends between any two appends (the other reader may be mid-read),
                # however fast appends are against reads
                read_done.clear()
                await read_done.wait()
        done.set()

    reads: list[list[Any]] = []

    async def reader() -> None:
        while not done.is_set():
            reads.append(positions(await store.read("a")))
            read_done.set()
            await asyncio.sleep(0)

    await asyncio.gather(writer(), reader(), reader())
    final = positions(await store.read("a"))
    assert final == ["run.requested.v1", *[x for n in range(rounds) for x in (f"a{n}", n)]]
    assert len(reads) > rounds  # the readers really did overlap the writes
    torn = [r for r in reads if r != final[: len(r)]]
    assert not torn, f"{len(torn)} of {len(reads)} reads were not prefixes, e.g. {torn[0]}"


async def chained(conn: Connection, run_id: str) -> list[int] | None:
    names = conn.settings.names
    run_filter = names.run_filter(run_id)
    newest = await conn.reader.last_of_each(names.runs_stream, run_filter, most=MOST_SUBJECTS)
    got = await read_chained(conn.reader, names.runs_stream, run_filter, newest)
    return None if got is None else [m.seq for m in got]


async def counted(conn: Connection, run_id: str) -> list[int]:
    names = conn.settings.names
    got = await conn.reader.read_subjects(names.runs_stream, names.run_filter(run_id))
    return [m.seq for m in got]


async def test_the_chain_of_guarded_appends_reads_a_log_whole(conn: Connection) -> None:
    """Events hidden under a later one of their type are found by their sequence; a log
    with more of them than the chain reads, or with an unguarded write, is left to the
    counted read, and the store's read is whole either way."""
    store = conn.store
    last = await store.append(requested("a"), expected_last_seq=0)
    assert await chained(conn, "a") == await counted(conn, "a") == [last]
    # the first attempt is hidden under the second
    for event in (started("a", 0), step("a", 0), started("a", 1)):
        last = await store.append(event, expected_last_seq=last)
        # another run's events interleave, as they do on a busy stream
        await store.append(requested(f"x{last}"), expected_last_seq=0)
    assert await chained(conn, "a") == await counted(conn, "a")
    assert len(await counted(conn, "a")) == 4

    last = await store.append(step("a", 1), expected_last_seq=last)
    assert await chained(conn, "a") is None  # two hidden: a counted read is cheaper
    assert positions(await store.read("a")) == ["run.requested.v1", "a0", 0, "a1", 1]
    assert await chained(conn, "unknown") == []

    # A write without the guard breaks the chain: the read counts, and sees it.
    await store.append(requested("b"), expected_last_seq=0)
    subject = conn.settings.names.run_subject("b", "step")
    await conn.js.publish(subject, b"not an event")
    assert await chained(conn, "b") is None
    [(_, first), (_, foreign)] = await store.read("b")
    assert isinstance(first, ev.RunRequested) and isinstance(foreign, ev.UnusableEntry)


async def test_chained_reads_during_appends_are_whole_prefixes(conn: Connection) -> None:
    """Runs written one after another (a second attempt hiding the first), read through
    their chains while they grow: every read is a whole prefix of its run's log."""
    store = conn.store
    writes: dict[str, list[int]] = {}
    current = ""
    done = asyncio.Event()

    async def writer() -> None:
        nonlocal current
        for r in range(20):
            current = run_id = f"r{r}"
            events: list[ev.RunEvent] = [requested(run_id), started(run_id, 1), step(run_id, 0)]
            events += [started(run_id, 2), ev.RunCompleted(run_id=run_id, at=4.0, output=r)]
            last = 0
            writes[run_id] = []
            for event in events:
                last = await store.append(event, expected_last_seq=last)
                writes[run_id].append(last)
                await asyncio.sleep(0)
        done.set()

    reads: list[tuple[str, list[int]]] = []

    async def reader() -> None:
        while not done.is_set():
            run_id = current
            got = await chained(conn, run_id) if run_id else None
            if got:
                reads.append((run_id, got))
            await asyncio.sleep(0)

    await asyncio.gather(writer(), reader(), reader())
    assert len(reads) > 20  # the chain answered while the logs grew
    torn = [(r, got) for r, got in reads if got != writes[r][: len(got)]]
    assert not torn, f"{len(torn)} of {len(reads)} chained reads were not prefixes: {torn[0]}"


class _LaggingReplica:
    """A direct reader answered by a replica that has not yet stored anything of the runs
    in ``lagging`` for the first ``reads`` reads of each: direct gets are not read-after-write
    coherent on a replicated stream."""

    def __init__(self, reader: Any, lagging: set[str], reads: int) -> None:
        self._reader = reader
        self._left = {run_filter: reads for run_filter in lagging}

    def _behind(self, run_filter: str) -> bool:
        left = self._left.get(run_filter, 0)
        self._left[run_filter] = max(0, left - 1)
        return left > 0

    async def last_of_each(self, stream: str, run_filter: str, **kwargs: Any) -> Any:
        if self._behind(run_filter):
            return []
        return await self._reader.last_of_each(stream, run_filter, **kwargs)

    async def read_last(self, stream: str, run_filter: str) -> Any:
        if self._behind(run_filter):
            return None
        return await self._reader.read_last(stream, run_filter)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)


async def test_a_run_a_lagging_replica_does_not_show_yet_is_not_called_unknown(
    settings: Settings,
) -> None:
    """A read that finds no log asks the stream's leader before calling the run unknown,
    and waits for the replica while the leader has it."""
    conn = await Connection.open(settings, name="lagging-test", manage_streams=True)
    try:
        store = conn.store
        await store.append(requested("lag"), expected_last_seq=0)
        await store.append(requested("lag-last"), expected_last_seq=0)
        names = settings.names
        lagging = {names.run_filter("lag"), names.run_filter("lag-last")}
        store._reader = _LaggingReplica(store._reader, lagging, reads=2)  # type: ignore[assignment]
        assert positions(await store.read("lag")) == ["run.requested.v1"]
        last = await store.read_last("lag-last")
        assert last is not None and last[1].type == "run.requested.v1"
        assert await store.read("never-requested") == []
        assert await store.read_last("never-requested") is None
    finally:
        await conn.close()
