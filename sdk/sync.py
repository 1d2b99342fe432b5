"""Calling the async SDK from synchronous code (a Flask or Django view, a script).

Each ``*_sync`` call runs its coroutine on one event loop that belongs to the app and
lives in a background thread, so the app's NATS connection is opened once and reused by
every call, from any thread, instead of once per call.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class SyncRunner:
    def __init__(self, name: str = "tether-sync") -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The background loop, once a call started it."""
        return self._loop

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name=self._name, daemon=True)
                thread.start()
                self._loop = loop
            return self._loop

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` to completion and return its result (or raise its exception)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            coro.close()
            raise RuntimeError(
                "a *_sync call was made from inside a running event loop, which it would "
                "block; await the async method instead (e.g. `await app.events.push(...)`)"
            )
        return asyncio.run_coroutine_threadsafe(coro, self._ensure_loop()).result()
