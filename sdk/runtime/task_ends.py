"""Writing a workflow run's events from its driver, and the task ends that ride on them.

A task that completed or was skipped is known at once (the run's state says so), but its
end is written only with the next write that can carry it (the gate's wait, the run's
completion), or on its own before another task's code runs. So a cycle through a gate
costs no more writes than a durable task's, and a crash re-runs at most the tasks whose
ends were not written yet, as with a durable step.
"""

from __future__ import annotations

from typing import Any

from tether.engine.events import ErrorInfo, RunEvent, TaskEnd, TaskRecorded
from tether.engine.state import TaskStatus, evolve, record_task
from tether.runtime.session import Attempt


class TaskEnds:
    def __init__(self, attempt: Attempt) -> None:
        self._attempt = attempt
        self._unwritten: list[TaskEnd] = []

    async def append(self, event: RunEvent) -> None:
        """Write ``event`` to the run's log (guarded by the attempt) and fold it in."""
        evolve(self._attempt.state, event, await self._attempt.append(event))

    async def record(
        self,
        task: str,
        status: TaskStatus,
        *,
        output: Any = None,
        error: ErrorInfo | None = None,
        reason: str | None = None,
    ) -> None:
        """A task ended (or failed an attempt): a completion or a skip waits for a write to
        carry it; anything else is written now, after the ends not written yet."""
        if status == "completed" or status == "skipped":
            record_task(self._attempt.state, task, status, output, None, self._attempt.clock())
            self._unwritten.append(TaskEnd(task=task, status=status, output=output, reason=reason))
            return
        await self.write_unwritten()
        await self.append(self._event(task, status, output, error, reason))

    async def write_unwritten(self, *, skips: bool = True) -> None:
        """Write the task ends no write carried. Before a task's code runs, the ends of
        tasks that ran are written and skips may wait for the next write: a skip has no
        effect to repeat, so deciding it again after a crash is harmless."""
        ends = self.carried() or []
        if not skips:
            self._unwritten = [end for end in ends if end.status == "skipped"]
            ends = [end for end in ends if end.status != "skipped"]
        for end in ends:
            await self.append(self._event(end.task, end.status, end.output, None, end.reason))

    def carried(self) -> list[TaskEnd] | None:
        """The ends the next write carries (taken: they count as written with it)."""
        ends, self._unwritten = self._unwritten, []
        return ends or None

    def _event(
        self,
        task: str,
        status: TaskStatus,
        output: Any,
        error: ErrorInfo | None,
        reason: str | None,
    ) -> TaskRecorded:
        state = self._attempt.state
        return TaskRecorded(
            run_id=state.run_id,
            at=self._attempt.clock(),
            task=task,
            status=status,
            output=output,
            error=error,
            reason=reason,
        )
