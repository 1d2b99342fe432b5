"""Tether: durable human-in-the-loop tasks, event-sourced on NATS JetStream."""

from tether.app import Tether
from tether.client import RunEventView, RunInfo, RunRef, TaskInfo
from tether.conditions import (
    ParentCondition,
    SleepCondition,
    UserEventCondition,
    WaitResult,
    or_,
)
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
    TaskSkippedError,
    TetherError,
    WaitTimeoutError,
)
from tether.events_client import PushResult
from tether.runtime.context import ChildRunRef, DurableContext
from tether.runtime.task_context import DurableTaskContext, TaskContext
from tether.task import DurableTask
from tether.version import __version__ as __version__
from tether.workflow import Workflow
from tether.workflow_task import WorkflowTask

__all__ = [
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
]
