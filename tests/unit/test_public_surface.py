"""The public surface: exactly these names are exported, the contract's imports work, and
the errors users see carry what they need."""

from __future__ import annotations

import pytest

import tether
from tether.errors import NonDeterminismError, _Abandon, _Ended, _Interrupted, _Suspend

EXPORTS = {
    "ChildRunRef",
    "DurableContext",
    "DurableTask",
    "DurableTaskContext",
    "InvalidExpressionError",
    "NonDeterminismError",
    "NonRetryableError",
    "ParentCondition",
    "PushResult",
    "RunAlreadyFinishedError",
    "RunCancelledError",
    "RunError",
    "RunEventView",
    "RunFailedError",
    "RunInfo",
    "RunNotFoundError",
    "RunRef",
    "RunTimeoutError",
    "SleepCondition",
    "TaskContext",
    "TaskInfo",
    "TaskSkippedError",
    "Tether",
    "TetherError",
    "UserEventCondition",
    "WaitResult",
    "WaitTimeoutError",
    "Workflow",
    "WorkflowTask",
    "or_",
}


def test_exports_are_exactly_the_public_names() -> None:
    assert set(tether.__all__) == EXPORTS
    for name in tether.__all__:
        assert getattr(tether, name) is not None, name


def test_non_determinism_names_the_position_and_both_calls() -> None:
    error = NonDeterminismError("r1", 3, ("step", "charge"), ("wait", "approval:decision"))
    assert (error.position, error.recorded, error.found) == (
        3,
        ("step", "charge"),
        ("wait", "approval:decision"),
    )
    assert "#3 is wait 'approval:decision' now" in str(error)
    assert "recorded step 'charge'" in str(error)


@pytest.mark.parametrize("internal", [_Suspend, _Abandon, _Interrupted, _Ended])
def test_internal_control_flow_says_it_is_internal_and_escapes_except_exception(
    internal: type[BaseException],
) -> None:
    assert not issubclass(internal, Exception)
    assert "Tether-internal" in str(internal())
