"""The engine service: applies commands to runs and keeps dispatches and deadlines in step
with the run log. Several may run against one NATS; work is shared through durable
consumers and every decision is arbitrated by the event store's OCC."""

from __future__ import annotations

import contextlib
import logging
import time

import orjson
from nats.aio.msg import Msg

from tether.engine import commands
from tether.engine import events as ev
from tether.engine.connection import Connection
from tether.engine.dispatch import dispatch_task
from tether.engine.provision import ensure_pull_consumer
from tether.engine.pull import SlotBudget, SlotPuller
from tether.engine.state import (
    ExpireWait,
    ResolveWait,
    WaitRecord,
    decide,
    fold,
    wait_resolution,
)
from tether.engine.store import ConcurrencyConflictError

log = logging.getLogger("tether.engine")

_RUNNABLE_TYPES = ("run.wait_satisfied.v1", "run.wait_timed_out.v1")


def run_deadline_key(run_id: str) -> str:
    return f"{run_id}.run"


def wait_deadline_key(run_id: str, position: int) -> str:
    return f"{run_id}.w{position}"


class EngineService:
    def __init__(self, conn: Connection, *, concurrency: int = 256) -> None:
        self._conn = conn
        self._concurrency = concurrency
        self._pullers: list[SlotPuller] = []
        self.commands_handled = 0

    async def start(self) -> None:
        conn, names = self._conn, self._conn.settings.names
        await ensure_pull_consumer(
            conn.js, names.commands_stream, names.engine_consumer,
            filter_subjects=[names.commands_all],
        )
        bookkeeping = [
            names.runs_token_filter(token)
            for token in ("requested", "wait_started", *ev.TERMINAL_TOKENS)
        ]
        await ensure_pull_consumer(
            conn.js, names.runs_stream, names.bookkeeper_consumer, filter_subjects=bookkeeping
        )
        self._pullers = [
            SlotPuller(conn.nc, names.commands_stream, names.engine_consumer,
                       self._on_command, budget=SlotBudget(self._concurrency)),
            SlotPuller(conn.nc, names.runs_stream, names.bookkeeper_consumer,
                       self._on_run_event, budget=SlotBudget(self._concurrency)),
        ]
        for puller in self._pullers:
            await puller.start()

    async def stop(self) -> None:
        for puller in self._pullers:
            await puller.stop()

    # -- commands ---------------------------------------------------------------------------

    async def _on_command(self, msg: Msg) -> None:
        try:
            command = commands.decode(msg.data)
        except commands.CommandDecodeError as exc:
            log.error("dropping malformed command", extra={"error": str(exc)})
            await msg.term()
            return
        await self.apply(command)
        self.commands_handled += 1
        await msg.ack()

    async def apply(self, command: commands.CommandMessage) -> int | None:
        """Apply ``command`` to its run; returns the new event's sequence, or None if the
        command no longer applies (wait already resolved, run finished, unknown run)."""
        seq = await self._append_decision(command)
        if seq is not None and command.kind in ("resume", "expire_wait"):
            task = command.task or fold(command.run_id, await self._conn.store.read(command.run_id)).task
            await dispatch_task(self._conn.js, self._conn.settings.names, task, command.run_id, seq)
        if command.timer_key:
            with contextlib.suppress(Exception):
                await self._conn.deadlines.delete(command.timer_key)
        return seq

    async def _append_decision(self, command: commands.CommandMessage) -> int | None:
        store, run_id = self._conn.store, command.run_id
        state_command = command.to_state_command()
        if command.wait_seq is not None and command.kind in ("resume", "expire_wait"):
            # Fast path: if the log still ends at the wait's own event, the wait is open and
            # one guarded write resolves it. Anything else goes through a full decision.
            assert isinstance(state_command, ResolveWait | ExpireWait)
            event = wait_resolution(run_id, state_command, time.time())
            with contextlib.suppress(ConcurrencyConflictError):
                return await store.append(
                    event, expected_last_seq=command.wait_seq,
                    msg_id=f"{run_id}:{command.wait_id}:{command.kind}",
                )
        for _ in range(10):
            state = fold(run_id, await store.read(run_id))
            decided = decide(state, state_command, time.time())
            if not decided:
                log.debug("command no longer applies",
                          extra={"run_id": run_id, "kind": command.kind, "status": state.status})
                return None
            try:
                return await store.append(
                    decided[0], expected_last_seq=state.last_seq,
                    msg_id=f"{run_id}:{state.last_seq}:{command.kind}",
                )
            except ConcurrencyConflictError:
                continue
        log.error("gave up applying command after repeated conflicts",
                  extra={"run_id": run_id, "kind": command.kind})
        raise ConcurrencyConflictError(run_id, -1)

    # -- bookkeeping from the run log ------------------------------------------------------

    async def _delete_open_wait_deadlines(self, run_id: str) -> None:
        """A run ended while waiting: its wait deadlines will never be needed."""
        state = fold(run_id, await self._conn.store.read(run_id))
        for record in state.records:
            if isinstance(record, WaitRecord) and record.timeout_at is not None:
                with contextlib.suppress(Exception):
                    await self._conn.deadlines.delete(wait_deadline_key(run_id, record.position))

    async def _on_run_event(self, msg: Msg) -> None:
        names = self._conn.settings.names
        seq = msg.metadata.sequence.stream
        try:
            event = ev.decode(msg.data)
        except ev.EventDecodeError:
            log.error("undecodable run event skipped", extra={"subject": msg.subject, "seq": seq})
            await msg.term()
            return
        kv = self._conn.deadlines
        if isinstance(event, ev.RunRequested):
            due = event.at + event.execution_timeout_s
            await kv.put(
                run_deadline_key(event.run_id),
                orjson.dumps({"due_at": due, "kind": "expire_run", "run_id": event.run_id}),
            )
            await dispatch_task(self._conn.js, names, event.task, event.run_id, seq)
        elif isinstance(event, ev.WaitStarted) and event.timeout_at is not None:
            await kv.put(
                wait_deadline_key(event.run_id, event.position),
                orjson.dumps({
                    "due_at": event.timeout_at, "kind": "expire_wait", "run_id": event.run_id,
                    "wait_id": event.wait_id, "wait_seq": seq, "task": event.task,
                }),
            )
        elif event.type in ("run.completed.v1", "run.failed.v1", "run.timed_out.v1",
                            "run.cancelled.v1"):
            with contextlib.suppress(Exception):
                await kv.delete(run_deadline_key(event.run_id))
            if event.type in ("run.timed_out.v1", "run.cancelled.v1"):
                await self._delete_open_wait_deadlines(event.run_id)
        await msg.ack()
