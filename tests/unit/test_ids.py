"""Every deterministic identity, pinned: changing a formula changes the wire (stored keys,
dedupe ids and subjects of runs already in a namespace)."""

from __future__ import annotations

import pytest

from tether.engine import ids
from tether.engine.commands import CommandMessage
from tether.engine.subjects import Names


def test_a_runs_partition_is_a_stable_hash_of_its_id() -> None:
    assert ids.partition_of("run-1", 32) == 3
    assert ids.partition_of("run-1", 7) == 2
    assert ids.partition_of("order-4711", 32) == 15
    spread = {ids.partition_of(f"r{i}", 32) for i in range(1000)}
    assert spread == set(range(32))


@pytest.mark.parametrize(
    ("made", "expected"),
    [
        (ids.run_deadline_key(3, "r1"), "p3.r1.run"),
        (ids.schedule_deadline_key(3, "r1"), "p3.r1.sched"),
        (ids.retry_deadline_key(3, "r1"), "p3.r1.retry"),
        (ids.wait_deadline_key(3, "r1", 2), "p3.r1.w2"),
        (ids.sleep_deadline_key(3, "r1", 2, "c0.1"), "p3.r1.w2.c0.1"),
        (ids.dispatch_msg_id("r1", 9), "r1:9"),
        (ids.run_ended_msg_id("r1"), "run-ended:r1"),
        (ids.rejection_msg_id(12), "rejected:12"),
        (ids.resume_msg_id("r1:2", 9, "c0.0"), "resume:r1:2:9:c0.0"),
        (ids.expire_wait_msg_id("r1:2", 9), "expire:r1:2:9"),
        (ids.retry_msg_id("r1", 9), "retry:r1:9"),
        (ids.run_command_msg_id("cancel", "r1"), "cancel:r1"),
    ],
)
def test_identity_formulas(made: str, expected: str) -> None:
    assert made == expected


def test_deadline_keys_name_their_partition() -> None:
    assert ids.deadline_partition(ids.sleep_deadline_key(17, "r1", 2, "c0.1")) == 17
    assert ids.deadline_partition("r1.run") is None
    assert ids.wait_position("order-1:12") == 12


def test_subjects_carry_the_partition() -> None:
    names = Names("tether", 32)
    assert names.run_subject("run-1", "requested") == "tether.runs.run-1.requested.3"
    assert names.run_filter("run-1") == "tether.runs.run-1.>"
    assert names.runs_token_filter("wait_started") == "tether.runs.*.wait_started.*"
    assert names.partition_runs(5) == "tether.runs.*.*.5"
    assert names.command_subject("resume", "run-1") == "tether.cmd.3.resume.run-1"
    assert names.engine_consumer(2) == "TETHER_ENGINE_P2"
    command = CommandMessage(kind="expire_run", run_id="run-1")
    assert command.msg_id() == "expire_run:run-1"


def test_partition_counts_are_bounded() -> None:
    with pytest.raises(ValueError, match="1 to 1024"):
        Names("tether", 0)
