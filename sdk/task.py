"""Durable task definitions: the decorated function plus how to trigger it."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel

from tether.engine import codec
from tether.engine.subjects import check_token

if TYPE_CHECKING:
    from tether.app import Tether
    from tether.client import RunRef
    from tether.context import DurableContext

I = TypeVar("I")  # noqa: E741 - input type
O = TypeVar("O")  # noqa: E741 - output type

TaskFunction = Callable[[I, "DurableContext"], Awaitable[O]]


class DurableTask(Generic[I, O]):
    """A task that can suspend on durable waits. Create it with ``@app.durable_task``."""

    def __init__(
        self,
        app: Tether,
        fn: TaskFunction[I, O],
        *,
        name: str,
        execution_timeout: timedelta,
    ) -> None:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"durable task {name!r} must be an async function")
        if execution_timeout.total_seconds() <= 0:
            raise ValueError(f"durable task {name!r}: execution_timeout must be positive")
        self.app = app
        self.fn = fn
        self.name = check_token("task name", name)
        self.execution_timeout = execution_timeout
        self.input_model = _input_model(fn)

    def __repr__(self) -> str:
        return f"DurableTask({self.name!r})"

    def parse_input(self, raw: Any) -> Any:
        """Turn the recorded JSON input back into what the function expects."""
        if self.input_model is not None:
            return self.input_model.model_validate(raw)
        return raw

    async def invoke(self, raw_input: Any, ctx: DurableContext) -> O:
        return await self.fn(self.parse_input(raw_input), ctx)

    def encode_input(self, value: Any) -> Any:
        if self.input_model is not None and not isinstance(value, self.input_model):
            value = self.input_model.model_validate(value)  # fail at the caller, not later
        return codec.to_json_value(value)

    async def run_no_wait(
        self, input: I, *, metadata: dict[str, Any] | None = None, run_id: str | None = None
    ) -> RunRef:
        """Record a new run of this task and return at once with its reference."""
        return await self.app.runs.trigger(self, input, metadata=metadata, run_id=run_id)

    async def run(
        self, input: I, *, metadata: dict[str, Any] | None = None, timeout: float | None = None
    ) -> Any:
        """Trigger a run and wait for its output (raises RunFailedError / RunTimeoutError)."""
        ref = await self.run_no_wait(input, metadata=metadata)
        return await ref.result(timeout=timeout)


def _input_model(fn: Callable[..., Any]) -> type[BaseModel] | None:
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
