"""The matcher's book of open waits, kept in step with the run log.

A wait is registered by its ``wait_started`` and forgotten once the run log shows it
resolved (satisfied, timed out, or the run ended). Between a match and that record it is
"unlogged": events no longer match it, but a checkpoint still holds it, so a match whose
resume command was lost in a crash is made again after the restart.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from nats.aio.msg import Msg

from tether.engine.expressions import InvalidExpressionError
from tether.engine.subjects import Names
from tether.engine.tracing import TRACEPARENT
from tether.projections.open_waits import (
    ConditionRef,
    OpenWait,
    attempt_may_resolve,
    followed_body,
    parse_wait,
    wait_record,
)
from tether.projections.wait_index import WaitIndex

log = logging.getLogger("tether.matcher")


class WaitRegistry:
    def __init__(self, names: Names) -> None:
        self._names = names
        self.waits: dict[str, OpenWait] = {}
        # waits closed here by a match whose resolution the run log does not show yet
        self._unlogged: dict[str, OpenWait] = {}
        self._open_by_run: dict[str, str] = {}
        self._index: WaitIndex[ConditionRef] = WaitIndex()

    def candidates(self, key: str, payload: dict[str, Any]) -> list[ConditionRef]:
        """(wait id, condition id) of the open conditions an event may satisfy."""
        return self._index.candidates(key, payload)

    def records(self, partition: int) -> list[list[Any]]:
        """The partition's waits as a checkpoint keeps them (as the run log has them)."""
        return [
            wait_record(wait)
            for wait in (*self.waits.values(), *self._unlogged.values())
            if wait.partition == partition
        ]

    def records_by_partition(self, partitions: set[int]) -> dict[int, list[list[Any]]]:
        """``records`` of several partitions, in one pass over the waits."""
        out: dict[int, list[list[Any]]] = {p: [] for p in partitions}
        for wait in (*self.waits.values(), *self._unlogged.values()):
            if wait.partition in out:
                out[wait.partition].append(wait_record(wait))
        return out

    def forget_partition(self, partition: int) -> None:
        for wait in [*self.waits.values(), *self._unlogged.values()]:
            if wait.partition == partition:
                self._close_wait(wait.wait_id, logged=True)

    def open_waits_by_partition(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for wait in self.waits.values():
            counts[wait.partition] = counts.get(wait.partition, 0) + 1
        return counts

    def on_run_msg(self, msg: Msg) -> OpenWait | None:
        """Apply a run-log message; returns the wait it registered, if any."""
        followed = followed_body(msg.subject, msg.data)
        if followed is None:
            return None
        run_id, token, body = followed
        wait_id = self._open_by_run.get(run_id, "")
        open_wait = self.waits.get(wait_id) or self._unlogged.get(wait_id)
        if token == "wait_started":
            if open_wait is not None:  # only a running attempt registers waits
                log.warning("wait registered on a waiting run ignored", extra={"run_id": run_id})
                return None
            return self._on_wait_started(msg, body)
        if open_wait is None or body.get("wait_id", open_wait.wait_id) != open_wait.wait_id:
            return None  # nothing open here (a terminal event, or a resolution already seen)
        if body.get("wait_seq", open_wait.started_seq) != open_wait.started_seq:
            return None  # resolves another registration: the run ignores it too
        if token.endswith("_in_attempt") and not attempt_may_resolve(open_wait, body):
            log.warning("in-attempt resolution ignored", extra={"subject": msg.subject})
        elif token in ("wait_satisfied", "wait_satisfied_in_attempt", "wait_timed_out"):
            self._close_wait(open_wait.wait_id, logged=True)
        elif token in ("condition_met", "condition_met_in_attempt"):
            self.clause_met(open_wait, str(body.get("condition_id", "")), logged=True)
        elif token in ("timed_out", "cancelled"):
            # (completed and failed end only a running attempt: a waiting run ignores them)
            self._close_wait(open_wait.wait_id, logged=True)
        return None

    def _on_wait_started(self, msg: Msg, body: dict[str, Any]) -> OpenWait | None:
        try:
            partition = self._names.partition(str(body["run_id"]))
            wait = parse_wait(body, msg.metadata.sequence.stream, partition)
            wait.traceparent = (msg.headers or {}).get(TRACEPARENT)
        except InvalidExpressionError as exc:
            # Workers validate before recording, so this means a foreign writer; skip it.
            log.error("wait with an invalid expression ignored", extra={"error": str(exc)})
            return None
        except (KeyError, TypeError, ValueError) as exc:
            log.error("malformed wait_started skipped", extra={"error": repr(exc)})
            return None
        self.register(wait)
        return wait

    def register(self, wait: OpenWait) -> None:
        self._open_by_run[wait.run_id] = wait.wait_id
        if len(wait.met_clauses) >= wait.clause_count:  # (from a checkpoint) nothing to match
            self._unlogged[wait.wait_id] = wait
            return
        self.waits[wait.wait_id] = wait
        for condition in wait.open_conditions():
            self._index.add(
                (wait.wait_id, condition.condition_id), condition.event_key, condition.shape
            )

    def clause_met(self, wait: OpenWait, condition_id: str, *, logged: bool) -> None:
        """A clause is satisfied (here by a match, or in the run log): its other
        alternatives need no more matching."""
        clause = next((c.clause for c in wait.conditions if c.condition_id == condition_id), None)
        if clause is None:  # a sleep condition: find its clause from the id "c<i>.<j>"
            with contextlib.suppress(ValueError, IndexError):
                clause = int(condition_id[1:].split(".")[0])
        if clause is None:
            return
        wait.met_clauses = wait.met_clauses | {clause}
        if logged:
            wait.logged_met = wait.logged_met | {clause}
        for condition in wait.conditions:
            if condition.clause == clause:
                self._index.remove((wait.wait_id, condition.condition_id))
        if len(wait.logged_met) >= wait.clause_count:
            self._close_wait(wait.wait_id, logged=True)
        elif len(wait.met_clauses) >= wait.clause_count:
            self._close_wait(wait.wait_id, logged=False)

    def _close_wait(self, wait_id: str, *, logged: bool) -> None:
        """Stop matching a wait; forget it once the run log shows it resolved (``logged``)."""
        wait = self.waits.pop(wait_id, None)
        if wait is not None:
            for condition in wait.conditions:
                self._index.remove((wait_id, condition.condition_id))
            if not logged:
                self._unlogged[wait_id] = wait
                return
        else:
            wait = self._unlogged.pop(wait_id, None) if logged else None
        if wait is not None and self._open_by_run.get(wait.run_id) == wait_id:
            del self._open_by_run[wait.run_id]
