"""What a workflow run does next, decided from its graph and its log alone (pure: no I/O,
the caller passes the time in, and the events an event condition found, when it had to look).

A workflow run is one run with one log. Each task's end is a ``run.task`` event; a task
waiting on its ``wait_for`` is a wait of the run labelled ``task:<name>``. From these,
``decide_task`` says of one task: still blocked by its parents, skip it, cancel the run,
fail it, run it, wait for its conditions, or first look for events its ``skip_if`` or
``cancel_if`` name. ``task_statuses`` gives every task's status for readers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from tether.engine.events import ConditionSpec
from tether.engine.expressions import (
    ExpressionEvaluationError,
    InvalidExpressionError,
    compile_program,
)
from tether.engine.run_binding import bind_run
from tether.engine.state import RunState, WaitRecord
from tether.engine.workflow_graph import (
    CANCEL_KEY_PREFIX,
    SKIP_KEY_PREFIX,
    Clauses,
    GraphCondition,
    GraphTask,
    gate_key,
    tasks_of_wait,
)

TaskStatus = Literal["pending", "waiting", "running", "completed", "skipped", "failed", "cancelled"]
Action = Literal["blocked", "done", "skip", "cancel", "fail", "run", "wait", "check_events"]
SKIPPED_OUTPUT: dict[str, Any] = {"skipped": True}


@dataclass(frozen=True, slots=True)
class TaskDecision:
    task: str
    action: Action
    reason: str = ""
    # run: the wait_for conditions that fired, in order, and their events' payloads
    fired: list[str] = field(default_factory=list)
    payloads: dict[str, dict[str, Any]] = field(default_factory=dict)
    # wait: the conditions to wait on; check_events: the event conditions to look up
    clauses: list[list[ConditionSpec]] = field(default_factory=list)
    lookups: dict[str, GraphCondition] = field(default_factory=dict)


def condition_facts(state: RunState, task: str) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """The keys of the task's conditions that fired in its waits, in order, and payloads."""
    fired: list[str] = []
    payloads: dict[str, dict[str, Any]] = {}
    for record in state.records:
        if not isinstance(record, WaitRecord) or record.outcome != "satisfied":
            continue
        gates = tasks_of_wait(record.label)
        if task not in gates:
            continue
        own = _own_keys(task, shared=len(gates) > 1)
        fired.extend(k for k in (own(key) for key in record.fired) if k and k not in fired)
        payloads.update({k: p for key, p in record.payloads.items() if (k := own(key))})
    return fired, payloads


def _own_keys(task: str, *, shared: bool) -> Callable[[str], str | None]:
    """A gate's own condition key from a key of its wait (None: another gate's)."""
    prefix = gate_key(task, "")

    def own(key: str) -> str | None:
        if not shared:
            return key
        return key[len(prefix) :] if key.startswith(prefix) else None

    return own


def parents_done_at(state: RunState, node: GraphTask) -> float:
    """When the task's last parent finished (the run's request for a root): its sleeps
    count from here."""
    ends = [state.tasks[p].at for p in node.parents if p in state.tasks]
    return max(ends, default=state.requested_at)


def _output_of(state: RunState, task: str) -> Any:
    outcome = state.tasks.get(task)
    if outcome is None or outcome.status == "skipped":
        return SKIPPED_OUTPUT
    return outcome.output


class _Evaluator:
    """Truth of one task's conditions: parents' outputs by CEL, events by what fired in its
    waits or what a lookup found, sleeps by the clock."""

    def __init__(
        self,
        state: RunState,
        node: GraphTask,
        now: float,
        fired: list[str],
        seen: Mapping[str, bool],
    ) -> None:
        self.state, self.node, self.now = state, node, now
        self.fired, self.seen = fired, seen
        self.start = parents_done_at(state, node)
        self.missing: dict[str, GraphCondition] = {}  # event conditions still to look up

    def holds(self, condition: GraphCondition, cid: str, key: str) -> bool:
        if condition.kind == "parent":
            return self._parent_holds(condition)
        if condition.kind == "sleep":
            return key in self.fired or self.now >= self.start + (condition.duration_s or 0.0)
        if key in self.fired or self.seen.get(cid, False):
            return True
        if cid not in self.seen and not self.node.wait_for:
            self.missing[cid] = condition  # no wait watches it: look in the events stream
        return False

    def _parent_holds(self, condition: GraphCondition) -> bool:
        variables = {
            "output": _output_of(self.state, str(condition.parent)),
            "run": {"id": self.state.run_id, "input": self.state.input},
        }
        return compile_program(condition.expression or "").matches_with(variables)

    def all_hold(self, clauses: Clauses, prefix: str, tag: str) -> bool:
        """Every clause holds (and there is one): the CNF of skip_if or cancel_if."""
        results = [
            any(
                self.holds(c, f"{tag}{i}.{j}", f"{prefix}{tag}{i}.{j}")
                for j, c in enumerate(clause)
            )
            for i, clause in enumerate(clauses)
        ]
        return bool(results) and all(results)


def decide_task(
    state: RunState, node: GraphTask, now: float, seen: Mapping[str, bool] | None = None
) -> TaskDecision:
    """What ``node`` does next. ``seen`` maps the ids of event conditions a
    ``check_events`` decision asked for to whether an event satisfied them."""
    name = node.name
    outcome = state.tasks.get(name)
    if outcome is not None and outcome.finished:
        return TaskDecision(name, "done")
    parents = [state.tasks.get(p) for p in node.parents]
    if any(p is None or not p.finished for p in parents):
        return TaskDecision(name, "blocked")
    if parents and all(p is not None and p.status == "skipped" for p in parents):
        return TaskDecision(name, "skip", "every parent was skipped")
    fired, payloads = condition_facts(state, name)
    evaluator = _Evaluator(state, node, now, fired, seen or {})
    try:
        if evaluator.all_hold(node.cancel_if, CANCEL_KEY_PREFIX, "x"):
            return TaskDecision(name, "cancel", "its cancel_if condition held")
        skip = evaluator.all_hold(node.skip_if, SKIP_KEY_PREFIX, "s")
    except (ExpressionEvaluationError, InvalidExpressionError) as exc:
        return TaskDecision(name, "fail", f"a condition of task {name!r} failed: {exc}")
    if evaluator.missing:
        return TaskDecision(name, "check_events", lookups=evaluator.missing)
    if skip:
        return TaskDecision(name, "skip", "its skip_if condition held")
    waited = _unsatisfied(node.wait_for, fired)
    if not waited:
        keys = {c.key for clause in node.wait_for for c in clause}
        ran = [key for key in fired if key in keys]
        return TaskDecision(
            name, "run", fired=ran, payloads={k: payloads[k] for k in ran if k in payloads}
        )
    try:
        clauses = _wait_clauses(state, node, waited, fired, evaluator.start)
    except InvalidExpressionError as exc:
        return TaskDecision(name, "fail", f"a condition of task {name!r} is invalid: {exc}")
    return TaskDecision(name, "wait", clauses=clauses)


def _unsatisfied(wait_for: Clauses, fired: list[str]) -> list[int]:
    return [i for i, clause in enumerate(wait_for) if not any(c.key in fired for c in clause)]


def _wait_clauses(
    state: RunState, node: GraphTask, waited: list[int], fired: list[str], start: float
) -> list[list[ConditionSpec]]:
    """The wait's clauses: the wait_for clauses not yet satisfied, and, as decisive
    alternatives of the first, the skip_if and cancel_if events and sleeps not yet fired."""

    def spec(cid: str, key: str, condition: GraphCondition, decisive: bool) -> ConditionSpec:
        if condition.kind == "sleep":
            due = start + (condition.duration_s or 0.0)
            return ConditionSpec(id=cid, key=key, kind="sleep", due_at=due, decisive=decisive)
        expression = bind_run(condition.expression, state.run_id, state.input)
        return ConditionSpec(
            id=cid,
            key=key,
            kind="event",
            event_key=condition.event_key,
            expression=expression,
            decisive=decisive,
        )

    clauses = [
        [spec(f"c{i}.{j}", c.key, c, False) for j, c in enumerate(node.wait_for[i])] for i in waited
    ]
    for prefix, tag, conditions in (
        (CANCEL_KEY_PREFIX, "x", node.cancel_if),
        (SKIP_KEY_PREFIX, "s", node.skip_if),
    ):
        for i, clause in enumerate(conditions):
            for j, condition in enumerate(clause):
                key = f"{prefix}{tag}{i}.{j}"
                if condition.kind != "parent" and key not in fired:
                    clauses[0].append(spec(f"{tag}{i}.{j}", key, condition, True))
    return clauses


def task_statuses(state: RunState) -> dict[str, TaskStatus]:
    """Every task's status in a workflow run, as readers show it."""
    graph = state.workflow
    if graph is None:
        return {}
    waiting_on: list[str] = []
    open_wait = state.open_wait()
    if state.status == "waiting" and open_wait is not None:
        owner = open_wait.owner
        waiting_on = [owner] if owner else tasks_of_wait(open_wait.label)
    statuses: dict[str, TaskStatus] = {}
    for node in graph.tasks:
        outcome = state.tasks.get(node.name)
        if outcome is not None and outcome.finished:
            statuses[node.name] = outcome.status  # type: ignore[assignment]
        elif state.is_terminal:
            statuses[node.name] = "cancelled"
        elif node.name in waiting_on:
            statuses[node.name] = "waiting"
        elif all(p in state.tasks and state.tasks[p].finished for p in node.parents):
            fired, _ = condition_facts(state, node.name)
            if _unsatisfied(node.wait_for, fired):
                statuses[node.name] = "waiting"
            else:
                statuses[node.name] = "running" if state.status == "running" else "pending"
        else:
            statuses[node.name] = "pending"
    return statuses
