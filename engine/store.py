"""The event store contract: append with optimistic concurrency, read a run's log.

Two implementations share it: ``InMemoryEventStore`` here (unit tests of the state machine
and replay) and ``JetStreamEventStore`` (the real one). A conflict is always
``ConcurrencyConflictError``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from tether.engine.events import RunEvent, encode
from tether.engine.state import RunState, fold


class ConcurrencyConflictError(Exception):
    """The run's log moved on since it was read: re-read and decide again."""

    def __init__(self, run_id: str, expected_last_seq: int) -> None:
        super().__init__(
            f"run {run_id} changed after sequence {expected_last_seq}; "
            "reload its events and retry the decision"
        )
        self.run_id = run_id
        self.expected_last_seq = expected_last_seq


class EventStore(Protocol):
    async def append(
        self,
        event: RunEvent,
        *,
        expected_last_seq: int,
        headers: dict[str, str] | None = None,
    ) -> int:
        """Append ``event`` to its run's log if the log still ends at ``expected_last_seq``.

        Returns the new event's sequence. Appending the same event (the same encoded
        bytes) at the same position again returns the original sequence: a writer whose
        acknowledgement was lost finds its own write. Nothing else names a write, since
        every append is guarded by the run's last sequence.
        """
        ...

    async def read(self, run_id: str) -> list[tuple[int, RunEvent]]:
        """The run's events, oldest first, with their sequences."""
        ...

    async def read_raw(self, run_id: str) -> list[tuple[int, RunEvent, dict[str, str]]]:
        """The run's events with the headers stored beside them (trace context)."""
        ...

    async def read_last(self, run_id: str) -> tuple[int, RunEvent] | None:
        """The run's last event, or None for a run with no log."""
        ...


class InMemoryEventStore:
    """A process-local store with the same OCC contract, for unit tests."""

    def __init__(self) -> None:
        self._seq = 0
        self._logs: dict[str, list[tuple[int, RunEvent, bytes, dict[str, str]]]] = {}

    async def append(
        self,
        event: RunEvent,
        *,
        expected_last_seq: int,
        headers: dict[str, str] | None = None,
    ) -> int:
        log = self._logs.setdefault(event.run_id, [])
        last = log[-1][0] if log else 0
        encoded = encode(event)
        if last != expected_last_seq:
            for seq, _, stored, _ in log:
                if seq > expected_last_seq and stored == encoded:
                    return seq
            raise ConcurrencyConflictError(event.run_id, expected_last_seq)
        self._seq += 1
        log.append((self._seq, event, encoded, dict(headers or {})))
        return self._seq

    async def read(self, run_id: str) -> list[tuple[int, RunEvent]]:
        return [(seq, event) for seq, event, _, _ in self._logs.get(run_id, [])]

    async def read_raw(self, run_id: str) -> list[tuple[int, RunEvent, dict[str, str]]]:
        return [(seq, event, dict(h)) for seq, event, _, h in self._logs.get(run_id, [])]

    async def read_last(self, run_id: str) -> tuple[int, RunEvent] | None:
        log = self._logs.get(run_id)
        return (log[-1][0], log[-1][1]) if log else None


@dataclass(frozen=True, slots=True)
class Decided:
    """An event appended by ``decide_and_append``, with the run as it was decided on."""

    seq: int
    event: RunEvent
    state: RunState
    log: list[tuple[int, RunEvent, dict[str, str]]]  # the run's log read for the decision


DECISION_ATTEMPTS = 10


async def decide_and_append(
    store: EventStore,
    run_id: str,
    choose: Callable[[RunState], RunEvent | None],
    *,
    headers: dict[str, str] | Callable[[RunState], dict[str, str]] | None = None,
) -> Decided | None:
    """The OCC loop every writer of a decision uses: read the run, ``choose`` its event
    (None: nothing applies any more; ``choose`` may also raise), append it guarded by the
    sequence read, and on a conflict read and decide again. ``headers`` (stored beside
    the event) may be derived from the state it was decided on."""
    for _ in range(DECISION_ATTEMPTS):
        log = await store.read_raw(run_id)
        state = fold(run_id, [(seq, event) for seq, event, _ in log])
        event = choose(state)
        if event is None:
            return None
        try:
            seq = await store.append(
                event,
                expected_last_seq=state.last_seq,
                headers=headers(state) if callable(headers) else headers,
            )
        except ConcurrencyConflictError:
            continue  # the run moved on (a step, a resolution): decide again
        return Decided(seq, event, state, log)
    raise ConcurrencyConflictError(run_id, -1)
