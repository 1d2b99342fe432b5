"""Tether: durable human-in-the-loop tasks, event-sourced on NATS JetStream."""

from tether.app import Tether
from tether.client import RunEventView, RunInfo, RunRef
from tether.conditions import SleepCondition, UserEventCondition, WaitResult, or_
from tether.engine.expressions import InvalidExpressionError
from tether.errors import (
    NonDeterminismError,
    NonRetryableError,
    RunAlreadyFinishedError,
    RunCancelledError,
    RunError,
    RunFailedError,
    RunNotFoundError,
    RunTimeoutError,
    TetherError,
    WaitTimeoutError,
)
from tether.events_client import PushResult
from tether.runtime.context import ChildRunRef, DurableContext
from tether.task import DurableTask
from tether.version import __version__ as __version__

__all__ = [
    "ChildRunRef",
    "DurableContext",
    "DurableTask",
    "InvalidExpressionError",
    "NonDeterminismError",
    "NonRetryableError",
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
    "Tether",
    "TetherError",
    "UserEventCondition",
    "WaitResult",
    "WaitTimeoutError",
    "or_",
]
