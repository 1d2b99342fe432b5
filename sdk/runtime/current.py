"""The durable context of the task running in this asyncio task, if any: ``task.run()``
called inside a durable task then starts a child run durably instead of a free-standing
one. Its own module so that tasks can look it up without importing the runtime."""

from __future__ import annotations

import contextvars
from typing import Any, Protocol

from tether.client import ResultRef, TaskDefinition


class SpawningContext(Protocol):
    async def spawn(
        self, task: TaskDefinition, input: Any, metadata: dict[str, Any] | None = None
    ) -> ResultRef: ...


current_context: contextvars.ContextVar[SpawningContext | None] = contextvars.ContextVar(
    "tether_durable_context", default=None
)
