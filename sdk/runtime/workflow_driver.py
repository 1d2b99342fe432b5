"""Driving one attempt of a workflow run: run the tasks whose parents have finished and
whose conditions hold, record each task's end, and suspend the run while a task waits on
an event. What to do next is decided from the log by ``tether.engine.workflow_decisions``;
this module does the I/O: running task functions, looking up events, writing events."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from tether.conditions import WaitResult
from tether.engine import codec
from tether.engine.events import (
    AttemptFailed,
    ConditionSpec,
    ErrorInfo,
    RunCompleted,
    RunFailed,
    WaitStarted,
)
from tether.engine.expressions import InvalidExpressionError, satisfies
from tether.engine.run_binding import bind_run
from tether.engine.state import WaitRecord
from tether.engine.workflow_decisions import SKIPPED_OUTPUT, TaskDecision, decide_task
from tether.engine.workflow_graph import (
    GraphCondition,
    WorkflowGraph,
    gate_key,
    tasks_of_wait,
    wait_label,
)
from tether.errors import NonRetryableError, _Abandon, _Ended, _Interrupted, _Suspend
from tether.runtime.current import current_context
from tether.runtime.executor import error_info
from tether.runtime.session import Attempt
from tether.runtime.task_context import DurableTaskContext, TaskContext
from tether.runtime.task_ends import TaskEnds
from tether.runtime.wait_helpers import trace_wait
from tether.workflow_task import WorkflowTask

log = logging.getLogger("tether.worker")

# Events pushed this long before the run's request (by the request's own clock) are read
# too when looking events up, against clock skew; the events stream's position decides.
LOOKUP_SKEW_S = 60.0
CONTROL_FLOW = (_Suspend, _Ended, _Abandon, _Interrupted, asyncio.CancelledError)


@dataclass(frozen=True, slots=True)
class _Ran:
    task: str
    output: Any = None
    error: BaseException | None = None


class WorkflowDriver:
    def __init__(
        self,
        tasks: Mapping[str, WorkflowTask],
        on_failure: WorkflowTask | None,
        attempt: Attempt,
    ) -> None:
        self._tasks = tasks
        self._on_failure = on_failure
        self._attempt = attempt
        self._state = attempt.state
        graph = self._state.workflow
        if graph is None:
            raise NonRetryableError(
                f"run {self._state.run_id} of {self._state.task!r} was not requested as a "
                "workflow run (its request holds no graph); trigger it with wf.run_no_wait"
            )
        self._graph: WorkflowGraph = graph
        self._seen: dict[str, dict[str, bool]] = {}  # task -> event condition id -> found
        self._ends = TaskEnds(attempt)  # writes, and the task ends they carry

    def _now(self) -> float:
        return self._attempt.clock()

    async def drive(self) -> NoReturn:
        """Go as far as the run can: complete it once every task has finished (``_Ended``),
        or suspend it (``_Suspend``) when what is left waits on events; ``_Ended`` too when
        the run failed, will be cancelled or will retry a task."""
        state = self._state
        while True:
            failed = next(
                (
                    name
                    for name, outcome in state.tasks.items()
                    if outcome.status == "failed" and name != self._graph.on_failure
                ),
                None,
            )
            if failed is not None:
                await self._fail(failed)
            decisions = [
                decide_task(state, node, self._now(), self._seen.get(node.name))
                for node in self._graph.tasks
            ]
            if await self._settle(decisions):
                continue
            runs = [d for d in decisions if d.action == "run"]
            if runs:
                await self._run_all(self._side_by_side(runs))
                continue
            waits = [d for d in decisions if d.action == "wait"]
            if waits:
                await self._wait(waits)
                raise _Suspend()
            await self._complete()

    async def _settle(self, decisions: list[TaskDecision]) -> bool:
        """Carry out the decisions that need no task function; True if any changed the run."""
        changed = False
        for decision in decisions:
            name, action = decision.task, decision.action
            if action == "cancel":
                await self._cancel(decision)
            elif action == "skip":
                await self._ends.record(
                    name, "skipped", output=SKIPPED_OUTPUT, reason=decision.reason
                )
                changed = True
            elif action == "fail":
                error = ErrorInfo(type="ConditionError", message=decision.reason)
                await self._ends.record(name, "failed", error=error)
                changed = True
            elif action == "check_events":
                self._seen[name] = {**self._seen.get(name, {}), **await self._look_up(decision)}
                changed = True
        return changed

    async def _complete(self) -> NoReturn:
        state = self._state
        output = {
            node.name: SKIPPED_OUTPUT
            if state.tasks[node.name].status == "skipped"
            else state.tasks[node.name].output
            for node in self._graph.tasks
        }
        await self._ends.append(
            RunCompleted(
                run_id=state.run_id,
                at=self._now(),
                output=output,
                parent_run_id=state.parent_run_id,
                tasks=self._ends.carried(),
            )
        )
        raise _Ended("completed")

    # -- looking up events for skip_if / cancel_if ------------------------------------------

    async def _look_up(self, decision: TaskDecision) -> dict[str, bool]:
        """Did an event stored since the run was requested satisfy each condition?"""
        state, attempt = self._state, self._attempt
        until = await attempt.events_position()
        found: dict[str, bool] = {}
        for cid, condition in decision.lookups.items():
            found[cid] = await self._event_seen(condition, until)
        log.debug("looked up events", extra={"run_id": state.run_id, "found": found})
        return found

    async def _event_seen(self, condition: GraphCondition, until: int) -> bool:
        state = self._state
        try:
            expression = bind_run(condition.expression, state.run_id, state.input)
        except InvalidExpressionError:
            return False
        since = state.requested_at - LOOKUP_SKEW_S
        events = await self._attempt.read_events(str(condition.event_key), since, until)
        return any(
            seq > (state.events_position or 0) and satisfies(expression, payload)
            for seq, payload, _ in events
        )

    # -- waiting ------------------------------------------------------------------------------

    def _gates(self, waits: list[TaskDecision]) -> tuple[list[str], list[list[ConditionSpec]]]:
        """The gates that wait now, and their wait's clauses. Gates of one clause each
        (any one condition opens them) wait as one wait of one clause, so each resumes the
        run as soon as it is answered; a gate that needs several conditions waits alone."""
        if len(waits) == 1 or any(len(d.clauses) != 1 for d in waits):
            return [waits[0].task], waits[0].clauses
        clause = [
            spec.model_copy(update={"id": f"g{n}.{spec.id}", "key": gate_key(d.task, spec.key)})
            for n, d in enumerate(waits)
            for spec in d.clauses[0]
        ]
        return [d.task for d in waits], [clause]

    async def _wait(self, waits: list[TaskDecision]) -> None:
        state, attempt = self._state, self._attempt
        position = len(state.records)
        gates, clauses = self._gates(waits)
        first_event = next((s for clause in clauses for s in clause if s.kind == "event"), None)
        descriptions = [task.description for t in gates if (task := self._tasks.get(t))]
        events_position = state.events_position
        if events_position is None:  # (only a request written without one)
            events_position = await attempt.events_position()
        await self._ends.append(
            WaitStarted(
                run_id=state.run_id,
                at=self._now(),
                position=position,
                wait_id=f"{state.run_id}:{position}",
                task=state.task,
                event_key=first_event.event_key if first_event else None,
                expression=first_event.expression if first_event else None,
                events_position=events_position,
                timeout_at=None,
                kind="conditions",
                label=wait_label(*gates),
                clauses=clauses,
                description="; ".join(d for d in descriptions if d)
                or f"{self._graph.name}: {', '.join(gates)}",
                details={"workflow": self._graph.name, "tasks": gates},
                tasks=self._ends.carried(),
            )
        )

    # -- running tasks ------------------------------------------------------------------------

    def _side_by_side(self, runs: list[TaskDecision]) -> list[TaskDecision]:
        """The ready tasks to run at once: every plain one; a durable task runs alone, once
        the plain ones are done, since its wait suspends the whole run."""
        plain = [d for d in runs if not self._durable(d.task)]
        return plain or runs[:1]

    def _durable(self, name: str) -> bool:
        task = self._tasks.get(name)
        return task is not None and task.durable

    async def _run_all(self, decisions: list[TaskDecision]) -> None:
        """Run the ready tasks side by side; record their ends in the graph's order."""
        # a durable task's wait suspends the run and carries nothing: write every end first
        await self._ends.write_unwritten(skips=self._durable(decisions[0].task))
        ran = await asyncio.gather(*(self._run_one(d) for d in decisions))
        retry_at: float | None = None
        last_error: ErrorInfo | None = None
        for result in ran:
            if result.error is None:
                try:
                    output = codec.to_json_value(result.output)
                except codec.EncodingError as exc:
                    await self._ends.record(result.task, "failed", error=error_info(exc))
                    continue
                await self._ends.record(result.task, "completed", output=output)
                continue
            due = self._retry_at(result.task, result.error)
            error = error_info(result.error)
            if due is None:
                await self._ends.record(result.task, "failed", error=error)
                log.error(
                    f"run {self._state.run_id}: task {result.task!r} of {self._graph.name!r} "
                    f"failed: {error.type}: {error.message}",
                    exc_info=result.error,
                    extra={"run_id": self._state.run_id, "task": result.task},
                )
                continue
            await self._ends.record(result.task, "retrying", error=error)
            log.warning(
                f"run {self._state.run_id}: task {result.task!r} failed with {error.type}: "
                f"{error.message}; retrying",
                exc_info=result.error,
                extra={"run_id": self._state.run_id, "task": result.task},
            )
            retry_at = due if retry_at is None else min(retry_at, due)
            last_error = error
        if retry_at is not None and last_error is not None:
            if any(o.status == "failed" for o in self._state.tasks.values()):
                return  # a task failed for good: the run fails, nothing is retried
            await self._ends.append(
                AttemptFailed(
                    run_id=self._state.run_id,
                    at=self._now(),
                    attempt=self._attempt.number,
                    error=last_error,
                    retry_at=retry_at,
                )
            )
            raise _Ended("retrying")

    def _retry_at(self, name: str, error: BaseException) -> float | None:
        """When a failed task runs again, or None when it has failed for good."""
        node, task = self._graph.task(name), self._tasks.get(name)
        if node is None or task is None or isinstance(error, NonRetryableError):
            return None
        outcome = self._state.tasks.get(name)
        failures = outcome.failures if outcome is not None else 0
        if failures >= node.retries:
            return None
        due = self._now() + task.retry_delay(failures + 1)
        return due if due < self._state.deadline else None

    async def _run_one(self, decision: TaskDecision) -> _Ran:
        name = decision.task
        task = self._tasks.get(name)
        if task is None:
            error = NonRetryableError(
                f"workflow {self._graph.name!r} has no task {name!r} in this worker's code; "
                "deploy the code the run was started with"
            )
            return _Ran(name, error=error)
        result = WaitResult(fired=list(decision.fired), payloads=dict(decision.payloads))
        ctx: TaskContext | DurableTaskContext
        if task.durable:
            ctx = DurableTaskContext(self._attempt, self._graph, task, result)
        else:
            ctx = TaskContext(self._attempt, self._graph, task, result)
        for record in self._state.records:  # the gate's waits, in the run's trace
            if isinstance(record, WaitRecord) and name in tasks_of_wait(record.label):
                trace_wait(self._attempt, record)
        return await self._call(task, ctx)

    async def _call(self, task: WorkflowTask, ctx: TaskContext | DurableTaskContext) -> _Ran:
        node = self._graph.task(task.name)
        limit = node.execution_timeout_s if node is not None else None
        attributes = {"tether.run_id": self._state.run_id, "tether.task": task.name}
        await self._attempt.begin()  # as before a step: a duplicate attempt stops here
        with self._attempt.tracing.span(f"task {task.name}", attributes=attributes):
            # a durable task's child runs are its own (recorded, waited on durably); a plain
            # task's are runs of their own
            token = current_context.set(ctx if isinstance(ctx, DurableTaskContext) else None)
            timeout = asyncio.timeout(limit)
            try:
                async with timeout:
                    return _Ran(
                        task.name, output=await task.fn(task.parse_input(self._state.input), ctx)
                    )
            except CONTROL_FLOW:
                raise
            except TimeoutError as exc:
                if timeout.expired():
                    message = f"task {task.name!r} ran past its execution_timeout of {limit:g}s"
                    return _Ran(task.name, error=TimeoutError(message))
                return _Ran(task.name, error=exc)
            except Exception as exc:
                return _Ran(task.name, error=exc)
            finally:
                current_context.reset(token)

    # -- ending the run -----------------------------------------------------------------------

    async def _fail(self, failed: str) -> None:
        """A task failed for good: run on_failure (once), then end the run failed."""
        state = self._state
        await self._ends.write_unwritten()
        errors = {
            name: f"{o.error['type']}: {o.error['message']}" if o.error else "failed"
            for name, o in state.tasks.items()
            if o.status == "failed"
        }
        handler = self._on_failure
        if handler is not None and handler.name not in state.tasks:
            ctx = TaskContext(self._attempt, self._graph, handler, WaitResult(fired=[]), errors)
            ran = await self._call(handler, ctx)
            if ran.error is None:
                try:
                    output = codec.to_json_value(ran.output)
                except codec.EncodingError:
                    output = None
                await self._ends.record(handler.name, "completed", output=output)
            else:
                log.error(
                    f"run {state.run_id}: on_failure of {self._graph.name!r} failed",
                    exc_info=ran.error,
                    extra={"run_id": state.run_id, "task": handler.name},
                )
                await self._ends.record(handler.name, "failed", error=error_info(ran.error))
        await self._ends.write_unwritten()  # (a failure carries no task ends)
        outcome = state.tasks[failed]
        error = outcome.error or {"type": "Error", "message": "failed"}
        await self._ends.append(
            RunFailed(
                run_id=state.run_id,
                at=self._now(),
                error=ErrorInfo(
                    type=error["type"], message=f"task {failed!r} failed: {error['message']}"
                ),
                parent_run_id=state.parent_run_id,
            )
        )
        raise _Ended("failed")

    async def _cancel(self, decision: TaskDecision) -> None:
        """A task's cancel_if held: the task is recorded cancelled and the attempt ends; the
        engine then cancels the run (and with it everything downstream)."""
        await self._ends.record(decision.task, "cancelled", reason=decision.reason)
        raise _Ended("cancelled")
