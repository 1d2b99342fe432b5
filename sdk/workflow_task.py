"""One task of a workflow: its function, its place in the graph and how it retries."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from tether.durations import backoff_delay
from tether.engine.config import (
    DEFAULT_BACKOFF_FACTOR,
    DEFAULT_BACKOFF_INITIAL,
    DEFAULT_BACKOFF_MAX,
)
from tether.engine.workflow_graph import GraphTask
from tether.runtime.task_context import DurableTaskContext, TaskContext
from tether.task import input_model

WorkflowTaskFunction = Callable[[Any, TaskContext], Awaitable[Any]]
DurableWorkflowTaskFunction = Callable[[Any, DurableTaskContext], Awaitable[Any]]


class WorkflowTask:
    """One task of a workflow, made by ``@wf.task(...)``; pass it as a parent, or to
    ``ctx.task_output``."""

    def __init__(
        self,
        fn: WorkflowTaskFunction | DurableWorkflowTaskFunction,
        *,
        name: str,
        graph: GraphTask,
        description: str | None,
        backoff_initial: timedelta = DEFAULT_BACKOFF_INITIAL,
        backoff_factor: float = DEFAULT_BACKOFF_FACTOR,
        backoff_max: timedelta = DEFAULT_BACKOFF_MAX,
        durable: bool = False,
    ) -> None:
        self.fn: Callable[[Any, Any], Awaitable[Any]] = fn
        self.durable = durable  # given a DurableTaskContext: steps and waits of its own
        self.name = name
        self.graph = graph
        self.input_model = input_model(fn)
        self.backoff_initial = backoff_initial
        self.backoff_factor = backoff_factor
        self.backoff_max = backoff_max
        self.description = description

    def __repr__(self) -> str:
        return f"WorkflowTask({self.name!r})"

    def parse_input(self, raw: Any) -> Any:
        return raw if self.input_model is None else self.input_model.model_validate(raw)

    def retry_delay(self, failure: int) -> float:
        """Seconds before retry number ``failure`` (1-based): exponential, capped."""
        return backoff_delay(self.backoff_initial, self.backoff_factor, self.backoff_max, failure)
