"""The engine service: applies commands to runs (resume, expire, cancel, retry) and feeds
the run log to its bookkeeping (``tether.engine.bookkeeping``: dispatches, deadlines,
parents). Several may run against one NATS; work is shared through durable consumers and
every decision is arbitrated by the event store's OCC."""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass

from nats.aio.msg import Msg
from opentelemetry.trace import SpanKind

from tether.engine import commands, wire
from tether.engine import events as ev
from tether.engine.bookkeeping import Bookkeeper
from tether.engine.connection import Connection
from tether.engine.deadlines import Deadlines
from tether.engine.decide import ExpireWait, ResolveWait, decide, wait_resolution
from tether.engine.dispatch import ResolutionDispatches, dispatch_task
from tether.engine.jetstream_store import guarded_write
from tether.engine.provision import ensure_pull_consumer
from tether.engine.pull import SlotBudget, SlotPuller
from tether.engine.state import RunState, fold
from tether.engine.store import ConcurrencyConflictError, decide_and_append
from tether.engine.taken import RESOLUTION_TOKENS
from tether.engine.tracing import EVENT_TRACEPARENT, TRACEPARENT, messaging

log = logging.getLogger("tether.engine")


@dataclass(frozen=True, slots=True)
class _Decision:
    """A decision the engine appended: where, what, after which sequence, with which
    headers beside it."""

    seq: int
    event: ev.RunEvent
    previous: int
    headers: dict[str, str]


class EngineService:
    """Applies commands and books run-log events for the partitions it is given
    (``own``/``release``); each partition has its own durable consumers, so whoever owns a
    partition takes over where the last owner's acknowledgements stopped."""

    def __init__(self, conn: Connection, *, concurrency: int = 256) -> None:
        self._conn = conn
        self._command_slots = SlotBudget(concurrency)
        self._bookkeeping_slots = SlotBudget(concurrency)
        self._pullers: dict[int, list[SlotPuller]] = {}
        self._resolutions = ResolutionDispatches()
        self._deadlines = Deadlines(
            conn.deadlines, conn.publisher, conn.settings.names.deadlines_bucket
        )
        self._bookkeeper = Bookkeeper(conn, self._resolutions, self._deadlines)
        self.commands_handled = 0
        conn.on_reconnect(self._forget_requests)

    async def start(self, partitions: list[int] | None = None) -> None:
        """Own ``partitions`` (all of the namespace's when None)."""
        wanted = range(self._conn.settings.names.partitions) if partitions is None else partitions
        for partition in wanted:
            await self.own(partition)

    async def own(self, partition: int) -> None:
        """Start taking ``partition``'s commands and run-log events."""
        if partition in self._pullers:
            return
        conn, names = self._conn, self._conn.settings.names
        ack_wait = conn.settings.engine_ack_wait_s
        await ensure_pull_consumer(
            conn.js,
            names.commands_stream,
            names.engine_consumer(partition),
            filter_subjects=[names.partition_commands(partition)],
            ack_wait_s=ack_wait,
            watch=conn.permissions,
        )
        await ensure_pull_consumer(
            conn.js,
            names.runs_stream,
            names.bookkeeper_consumer(partition),
            # One filter: a consumer with several filters costs the server a scan per pull
            # as the log grows; the bookkeeper skips the tokens it does not book.
            filter_subjects=[names.partition_runs(partition)],
            ack_wait_s=ack_wait,
            watch=conn.permissions,
        )
        pullers = [
            SlotPuller(
                conn.nc,
                names.commands_stream,
                names.engine_consumer(partition),
                self._on_command,
                budget=self._command_slots,
            ),
            SlotPuller(
                conn.nc,
                names.runs_stream,
                names.bookkeeper_consumer(partition),
                self._bookkeeper.on_run_event,
                budget=self._bookkeeping_slots,
            ),
        ]
        for puller in pullers:
            await puller.start()
        self._pullers[partition] = pullers

    async def release(self, partition: int) -> None:
        """Stop taking ``partition``'s work (what is being handled finishes first)."""
        for puller in self._pullers.pop(partition, []):
            await puller.stop()

    async def _forget_requests(self) -> None:
        for pullers in list(self._pullers.values()):
            for puller in pullers:
                await puller.forget_requests()

    async def stop(self) -> None:
        for partition in list(self._pullers):
            await self.release(partition)

    # -- commands ---------------------------------------------------------------------------

    async def _on_command(self, msg: Msg) -> None:
        try:
            command = commands.decode(msg.data)
        except commands.CommandDecodeError as exc:
            log.error("dropping malformed command", extra={"error": str(exc)})
            await msg.term()
            return
        await self.handle(command, msg.headers, subject=msg.subject)
        await msg.ack()

    async def handle(
        self,
        command: commands.CommandMessage,
        headers: dict[str, str] | None,
        *,
        subject: str | None = None,
    ) -> None:
        """Apply a command from the command stream, or one handed over in this process (the
        matcher's resolutions, which skip the stream: a crash before the write loses
        nothing, because the wait is still open in the run log and is matched again)."""
        tracing = self._conn.tracing
        names = self._conn.settings.names
        template = names.command_template(command.kind)
        subject = subject or names.command_subject(command.kind, command.run_id)
        with tracing.span(
            f"process {template}",
            kind=SpanKind.CONSUMER,
            parent=tracing.context_from(headers),
            attributes={
                **messaging("process", "process", subject, template),
                "tether.run_id": command.run_id,
                "tether.wait_id": command.wait_id,
                "tether.command": command.kind,
            },
        ):
            pushed = (headers or {}).get(EVENT_TRACEPARENT)
            await self.apply(command, event_traceparent=pushed)
        self.commands_handled += 1

    async def apply(
        self, command: commands.CommandMessage, *, event_traceparent: str | None = None
    ) -> int | None:
        """Apply ``command`` to its run; returns the new event's sequence, or None if the
        command no longer applies (wait already resolved, run finished, unknown run)."""
        if command.kind == "retry":
            seq = await self._retry(command)
        else:
            headers = self._conn.tracing.inject({})
            if event_traceparent:
                headers[EVENT_TRACEPARENT] = event_traceparent
            decided = await self._append_decision(command, headers)
            seq = None if decided is None else decided.seq
            if decided is not None and ev.subject_token(decided.event) in RESOLUTION_TOKENS:
                await self._dispatch_resolution(command.run_id, decided)
        if command.timer_key:
            await self._deadlines.remove(command.timer_key)
        return seq

    async def _dispatch_resolution(self, run_id: str, decided: _Decision) -> None:
        """Dispatch the run the engine has just made runnable, unless its bookkeeping has
        already; if this fails, the bookkeeping dispatches it (``ResolutionDispatches``)."""
        published = self._resolutions.engine_begins(decided.seq)
        if published is None:
            return
        names = self._conn.settings.names
        traceparent = decided.headers.get(TRACEPARENT)
        written = guarded_write(names, decided.event, decided.previous, decided.headers)
        done = False
        try:
            await dispatch_task(
                self._conn.publisher,
                names,
                decided.headers[wire.TASK],
                run_id,
                decided.seq,
                {TRACEPARENT: traceparent} if traceparent else None,
                carried=written,
            )
            done = True
        except Exception as exc:
            log.warning(
                "resolved run not dispatched yet; its bookkeeping will",
                extra={"run_id": run_id, "seq": decided.seq, "error": repr(exc)},
            )
        finally:
            published.set_result(done)

    async def _state(self, run_id: str) -> RunState:
        return fold(run_id, await self._conn.store.read(run_id))

    async def _retry(self, command: commands.CommandMessage) -> int | None:
        """The backoff after a failed attempt is over: dispatch the run again."""
        state = await self._state(command.run_id)
        if state.status != "queued" or state.runnable_since_seq != command.retry_seq:
            return None  # cancelled, timed out, or already retried
        await dispatch_task(
            self._conn.publisher,
            self._conn.settings.names,
            state.task,
            command.run_id,
            state.runnable_since_seq,
            self._conn.tracing.inject({}),
        )
        return state.runnable_since_seq

    async def _append_decision(
        self, command: commands.CommandMessage, headers: dict[str, str]
    ) -> _Decision | None:
        """The decision as appended. The run's task is stored beside it as a header
        (``wire.TASK``), from which a resolved wait is dispatched, and whether the engine
        knows the run takes it (``wire.TAKEN``)."""
        store, run_id = self._conn.store, command.run_id
        state_command = command.to_state_command()
        assert state_command is not None
        fast = command.kind == "expire_wait" or (command.kind == "resume" and command.single_clause)
        if fast and command.wait_seq is not None and command.task:
            # Fast path: if the log still ends at the wait's own event, the wait is open and
            # one guarded write resolves it. Anything else goes through a full decision.
            assert isinstance(state_command, ResolveWait | ExpireWait)
            event = wait_resolution(run_id, state_command, time.time())
            stored = {**headers, wire.TASK: command.task}
            if self._bookkeeper.waits_taken.took(run_id, command.wait_seq):
                stored[wire.TAKEN] = "1"  # the run took that wait: it takes this (taken.py)
            with contextlib.suppress(ConcurrencyConflictError):
                seq = await store.append(
                    event,
                    expected_last_seq=command.wait_seq,
                    headers=stored,
                )
                return _Decision(seq, event, command.wait_seq, stored)

        def choose(state: RunState) -> ev.RunEvent | None:
            decided = decide(state, state_command, time.time())
            if not decided:
                log.debug(
                    "command no longer applies",
                    extra={"run_id": run_id, "kind": command.kind, "status": state.status},
                )
                return None
            return decided[0]

        def stored_with(state: RunState) -> dict[str, str]:
            # decided on a read of the whole log: the run takes it (tether.engine.taken)
            return {**headers, wire.TASK: state.task, wire.TAKEN: "1"}

        appended = await decide_and_append(
            store,
            run_id,
            choose,
            headers=stored_with,
        )
        if appended is None:
            return None
        if isinstance(appended.event, ev.RunTimedOut):
            self._conn.tracing.record_run(
                appended.state, "timed_out", appended.log[0][2], time.time()
            )
        return _Decision(
            appended.seq,
            appended.event,
            appended.state.last_seq,
            stored_with(appended.state),
        )
