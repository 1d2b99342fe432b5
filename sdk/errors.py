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
    """Replay met a different sequence of durable calls than the run's history records."""


class RunNotFoundError(TetherError, LookupError):
    def __init__(self, run_id: str) -> None:
        super().__init__(f"no run with id {run_id!r}; check the id and the namespace")
        self.run_id = run_id


class RunAlreadyFinishedError(TetherError):
    """The run has already ended, so it cannot be cancelled (or changed) any more."""

    def __init__(self, run_id: str, status: str) -> None:
        super().__init__(f"run {run_id} already ended {status}; there is nothing to cancel")
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


class _Suspend(BaseException):
    """Unwinds a task function when it reaches an unresolved wait. BaseException so that a
    user's ``except Exception`` cannot swallow it."""


class _Abandon(BaseException):
    """Another writer changed the run under this attempt; stop without writing."""


class _Interrupted(BaseException):
    """Tether-internal: the attempt lost its connection to NATS in a durable call (the write
    may or may not have landed). It unwinds the task like a suspension, past any user
    ``except Exception``, and the worker hands the dispatch back, so a later attempt replays
    from what was recorded instead of the run failing for an outage. Seen outside Tether's
    worker it means an attempt was cut short; it is not an error in the task."""
