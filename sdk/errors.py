"""Errors users see. Suspension is not among them: it is a BaseException kept internal."""

from __future__ import annotations

from typing import Any


class TetherError(Exception):
    """Base class of every error Tether raises on purpose."""


class WaitTimeoutError(TetherError):
    """Raised inside a task when a wait's timeout passed before a matching event arrived."""

    def __init__(self, event_key: str, wait_id: str) -> None:
        super().__init__(f"no event on {event_key!r} matched wait {wait_id} before its timeout")
        self.event_key = event_key
        self.wait_id = wait_id


class NonRetryableError(TetherError):
    """Raise (or subclass) this in a task to fail the run at once, without retries."""


class NonDeterminismError(TetherError):
    """Replay met a different sequence of durable calls than the run's history records.
    ``position`` is the durable call's index in the run, ``recorded`` what the history holds
    there and ``found`` what the code asked for now, each as ``(kind, name)``."""

    def __init__(
        self, run_id: str, position: int, recorded: tuple[str, str], found: tuple[str, str]
    ) -> None:
        super().__init__(
            f"run {run_id}: durable call #{position} is {found[0]} {found[1]!r} now, but the "
            f"history recorded {recorded[0]} {recorded[1]!r}. Durable calls must happen in the "
            "same order on every replay; keep the old order for runs already in flight (or "
            "branch on a recorded value), or cancel them."
        )
        self.run_id = run_id
        self.position = position
        self.recorded = recorded
        self.found = found


class TaskSkippedError(TetherError, LookupError):
    """``ctx.task_output(parent)`` of a workflow task that was skipped: it has no output
    (check ``ctx.was_skipped(parent)`` first)."""

    def __init__(self, task: str) -> None:
        super().__init__(f"task {task!r} was skipped and has no output; check ctx.was_skipped")
        self.task = task


class RunNotFoundError(TetherError, LookupError):
    def __init__(self, run_id: str) -> None:
        super().__init__(f"no run with id {run_id!r}; check the id and the namespace")
        self.run_id = run_id


class RunAlreadyFinishedError(TetherError):
    """The run has already ended, so it cannot be cancelled (or changed) any more."""

    def __init__(self, run_id: str, status: str) -> None:
        super().__init__(
            f"run {run_id} has already ended (status: {status}); there is nothing to cancel"
        )
        self.run_id = run_id
        self.status = status


class RunError(TetherError):
    """A run ended without output. ``status`` and ``error_type`` say how."""

    def __init__(self, run_id: str, status: str, error: dict[str, Any] | None) -> None:
        error = error or {}
        self.run_id = run_id
        self.status = status
        self.error_type = str(error.get("type", "Error"))
        self.error_message = str(error.get("message", ""))
        super().__init__(f"run {run_id} {status}: {self.error_type}: {self.error_message}")


class RunFailedError(RunError):
    """The task raised (or replay found non-determinism); the run ended ``failed``."""


class RunTimeoutError(RunError):
    """The run's execution timeout passed; it ended ``timed_out``."""


class RunCancelledError(RunError):
    """The run was cancelled."""


def raise_for_outcome(run_id: str, status: str, output: Any, error: Any) -> Any:
    """The output of a completed run, else the RunError that matches its status."""
    if status == "completed":
        return output
    error_cls: type[RunError] = {
        "failed": RunFailedError,
        "timed_out": RunTimeoutError,
        "cancelled": RunCancelledError,
    }.get(status, RunFailedError)
    raise error_cls(run_id, status, error if isinstance(error, dict) else None)


class _TetherInternal(BaseException):
    """Base of the control flow Tether uses inside a running task. A BaseException, so a
    user's ``except Exception`` cannot swallow it; its message says what it is, in case one
    ever surfaces outside Tether's worker."""

    meaning = "internal control flow of a Tether worker"

    def __init__(self, detail: str = "") -> None:
        text = f"{type(self).__name__} ({self.meaning})"
        super().__init__(f"{text}: {detail}" if detail else text)


class _Suspend(_TetherInternal):
    meaning = (
        "Tether-internal: unwinds a task at a wait that is not resolved yet; the run resumes "
        "when it is. Do not catch BaseException around durable calls"
    )


class _Abandon(_TetherInternal):
    meaning = (
        "Tether-internal: another writer changed the run under this attempt (a cancel, a "
        "timeout, another worker), so the attempt stops without writing"
    )


class _Interrupted(_TetherInternal):
    """The attempt lost its connection to NATS in a durable call (the write may or may not
    have landed): the worker hands the dispatch back, and a later attempt replays from what
    was recorded instead of the run failing for an outage."""

    meaning = (
        "Tether-internal: NATS failed during a durable call; the run is handed back and "
        "replayed by a new attempt"
    )


class _Ended(_TetherInternal):
    """A workflow's driver wrote the run's outcome itself (a retry scheduled, the run
    failed or cancelled): the attempt ends with ``outcome`` and writes nothing more."""

    meaning = "Tether-internal: the workflow run's attempt ended after writing its outcome"

    def __init__(self, outcome: str = "failed") -> None:
        super().__init__(outcome)
        self.outcome = outcome
