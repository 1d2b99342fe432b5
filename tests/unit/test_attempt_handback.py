"""After a conflict an attempt hands its dispatch back unless someone else carries the run
on: the run ended, waits, or a newer attempt started. Pure, on the in-memory store."""

from __future__ import annotations

from tether.engine.events import AttemptStarted, RunCompleted, RunEvent, RunRequested, StepRecorded
from tether.engine.store import InMemoryEventStore
from tether.runtime.executor import _after_conflict

RUN = "r1"


async def store_with(*events: RunEvent) -> InMemoryEventStore:
    store = InMemoryEventStore()
    for seq, event in enumerate(events):
        await store.append(event, expected_last_seq=seq)
    return store


def requested() -> RunRequested:
    return RunRequested(run_id=RUN, at=1.0, task="t", input={}, execution_timeout_s=60.0)


def started(attempt: int) -> AttemptStarted:
    return AttemptStarted(run_id=RUN, at=2.0, attempt=attempt, worker="w")


def step() -> StepRecorded:
    return StepRecorded(run_id=RUN, at=3.0, position=0, name="s", output=1)


async def test_a_run_left_on_an_older_attempt_is_handed_back() -> None:
    # attempt 1's step landed late, after attempt 2 read the log: attempt 2's start
    # conflicted, and nobody holds the run but this dispatch
    store = await store_with(requested(), started(1), step())
    assert (await _after_conflict(store, RUN, 2)).outcome == "interrupted"
    assert (await _after_conflict(store, RUN, 1)).outcome == "interrupted"


async def test_a_run_a_newer_attempt_holds_or_that_ended_is_let_go() -> None:
    newer = await store_with(requested(), started(1), started(2))
    assert (await _after_conflict(newer, RUN, 1)).outcome == "abandoned"
    ended = await store_with(requested(), started(1), RunCompleted(run_id=RUN, at=4.0, output=1))
    assert (await _after_conflict(ended, RUN, 1)).outcome == "abandoned"
