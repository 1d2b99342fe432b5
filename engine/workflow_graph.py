"""A workflow's graph as each of its runs stores it in its request: the tasks, their parents
and their conditions, as data. The engine, the API and the dashboard read a run's tasks from
it without the workflow's code; the worker's driver decides from it what runs next (see
``tether.engine.workflow_decisions``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# A gate's wait is labelled with its task's name behind this prefix, which tells a workflow
# task's wait from a durable task's ``wait_for`` label. Several gates ready together wait as
# one: "task:<a>|<b>", each condition's key then "<task>|<key>" ("|" is in no task name).
TASK_WAIT_PREFIX = "task:"
GATE_SEPARATOR = "|"
# The keys under which a task's skip_if and cancel_if conditions fire when they are
# watched during its wait (decisive conditions): "<prefix><condition id>".
SKIP_KEY_PREFIX = "tether:skip_if:"
CANCEL_KEY_PREFIX = "tether:cancel_if:"


class GraphCondition(BaseModel):
    """One condition of a task: an event on a key, a sleep counted from when the task's
    parents finished, or a CEL test of an upstream task's output."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["event", "sleep", "parent"]
    key: str  # what ctx.wait_result calls it (events, sleeps)
    event_key: str | None = None
    expression: str | None = None
    duration_s: float | None = None
    parent: str | None = None


# Conjunctive normal form, as for ``ctx.wait_for``: every clause needs one condition.
Clauses = list[list[GraphCondition]]


class GraphTask(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    parents: list[str] = Field(default_factory=list)
    wait_for: Clauses = Field(default_factory=list)
    skip_if: Clauses = Field(default_factory=list)
    cancel_if: Clauses = Field(default_factory=list)
    retries: int = 0
    execution_timeout_s: float | None = None


class WorkflowGraph(BaseModel):
    """The tasks in an order where every parent comes before its children."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    tasks: list[GraphTask]
    on_failure: str | None = None

    def task(self, name: str) -> GraphTask | None:
        return next((t for t in self.tasks if t.name == name), None)

    def downstream(self, name: str) -> list[str]:
        """Every task that depends on ``name``, directly or through others."""
        below: set[str] = {name}
        for task in self.tasks:  # parents come first, so one pass finds them all
            if any(parent in below for parent in task.parents):
                below.add(task.name)
        below.discard(name)
        return [t.name for t in self.tasks if t.name in below]


def wait_label(*tasks: str) -> str:
    return TASK_WAIT_PREFIX + GATE_SEPARATOR.join(tasks)


def tasks_of_wait(label: str | None) -> list[str]:
    """The gates a workflow wait belongs to (none for a durable task's wait)."""
    if label and label.startswith(TASK_WAIT_PREFIX):
        return label[len(TASK_WAIT_PREFIX) :].split(GATE_SEPARATOR)
    return []


def gate_key(task: str, key: str) -> str:
    """A condition's key in a wait shared by several gates."""
    return f"{task}{GATE_SEPARATOR}{key}"
