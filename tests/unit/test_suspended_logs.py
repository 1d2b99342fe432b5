"""The kept logs of suspended runs: resumed only when they end right before the carried
resolution, and never more than their byte budget; a carried request is a whole log."""

from __future__ import annotations

from tether.engine import events as ev
from tether.runtime.suspended_logs import CarriedEvent, SuspendedLogs


def log_of(run_id: str) -> list[tuple[int, ev.RunEvent, dict[str, str]]]:
    requested = ev.RunRequested(
        run_id=run_id, at=1.0, task="t", input={"n": 1}, execution_timeout_s=60.0
    )
    return [(1, requested, {"traceparent": "00-a-b-01", "Nats-Msg-Id": "x"})]


def resolution(run_id: str, seq: int, previous: int) -> CarriedEvent:
    event = ev.WaitTimedOut(run_id=run_id, at=2.0, wait_id=f"{run_id}:1")
    subject = f"t.runs.{run_id}.wait_timed_out.0"
    return CarriedEvent(seq, previous, subject, ev.encode(event), {})


def test_a_kept_log_resumes_only_right_before_the_resolution() -> None:
    logs = SuspendedLogs()
    logs.keep("a", log_of("a"))
    logs.keep("b", log_of("b"))
    resumed = logs.log_for("a", resolution("a", 9, 1))
    assert resumed is not None
    assert [seq for seq, _, _ in resumed] == [1, 9]
    assert resumed[0][2] == {"traceparent": "00-a-b-01"}  # trace context only
    assert isinstance(resumed[1][1], ev.WaitTimedOut)
    assert logs.log_for("b", resolution("b", 9, 5)) is None  # the run moved on elsewhere
    assert logs.log_for("a", resolution("a", 9, 1)) is None  # a log is resumed once
    assert len(logs) == 0 and logs.bytes == 0 and logs.read_spared == 1


def test_a_carried_request_is_the_whole_log_of_a_new_run() -> None:
    logs = SuspendedLogs()
    [(_, requested, _)] = log_of("n")
    subject = "t.runs.n.requested.0"
    carried = CarriedEvent(4, 0, subject, ev.encode(requested), {"traceparent": "00-a-b-01"})
    assert logs.log_for("n", carried) == [(4, requested, {"traceparent": "00-a-b-01"})]
    assert logs.log_for("other", carried) is None  # a request of another run
    # a resolution that claims to come first, or a request that claims not to, is read
    assert logs.log_for("n", resolution("n", 9, 0)) is None
    assert logs.log_for("n", CarriedEvent(4, 3, subject, ev.encode(requested), {})) is None
    assert logs.read_spared == 1


def test_the_oldest_logs_go_first_beyond_the_byte_budget() -> None:
    logs = SuspendedLogs(max_bytes=1000)
    for n in range(10):
        logs.keep(f"r{n}", log_of(f"r{n}"))
    assert 0 < logs.bytes <= 1000
    assert logs.log_for("r0", resolution("r0", 9, 1)) is None  # forgotten
    assert logs.log_for("r9", resolution("r9", 9, 1)) is not None


def test_a_kept_log_comes_back_as_it_was_kept() -> None:
    """Every event of a kept log decodes to what was kept, text with newlines, quotes and
    any script included, with each event's sequence and trace context."""
    odd = {"text": 'line one\nline "two"\r\n\ttab', "emoji": "✓ ünïcode 🎉", "n": [1, 2.5, None]}
    events: list[tuple[int, ev.RunEvent, dict[str, str]]] = [
        *log_of("k"),
        (3, ev.AttemptStarted(run_id="k", at=2.0, attempt=1, worker="w\n1"), {}),
        (4, ev.StepRecorded(run_id="k", at=3.0, position=1, name="s\n", output=odd), {}),
        (6, ev.StepRecorded(run_id="k", at=4.0, position=2, name="t", output="\n"), {}),
    ]
    logs = SuspendedLogs()
    logs.keep("k", events)
    resumed = logs.log_for("k", resolution("k", 9, 6))
    assert resumed is not None
    assert [(seq, event) for seq, event, _ in resumed[:-1]] == [(s, e) for s, e, _ in events]
    assert [headers for _, _, headers in resumed[:-1]] == [{"traceparent": "00-a-b-01"}, {}, {}, {}]
