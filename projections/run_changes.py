"""Live updates of the run index: a version bumped on every change, which runs changed at which
version (the last ``KEEP_CHANGES``), and waiting for the next change (the API's event stream)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

KEEP_CHANGES = 10_000


class RunChanges:
    def __init__(self) -> None:
        self.version = 0  # bumped on every change
        self._log: deque[tuple[int, str]] = deque(maxlen=KEEP_CHANGES)
        self._changed = asyncio.Event()

    def changed(self, run_id: str) -> None:
        self.version += 1
        self._log.append((self.version, run_id))
        self.wake()

    def wake(self) -> None:
        """Release everyone in ``wait_changed`` (they see an unchanged version)."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_changed(self, version: int, max_wait_s: float) -> int:
        """Return the current version once it is past ``version``, or after ``max_wait_s``
        (or a ``wake()``) with no change."""
        if self.version <= version:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), max_wait_s)
        return self.version

    def changed_runs(self, since_version: int) -> list[str] | None:
        """Runs changed after ``since_version``; None when that is too far back to tell."""
        if self._log and self._log[0][0] > since_version + 1:
            return None  # older than what is kept: treat as "anything may have changed"
        seen: dict[str, None] = {}
        for v, run_id in self._log:
            if v > since_version:
                seen[run_id] = None
        return list(seen)
