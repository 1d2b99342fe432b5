"""Workflows: a graph of tasks with fixed approval gates, declared with ``app.workflow``.

Each ``@wf.task`` names its ``parents`` and its conditions: ``wait_for`` (it runs once they
are satisfied), ``skip_if`` and ``cancel_if``. A run of the workflow is one run with one
log; the worker's driver (``tether.runtime.workflow_driver``) runs its tasks as their
parents finish and suspends the run, holding no slot, while a task waits on an event.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypedDict, Unpack, cast

from tether.client import ResultRef, RunRef, RunsClient
from tether.conditions import (
    AnyCondition,
    OrGroup,
    ParentCondition,
    SleepCondition,
    UserEventCondition,
)
from tether.durations import Duration, optional_timedelta, to_timedelta
from tether.engine import codec
from tether.engine.config import (
    DEFAULT_BACKOFF_FACTOR,
    DEFAULT_BACKOFF_INITIAL,
    DEFAULT_BACKOFF_MAX,
)
from tether.engine.expressions import validate
from tether.engine.subjects import check_token
from tether.engine.workflow_graph import Clauses, GraphCondition, GraphTask, WorkflowGraph
from tether.runtime.current import current_context
from tether.runtime.workflow_driver import WorkflowDriver
from tether.task import DurableTask
from tether.workflow_task import (
    DurableWorkflowTaskFunction,
    WorkflowTask,
    WorkflowTaskFunction,
)

if TYPE_CHECKING:
    from tether.runtime.context import DurableContext

ConditionList = Sequence[AnyCondition | OrGroup]


class TaskOptions(TypedDict, total=False):
    """The options of ``@wf.task`` (and ``@wf.durable_task``)."""

    name: str | None
    parents: Sequence[WorkflowTask]
    wait_for: ConditionList
    skip_if: ConditionList
    cancel_if: ConditionList
    execution_timeout: Duration | None
    retries: int
    backoff_initial: Duration
    backoff_factor: float
    backoff_max: Duration
    description: str | None


class Workflow:
    """A workflow declared with ``app.workflow(name=...)``."""

    def __init__(
        self,
        runs: RunsClient,
        *,
        name: str,
        execution_timeout: timedelta,
        schedule_timeout: timedelta | None = None,
    ) -> None:
        if execution_timeout.total_seconds() <= 0:
            raise ValueError(f"workflow {name!r}: execution_timeout must be positive")
        self._runs = runs
        self.name = check_token("workflow name", name)
        self.execution_timeout = execution_timeout
        self.schedule_timeout = schedule_timeout
        self.tasks: dict[str, WorkflowTask] = {}
        self.on_failure_task: WorkflowTask | None = None
        self._graph: WorkflowGraph | None = None
        # What workers run: one attempt drives the graph as far as it can go.
        self.runner: DurableTask[Any, Any] = DurableTask(
            runs,
            self._drive,
            name=self.name,
            execution_timeout=execution_timeout,
            schedule_timeout=schedule_timeout,
        )

    def __repr__(self) -> str:
        return f"Workflow({self.name!r})"

    async def _drive(self, raw_input: Any, ctx: DurableContext) -> Any:
        # the driver writes the run's end itself (its completion carries the last tasks)
        await WorkflowDriver(self.tasks, self.on_failure_task, ctx.session).drive()

    # -- declaring -----------------------------------------------------------------------------

    def task(
        self,
        *,
        name: str | None = None,
        parents: Sequence[WorkflowTask] = (),
        wait_for: ConditionList = (),
        skip_if: ConditionList = (),
        cancel_if: ConditionList = (),
        execution_timeout: Duration | None = None,
        retries: int = 0,
        backoff_initial: Duration = DEFAULT_BACKOFF_INITIAL,
        backoff_factor: float = DEFAULT_BACKOFF_FACTOR,
        backoff_max: Duration = DEFAULT_BACKOFF_MAX,
        description: str | None = None,
    ) -> Callable[[WorkflowTaskFunction], WorkflowTask]:
        """Declare a task. It runs once every parent has finished and its ``wait_for`` is
        satisfied (conditions ANDed, ``or_`` groups ORed, as in ``ctx.wait_for``); until then
        it holds no worker slot. ``skip_if`` satisfied: it does not run and its output is
        ``{"skipped": True}``; ``cancel_if`` satisfied: the run ends cancelled. A failure
        is retried ``retries`` times, then cancels what is downstream and fails the run.
        ``description`` is what the inbox shows while the task waits on an event."""
        timeout = optional_timedelta(execution_timeout, "execution_timeout")
        if timeout is not None and timeout.total_seconds() <= 0:
            raise ValueError("execution_timeout must be positive")
        if retries < 0:
            raise ValueError("retries must not be negative")
        first = to_timedelta(backoff_initial, "backoff_initial")
        most = to_timedelta(backoff_max, "backoff_max")

        def register(fn: WorkflowTaskFunction) -> WorkflowTask:
            task_name = check_token("task name", name or fn.__name__)
            where = f"workflow {self.name!r}, task {task_name!r}"
            if not inspect.iscoroutinefunction(fn):
                raise TypeError(f"{where}: a workflow task must be an async function")
            if task_name in self.tasks or (
                self.on_failure_task and self.on_failure_task.name == task_name
            ):
                raise ValueError(f"{where}: a task of that name is already declared")
            parent_names = []
            for parent in parents:
                if (
                    not isinstance(parent, WorkflowTask)
                    or self.tasks.get(parent.name) is not parent
                ):
                    raise ValueError(f"{where}: parent {parent!r} is not a task of this workflow")
                parent_names.append(parent.name)
            upstream = self._upstream(parent_names)
            graph = GraphTask(
                name=task_name,
                parents=parent_names,
                wait_for=_clauses(wait_for, where, "wait_for", upstream, parents_ok=False),
                skip_if=_clauses(skip_if, where, "skip_if", upstream),
                cancel_if=_clauses(cancel_if, where, "cancel_if", upstream),
                retries=retries,
                execution_timeout_s=timeout.total_seconds() if timeout else None,
            )
            task = WorkflowTask(
                fn,
                name=task_name,
                graph=graph,
                backoff_initial=first,
                backoff_factor=backoff_factor,
                backoff_max=most,
                description=description,
            )
            self.tasks[task_name] = task
            self._graph = None
            return task

        return register

    def durable_task(
        self, **options: Unpack[TaskOptions]
    ) -> Callable[[DurableWorkflowTaskFunction], WorkflowTask]:
        """Declare a task, as ``task`` does, that may also ``ctx.step``,
        ``ctx.wait_for_event``, ``ctx.wait_for`` and ``ctx.sleep_for`` (its ``ctx`` is a
        ``DurableTaskContext``): its waits suspend the run, holding no slot, and a retry or
        a resume replays what it recorded. It runs alone, not beside other tasks."""
        register = self.task(**options)

        def register_durable(fn: DurableWorkflowTaskFunction) -> WorkflowTask:
            task = register(cast(WorkflowTaskFunction, fn))
            task.durable = True
            return task

        return register_durable

    def on_failure(
        self, *, name: str = "on_failure"
    ) -> Callable[[WorkflowTaskFunction], WorkflowTask]:
        """Declare the task that runs when a task fails after its retries; it sees the
        errors in ``ctx.task_run_errors``. Its own failure is logged; the run ends failed."""

        def register(fn: WorkflowTaskFunction) -> WorkflowTask:
            if not inspect.iscoroutinefunction(fn):
                raise TypeError(f"workflow {self.name!r}: on_failure must be an async function")
            if self.on_failure_task is not None or name in self.tasks:
                raise ValueError(f"workflow {self.name!r}: on_failure is declared already")
            self.on_failure_task = WorkflowTask(
                fn,
                name=check_token("task name", name),
                graph=GraphTask(name=name),
                description=None,
            )
            self._graph = None
            return self.on_failure_task

        return register

    def _upstream(self, parents: list[str]) -> set[str]:
        found, todo = set(), list(parents)
        while todo:
            name = todo.pop()
            if name not in found:
                found.add(name)
                todo.extend(self.tasks[name].graph.parents)
        return found

    def workflow_graph(self) -> WorkflowGraph:
        return self.graph()

    def graph(self) -> WorkflowGraph:
        """The graph every run of this workflow stores with its request."""
        if not self.tasks:
            raise ValueError(f"workflow {self.name!r} has no tasks")
        if self._graph is None:
            self._graph = WorkflowGraph(
                name=self.name,
                tasks=[task.graph for task in self.tasks.values()],
                on_failure=self.on_failure_task.name if self.on_failure_task else None,
            )
        return self._graph

    # -- triggering (the TaskDefinition a RunsClient triggers) --------------------------------

    def encode_input(self, value: Any) -> Any:
        first = next(iter(self.tasks.values()), None)
        model = first.input_model if first is not None else None
        if model is not None and not isinstance(value, model):
            value = model.model_validate(value)  # fail at the caller, not in a task
        return codec.to_json_value(value)

    async def run_no_wait(
        self, input: Any, *, metadata: dict[str, Any] | None = None, run_id: str | None = None
    ) -> ResultRef:
        """Record a new run and return its reference; ``await ref.result()`` gives a dict
        of every task's output, keyed by task name (``{"skipped": True}`` for a skipped
        one). Called inside a durable task, this starts a child run: the spawn is recorded
        once and ``await ref.result()`` waits durably."""
        ctx = current_context.get()
        if ctx is not None:
            return await ctx.spawn(self, input, metadata)
        return await self._runs.trigger(self, input, metadata=metadata, run_id=run_id)

    async def run(
        self, input: Any, *, metadata: dict[str, Any] | None = None, timeout: Duration | None = None
    ) -> dict[str, Any]:
        """Trigger a run and wait for its tasks' outputs (raises RunFailedError,
        RunCancelledError, RunTimeoutError)."""
        ref = await self.run_no_wait(input, metadata=metadata)
        result: dict[str, Any] = await ref.result(timeout=timeout)
        return result

    def run_no_wait_sync(
        self, input: Any, *, metadata: dict[str, Any] | None = None, run_id: str | None = None
    ) -> RunRef:
        """``run_no_wait`` for synchronous code (a web view)."""
        trigger = self._runs.trigger(self, input, metadata=metadata, run_id=run_id)
        return self._runs.sync.run(trigger)

    def run_sync(
        self, input: Any, *, metadata: dict[str, Any] | None = None, timeout: Duration | None = None
    ) -> dict[str, Any]:
        """``run`` for synchronous code: blocks until the run ends."""
        return self._runs.sync.run(self.run(input, metadata=metadata, timeout=timeout))


def _clauses(
    items: ConditionList, where: str, what: str, upstream: set[str], *, parents_ok: bool = True
) -> Clauses:
    """Conditions as the graph stores them, checked: positional items ANDed, ``or_``
    groups ORed; CEL is parsed here so a typo fails where the task is declared."""
    if isinstance(items, AnyCondition | OrGroup):
        items = [items]  # a single condition instead of a list
    clauses: Clauses = []
    for item in items:
        group = item.conditions if isinstance(item, OrGroup) else (item,)
        clauses.append([_condition(c, where, what, upstream, parents_ok) for c in group])
    return clauses


def _condition(
    condition: object, where: str, what: str, upstream: set[str], parents_ok: bool
) -> GraphCondition:
    if isinstance(condition, UserEventCondition):
        if condition.lookback is not None:
            raise ValueError(
                f"{where}: {what} counts every event since the run was requested; "
                "lookback does not apply"
            )
        validate(condition.expression)
        return GraphCondition(
            kind="event",
            key=condition.result_key,
            event_key=condition.event_key,
            expression=(condition.expression or "").strip() or None,
        )
    if isinstance(condition, SleepCondition):
        return GraphCondition(
            kind="sleep", key=condition.result_key, duration_s=condition.duration.total_seconds()
        )
    if isinstance(condition, ParentCondition):
        if not parents_ok:
            raise TypeError(f"{where}: {what} waits on events and sleeps, not a ParentCondition")
        if condition.parent not in upstream:
            raise ValueError(
                f"{where}: ParentCondition on {condition.parent!r}, which is not upstream of "
                "the task (name one of its parents, or theirs)"
            )
        validate(condition.expression)
        return GraphCondition(
            kind="parent",
            key=condition.parent,
            parent=condition.parent,
            expression=condition.expression.strip(),
        )
    raise TypeError(f"{where}: {what} takes conditions or or_() groups, not {condition!r}")
