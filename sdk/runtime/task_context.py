"""What a workflow task is given: its run, its wait's result and its parents' outputs.
``TaskContext`` for a plain task, ``DurableTaskContext`` for one declared with
``@wf.durable_task``, which also records steps and waits of its own."""

from __future__ import annotations

from typing import Any, Protocol

from tether.conditions import WaitResult
from tether.engine.workflow_graph import WorkflowGraph
from tether.errors import TaskSkippedError
from tether.runtime.context import DurableContext
from tether.runtime.session import Attempt


class _Task(Protocol):
    """What the context needs of its task (a ``WorkflowTask``)."""

    name: str

    def parse_input(self, raw: Any) -> Any: ...


def _name(task: Any) -> str:
    name = task if isinstance(task, str) else getattr(task, "name", None)
    if not isinstance(name, str):
        raise TypeError(f"name a workflow task or pass it, not {task!r}")
    return name


class _WorkflowRun:
    """The run as a workflow task sees it: the workflow's input and its upstream tasks."""

    def __init__(
        self,
        attempt: Attempt,
        graph: WorkflowGraph,
        task: _Task,
        wait_result: WaitResult,
        task_run_errors: dict[str, str] | None = None,
    ) -> None:
        self._session = attempt
        self._graph = graph
        self._task = task
        self.wait_result = wait_result
        """The result of the task's ``wait_for``: ``.fired`` and ``.payloads`` (empty when
        it has none)."""
        self.task_run_errors: dict[str, str] = dict(task_run_errors or {})
        """In ``on_failure``: each failed task's error, ``"<type>: <message>"``."""

    @property
    def run_id(self) -> str:
        return self._session.state.run_id

    @property
    def task_name(self) -> str:
        return self._task.name

    @property
    def workflow_name(self) -> str:
        return self._graph.name

    @property
    def workflow_input(self) -> Any:
        """The run's input, as this task's input parameter receives it."""
        return self._task.parse_input(self._session.state.input)

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self._session.state.metadata)

    @property
    def retry_count(self) -> int:
        """How many times this task failed and was retried before this try."""
        outcome = self._session.state.tasks.get(self._task.name)
        return outcome.failures if outcome is not None else 0

    def was_skipped(self, task: Any) -> bool:
        """Whether an upstream task was skipped (by ``skip_if``, or all its parents were)."""
        outcome = self._session.state.tasks.get(_name(task))
        return outcome is not None and outcome.status == "skipped"

    def task_output(self, task: Any) -> Any:
        """An upstream task's output; ``TaskSkippedError`` if it was skipped, ``KeyError``
        if it has not finished (it is not upstream of this task)."""
        name = _name(task)
        outcome = self._session.state.tasks.get(name)
        if outcome is None or not outcome.finished:
            raise KeyError(f"task {name!r} has no output yet: is it upstream of this task?")
        if outcome.status == "skipped":
            raise TaskSkippedError(name)
        return outcome.output


class TaskContext(_WorkflowRun):
    """Passed to every workflow task as ``ctx``."""


class DurableTaskContext(DurableContext, _WorkflowRun):
    """Passed to a ``@wf.durable_task`` as ``ctx``: a task of the workflow that may also
    ``ctx.step``, ``ctx.wait_for_event``, ``ctx.wait_for`` and ``ctx.sleep_for``, each
    recorded as its own and replayed exactly when the task runs again."""

    def __init__(
        self,
        attempt: Attempt,
        graph: WorkflowGraph,
        task: _Task,
        wait_result: WaitResult,
    ) -> None:
        DurableContext.__init__(self, attempt, owner=task.name)
        _WorkflowRun.__init__(self, attempt, graph, task, wait_result)

    @property
    def task_name(self) -> str:
        return self._task.name
