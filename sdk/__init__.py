"""Tether: durable human-in-the-loop tasks, event-sourced on NATS JetStream."""

from tether.app import Tether
from tether.client import PushResult, RunEventView, RunInfo, RunRef
from tether.context import DurableContext
from tether.errors import (
    NonDeterminismError,
    RunAlreadyFinishedError,
    RunCancelledError,
    RunError,
    RunFailedError,
    RunNotFoundError,
    RunTimeoutError,
    TetherError,
    WaitTimeoutError,
)
from tether.projections.cel_expressions import InvalidExpressionError
from tether.task import DurableTask

__all__ = [
    "DurableContext",
    "DurableTask",
    "InvalidExpressionError",
    "NonDeterminismError",
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
    "Tether",
    "TetherError",
    "WaitTimeoutError",
]
