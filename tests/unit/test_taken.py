"""When the chain alone vouches that a run took its ending (tether.engine.taken), checked
against the state machine's own fold."""

from __future__ import annotations

from typing import Any

from tether.engine import events as ev
from tether.engine import wire
from tether.engine.state import fold
from tether.engine.subjects import Names
from tether.engine.taken import RunnableChains, TakenByRun, vouched_ending

NAMES = Names("tether")
RUN = "r1"


def guard(previous: int, subject: str | None = None) -> dict[str, str]:
    return {
        wire.EXPECTED_LAST_SUBJECT_SEQ: str(previous),
        wire.EXPECTED_LAST_SUBJECT_SEQ_SUBJECT: subject or NAMES.run_filter(RUN),
    }


def completed(run_id: str = RUN) -> ev.RunCompleted:
    return ev.RunCompleted(run_id=run_id, at=2.0, output={"ok": True})


def failed() -> ev.RunFailed:
    return ev.RunFailed(run_id=RUN, at=2.0, error=ev.ErrorInfo(type="E", message="m"))


def vouched(event: ev.RunEvent, headers: dict[str, str], taken_seq: int | None = 5) -> bool:
    return vouched_ending(event, headers, NAMES, RUN, taken_seq)


def test_an_ending_right_after_the_taken_resolution_is_vouched_for() -> None:
    assert vouched(completed(), guard(5))
    assert vouched(failed(), guard(5))


def test_anything_else_is_left_to_a_read() -> None:
    assert not vouched(completed(), guard(5), taken_seq=None)  # no resolution known taken
    assert not vouched(completed(), guard(4))  # written after another event
    assert not vouched(completed(), {})  # written without the run's guard
    narrow = NAMES.run_subject(RUN, "completed")
    assert not vouched(completed(), guard(5, subject=narrow))  # guarded on one subject only
    assert not vouched(completed("r2"), guard(5))  # another run's body
    timed_out = ev.RunTimedOut(run_id=RUN, at=2.0, reason="late")
    assert not vouched(timed_out, guard(5))  # not an attempt's write


def test_the_fold_takes_what_is_vouched_for() -> None:
    """A queued run, as right after a resolution it took, takes the ending vouched for."""
    wait: dict[str, Any] = {"run_id": RUN, "wait_id": "w1", "task": "t", "position": 0}
    log: list[tuple[int, ev.RunEvent]] = [
        (1, ev.RunRequested(run_id=RUN, at=0.0, task="t", input={}, execution_timeout_s=60)),
        (2, ev.AttemptStarted(run_id=RUN, at=0.5, attempt=1, worker="w")),
        (
            3,
            ev.WaitStarted(
                **wait, at=1.0, event_key="k", expression=None, events_position=0, timeout_at=None
            ),
        ),
        (
            4,
            ev.WaitSatisfied(
                run_id=RUN,
                at=1.5,
                wait_id="w1",
                wait_seq=3,
                event_key="k",
                event_seq=9,
                event_id=None,
                payload={},
            ),
        ),
    ]
    assert fold(RUN, log).status == "queued"
    for ending in (completed(), failed()):
        assert vouched(ending, guard(4), taken_seq=4)
        state = fold(RUN, [*log, (5, ending)])
        assert state.is_terminal and not state.ignored


def test_taken_by_run_keeps_the_latest_and_forgets_the_oldest() -> None:
    taken = TakenByRun(most=2)
    taken.remember("a", 1)
    taken.remember("b", 2)
    taken.remember("a", 3)  # a again: the newest
    taken.remember("c", 4)  # b is the oldest now
    assert taken.get("b") is None and taken.took("a", 3) and not taken.took("a", 1)
    assert taken.forget("c") == 4 and taken.forget("c") is None and len(taken) == 1


def chain_of(*events: tuple[int, str, int | None]) -> list[bool]:
    """Follow (seq, token, guarded predecessor) events from a request stored at 1."""
    chains = RunnableChains(NAMES)
    chains.anchor(RUN, 1)
    return [
        chains.follow(RUN, token, seq, {} if previous is None else guard(previous))
        for seq, token, previous in events
    ]


def test_a_chain_from_the_request_shows_the_run_runnable_up_to_its_wait() -> None:
    assert chain_of((2, "started", 1), (3, "step", 2), (4, "wait_started", 3)) == [True] * 3


def test_a_chain_stops_where_the_run_may_no_longer_be_runnable() -> None:
    # a wait ends it: an ending written after it is not known taken (the run is waiting)
    assert chain_of((2, "started", 1), (3, "wait_started", 2), (4, "completed", 3)) == [
        True,
        True,
        False,
    ]
    # an event in between that the chain did not see, or one written without the guard
    assert chain_of((2, "started", 1), (4, "completed", 3)) == [True, False]
    assert chain_of((2, "started", None), (3, "completed", 2)) == [False, False]
    # an event that may end or suspend the run, whatever its body
    assert chain_of((2, "task_cancelled", 1), (3, "completed", 2)) == [True, False]
    assert chain_of((2, "wait_satisfied_in_attempt", 1), (3, "completed", 2)) == [True, False]
