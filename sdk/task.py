"""Durable task definitions: the decorated function plus how to trigger it."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel

from tether.client import ResultRef, RunRef, RunsClient
from tether.durations import Duration, backoff_delay
from tether.engine import codec
from tether.engine.config import (
    DEFAULT_BACKOFF_FACTOR,
    DEFAULT_BACKOFF_INITIAL,
    DEFAULT_BACKOFF_MAX,
)
from tether.engine.subjects import check_token
from tether.runtime.current import current_context

if TYPE_CHECKING:
    from tether.runtime.context import DurableContext

I = TypeVar("I")  # noqa: E741 - input type
O = TypeVar("O")  # noqa: E741 - output type

TaskFunction = Callable[[I, "DurableContext"], Awaitable[O]]


class DurableTask(Generic[I, O]):
    """A task that can suspend on durable waits. Create it with ``@app.durable_task``."""

    def __init__(
        self,
        runs: RunsClient,
        fn: TaskFunction[I, O],
        *,
        name: str,
        execution_timeout: timedelta,
        schedule_timeout: timedelta | None = None,
        retries: int = 0,
        backoff_factor: float = DEFAULT_BACKOFF_FACTOR,
        backoff_max: timedelta = DEFAULT_BACKOFF_MAX,
        backoff_initial: timedelta = DEFAULT_BACKOFF_INITIAL,
    ) -> None:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"durable task {name!r} must be an async function")
        if execution_timeout.total_seconds() <= 0:
            raise ValueError(f"durable task {name!r}: execution_timeout must be positive")
        self._runs = runs
        self.fn = fn
        self.name = check_token("task name", name)
        if retries < 0:
            raise ValueError(f"durable task {name!r}: retries must not be negative")
        if schedule_timeout is not None and schedule_timeout.total_seconds() <= 0:
            raise ValueError(f"durable task {name!r}: schedule_timeout must be positive")
        self.execution_timeout = execution_timeout
        self.schedule_timeout = schedule_timeout
        self.retries = retries
        self.backoff_factor = backoff_factor
        self.backoff_max = backoff_max
        self.backoff_initial = backoff_initial
        self.input_model = input_model(fn)

    def __repr__(self) -> str:
        return f"DurableTask({self.name!r})"

    def parse_input(self, raw: Any) -> Any:
        """Turn the recorded JSON input back into what the function expects."""
        if self.input_model is not None:
            return self.input_model.model_validate(raw)
        return raw

    def retry_delay(self, failure: int) -> float:
        """Seconds before retry number ``failure`` (1-based): exponential, capped."""
        return backoff_delay(self.backoff_initial, self.backoff_factor, self.backoff_max, failure)

    async def invoke(self, raw_input: Any, ctx: DurableContext) -> O:
        return await self.fn(self.parse_input(raw_input), ctx)

    def workflow_graph(self) -> None:
        """A durable task's runs store no graph (see ``Workflow``)."""
        return None

    def encode_input(self, value: Any) -> Any:
        if self.input_model is not None and not isinstance(value, self.input_model):
            value = self.input_model.model_validate(value)  # fail at the caller, not later
        return codec.to_json_value(value)

    async def run_no_wait(
        self, input: I, *, metadata: dict[str, Any] | None = None, run_id: str | None = None
    ) -> ResultRef:
        """Record a new run of this task and return at once with its reference.

        Called inside a durable task, this starts a child run: the spawn is recorded once
        (replays do not start it again) and ``await ref.result()`` waits durably.
        """
        ctx = current_context.get()
        if ctx is not None:
            return await ctx.spawn(self, input, metadata)
        return await self._runs.trigger(self, input, metadata=metadata, run_id=run_id)

    def run_no_wait_sync(
        self, input: I, *, metadata: dict[str, Any] | None = None, run_id: str | None = None
    ) -> RunRef:
        """``run_no_wait`` for synchronous code (a web view); the reference has
        ``result_sync``. Not for use inside a durable task, which awaits ``run_no_wait``."""
        trigger = self._runs.trigger(self, input, metadata=metadata, run_id=run_id)
        return self._runs.sync.run(trigger)

    def run_sync(
        self, input: I, *, metadata: dict[str, Any] | None = None, timeout: Duration | None = None
    ) -> Any:
        """``run`` for synchronous code: blocks until the run ends."""
        return self._runs.sync.run(self.run(input, metadata=metadata, timeout=timeout))

    async def run(
        self, input: I, *, metadata: dict[str, Any] | None = None, timeout: Duration | None = None
    ) -> Any:
        """Trigger a run and wait for its output (raises RunFailedError / RunTimeoutError).
        Inside a durable task the parent suspends until the child ends, holding no slot."""
        ref = await self.run_no_wait(input, metadata=metadata)
        return await ref.result(timeout=timeout)


def input_model(fn: Callable[..., Any]) -> type[BaseModel] | None:
    """The pydantic model the function's first parameter is annotated with, if any."""
    params = list(inspect.signature(fn).parameters.values())
    if not params:
        raise TypeError("a durable task takes (input, ctx)")
    try:
        hints = typing.get_type_hints(fn)
    except Exception:
        return None
    hint = hints.get(params[0].name)
    if isinstance(hint, type) and issubclass(hint, BaseModel):
        return hint
    return None
