"""The engine service: applies commands to runs and keeps dispatches and deadlines in step
with the run log. Several may run against one NATS; work is shared through durable
consumers and every decision is arbitrated by the event store's OCC."""

from __future__ import annotations

import contextlib
import logging
import time

import orjson
from nats.aio.msg import Msg
from opentelemetry.trace import SpanKind

from tether.engine import commands
from tether.engine import events as ev
from tether.engine.connection import Connection
from tether.engine.dispatch import dispatch_task
from tether.engine.provision import ensure_pull_consumer
from tether.engine.pull import SlotBudget, SlotPuller
from tether.engine.state import (
    ExpireWait,
    ResolveWait,
    RunState,
    WaitRecord,
    decide,
    fold,
    wait_resolution,
)
from tether.engine.store import ConcurrencyConflictError
from tether.engine.tracing import EVENT_TRACEPARENT, TRACEPARENT, messaging

log = logging.getLogger("tether.engine")

_RUNNABLE_TYPES = ("run.wait_satisfied.v1", "run.wait_timed_out.v1")


def run_deadline_key(run_id: str) -> str:
    return f"{run_id}.run"


def wait_deadline_key(run_id: str, position: int) -> str:
    return f"{run_id}.w{position}"


def sleep_deadline_key(run_id: str, position: int, condition_id: str) -> str:
    return f"{run_id}.w{position}.{condition_id}"


def wait_deadline_keys(run_id: str, record: WaitRecord) -> list[str]:
    keys = [wait_deadline_key(run_id, record.position)] if record.timeout_at is not None else []
    for clause in record.clauses:
        keys += [
            sleep_deadline_key(run_id, record.position, spec.id)
            for spec in clause
            if spec.kind == "sleep"
        ]
    return keys


class EngineService:
    def __init__(self, conn: Connection, *, concurrency: int = 256) -> None:
        self._conn = conn
        self._concurrency = concurrency
        self._pullers: list[SlotPuller] = []
        self.commands_handled = 0

    async def start(self) -> None:
        conn, names = self._conn, self._conn.settings.names
        ack_wait = conn.settings.engine_ack_wait_s
        await ensure_pull_consumer(
            conn.js,
            names.commands_stream,
            names.engine_consumer,
            filter_subjects=[names.commands_all],
            ack_wait_s=ack_wait,
            watch=conn.permissions,
        )
        bookkeeping = [
            names.runs_token_filter(token)
            for token in (
                "requested",
                "wait_started",
                "attempt_failed",
                "timeout_refreshed",
                *ev.TERMINAL_TOKENS,
            )
        ]
        await ensure_pull_consumer(
            conn.js,
            names.runs_stream,
            names.bookkeeper_consumer,
            filter_subjects=bookkeeping,
            ack_wait_s=ack_wait,
            watch=conn.permissions,
        )
        self._pullers = [
            SlotPuller(
                conn.nc,
                names.commands_stream,
                names.engine_consumer,
                self._on_command,
                budget=SlotBudget(self._concurrency),
            ),
            SlotPuller(
                conn.nc,
                names.runs_stream,
                names.bookkeeper_consumer,
                self._on_run_event,
                budget=SlotBudget(self._concurrency),
            ),
        ]
        for puller in self._pullers:
            await puller.start()
            conn.on_reconnect(puller.forget_requests)

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
        tracing = self._conn.tracing
        template = self._conn.settings.names.command_subject(command.kind, "{run_id}")
        with tracing.span(
            f"process {template}",
            kind=SpanKind.CONSUMER,
            parent=tracing.context_from(msg.headers),
            attributes={
                **messaging("process", "process", msg.subject, template),
                "tether.run_id": command.run_id,
                "tether.wait_id": command.wait_id,
                "tether.command": command.kind,
            },
        ):
            pushed = (msg.headers or {}).get(EVENT_TRACEPARENT)
            await self.apply(command, event_traceparent=pushed)
        self.commands_handled += 1
        await msg.ack()

    async def apply(
        self, command: commands.CommandMessage, *, event_traceparent: str | None = None
    ) -> int | None:
        """Apply ``command`` to its run; returns the new event's sequence, or None if the
        command no longer applies (wait already resolved, run finished, unknown run)."""
        names = self._conn.settings.names
        if command.kind == "retry":
            seq = await self._retry(command)
        else:
            headers = self._conn.tracing.inject({})
            if event_traceparent:
                headers[EVENT_TRACEPARENT] = event_traceparent
            decided = await self._append_decision(command, headers)
            seq = None
            if decided is not None:
                seq, event = decided
                if isinstance(event, ev.WaitSatisfied | ev.WaitTimedOut):
                    task = command.task or (await self._state(command.run_id)).task
                    await dispatch_task(
                        self._conn.js,
                        names,
                        task,
                        command.run_id,
                        seq,
                        self._conn.tracing.inject({}),
                    )
        if command.timer_key:
            with contextlib.suppress(Exception):
                await self._conn.deadlines.delete(command.timer_key)
        return seq

    async def _state(self, run_id: str) -> RunState:
        return fold(run_id, await self._conn.store.read(run_id))

    async def _retry(self, command: commands.CommandMessage) -> int | None:
        """The backoff after a failed attempt is over: dispatch the run again."""
        state = await self._state(command.run_id)
        if state.status != "queued" or state.runnable_since_seq != command.retry_seq:
            return None  # cancelled, timed out, or already retried
        await dispatch_task(
            self._conn.js,
            self._conn.settings.names,
            state.task,
            command.run_id,
            state.runnable_since_seq,
            self._conn.tracing.inject({}),
        )
        return state.runnable_since_seq

    async def _append_decision(
        self, command: commands.CommandMessage, headers: dict[str, str]
    ) -> tuple[int, ev.RunEvent] | None:
        store, run_id = self._conn.store, command.run_id
        state_command = command.to_state_command()
        assert state_command is not None
        fast = command.kind == "expire_wait" or (command.kind == "resume" and command.single_clause)
        if fast and command.wait_seq is not None:
            # Fast path: if the log still ends at the wait's own event, the wait is open and
            # one guarded write resolves it. Anything else goes through a full decision.
            assert isinstance(state_command, ResolveWait | ExpireWait)
            event = wait_resolution(run_id, state_command, time.time())
            with contextlib.suppress(ConcurrencyConflictError):
                seq = await store.append(
                    event,
                    expected_last_seq=command.wait_seq,
                    msg_id=f"{run_id}:{command.wait_seq}:{command.kind}:{command.condition_id}",
                    headers=headers,
                )
                return seq, event
        for _ in range(10):
            raw = await store.read_raw(run_id)
            state = fold(run_id, [(seq, event) for seq, event, _ in raw])
            decided = decide(state, state_command, time.time())
            if not decided:
                log.debug(
                    "command no longer applies",
                    extra={"run_id": run_id, "kind": command.kind, "status": state.status},
                )
                return None
            try:
                seq = await store.append(
                    decided[0],
                    expected_last_seq=state.last_seq,
                    msg_id=f"{run_id}:{state.last_seq}:{command.kind}:{command.condition_id}",
                    headers=headers,
                )
                if isinstance(decided[0], ev.RunTimedOut):
                    self._conn.tracing.record_run(state, "timed_out", raw[0][2], time.time())
                return seq, decided[0]
            except ConcurrencyConflictError:
                continue
        log.error(
            "gave up applying command after repeated conflicts",
            extra={"run_id": run_id, "kind": command.kind},
        )
        raise ConcurrencyConflictError(run_id, -1)

    # -- bookkeeping from the run log ------------------------------------------------------

    async def _delete_open_wait_deadlines(self, run_id: str) -> None:
        """A run ended while waiting: its wait deadlines will never be needed."""
        state = await self._state(run_id)
        for record in state.records:
            if isinstance(record, WaitRecord):
                for key in wait_deadline_keys(run_id, record):
                    with contextlib.suppress(Exception):
                        await self._conn.deadlines.delete(key)
        with contextlib.suppress(Exception):
            await self._conn.deadlines.delete(f"{run_id}.retry")

    async def _put_deadline(
        self, key: str, due_at: float, command: commands.CommandMessage, traceparent: str | None
    ) -> None:
        body: dict[str, object] = {
            "due_at": due_at,
            "command": command.model_dump(mode="json", exclude_defaults=True),
        }
        if traceparent:  # the run's trace, so the timeout shows up in it when it fires
            body["traceparent"] = traceparent
        await self._conn.deadlines.put(key, orjson.dumps(body))

    async def _put_run_deadline(self, run_id: str, due_at: float, traceparent: str | None) -> None:
        """The execution deadline: it covers the whole run, waits included."""
        command = commands.CommandMessage(
            kind="expire_run",
            run_id=run_id,
            reason="execution timeout passed (it covers the whole run, waits included)",
        )
        await self._put_deadline(run_deadline_key(run_id), due_at, command, traceparent)

    async def _on_run_event(self, msg: Msg) -> None:
        seq = msg.metadata.sequence.stream
        try:
            event = ev.decode(msg.data)
        except ev.EventDecodeError:
            log.error("undecodable run event skipped", extra={"subject": msg.subject, "seq": seq})
            await msg.term()
            return
        reason = await self._refused(event, seq, msg)
        if reason is not None:
            log.warning(
                "run event not booked: the run's state machine ignores it",
                extra={"run_id": event.run_id, "seq": seq, "type": event.type, "reason": reason},
            )
        else:
            await self._book(event, seq, (msg.headers or {}).get(TRACEPARENT))
        await msg.ack()

    async def _refused(self, event: ev.RunEvent, seq: int, msg: Msg) -> str | None:
        """Why the fold ignores this event, or None when it applied: a write the run does not
        take (from a stolen worker credential, say) must not dispatch, move deadlines or
        tell a parent. Anyone may put any body on a subject they may publish to, so the body
        must also match its subject (the run, and the event type the permissions allow)."""
        names = self._conn.settings.names
        if msg.subject != names.run_subject(event.run_id, ev.subject_token(event)):
            return f"a {event.type} for run {event.run_id} stored on {msg.subject}"
        headers = msg.headers or {}
        if (
            isinstance(event, ev.RunRequested)
            and headers.get("Nats-Expected-Last-Subject-Sequence") == "0"
            and headers.get("Nats-Expected-Last-Subject-Sequence-Subject")
            == names.run_filter(event.run_id)
        ):
            return None  # the server stored it only because the run's log was empty
        state = await self._state(event.run_id)
        if state.last_seq < seq:  # a replica behind: fail, so the message comes back
            raise RuntimeError(f"run {event.run_id} read up to seq {state.last_seq}, not {seq}")
        entry = next((e for e in state.ignored if e["seq"] == seq), None)
        return None if entry is None else str(entry["reason"])

    async def _book(self, event: ev.RunEvent, seq: int, traceparent: str | None) -> None:
        """Keep dispatches and deadlines in step with one run-log event."""
        names, kv, run_id = self._conn.settings.names, self._conn.deadlines, event.run_id
        CM = commands.CommandMessage
        if isinstance(event, ev.RunRequested):
            await self._put_run_deadline(run_id, event.at + event.execution_timeout_s, traceparent)
            if event.schedule_timeout_s is not None:
                await self._put_deadline(
                    f"{run_id}.sched",
                    event.at + event.schedule_timeout_s,
                    CM(
                        kind="expire_schedule",
                        run_id=run_id,
                        reason=f"no worker started the run within {event.schedule_timeout_s:g}s",
                    ),
                    traceparent,
                )
            await dispatch_task(
                self._conn.js,
                names,
                event.task,
                run_id,
                seq,
                {TRACEPARENT: traceparent} if traceparent else None,
            )
        elif isinstance(event, ev.TimeoutRefreshed):
            state = await self._state(run_id)
            if not state.is_terminal:
                await self._put_run_deadline(
                    run_id, state.requested_at + event.execution_timeout_s, traceparent
                )
        elif isinstance(event, ev.AttemptFailed):
            await self._put_deadline(
                f"{run_id}.retry",
                event.retry_at,
                CM(kind="retry", run_id=run_id, retry_seq=seq),
                traceparent,
            )
        elif isinstance(event, ev.WaitStarted):
            await self._book_wait(event, seq, traceparent)
        elif isinstance(event, ev.RunCompleted | ev.RunFailed | ev.RunTimedOut | ev.RunCancelled):
            # (a schedule deadline, if any, is dropped when it fires and finds the run started:
            # deleting a key that was never written would still write a marker)
            with contextlib.suppress(Exception):
                await kv.delete(run_deadline_key(run_id))
            if isinstance(event, ev.RunTimedOut | ev.RunCancelled):
                await self._delete_open_wait_deadlines(run_id)
            if event.parent_run_id:
                await self._tell_parent(event, traceparent)

    async def _book_wait(self, event: ev.WaitStarted, seq: int, traceparent: str | None) -> None:
        run_id = event.run_id
        if event.timeout_at is not None:
            await self._put_deadline(
                wait_deadline_key(run_id, event.position),
                event.timeout_at,
                commands.CommandMessage(
                    kind="expire_wait",
                    run_id=run_id,
                    task=event.task,
                    wait_id=event.wait_id,
                    wait_seq=seq,
                ),
                traceparent,
            )
        for clause in event.clauses:
            for spec in clause:
                if spec.kind == "sleep" and spec.due_at is not None:
                    await self._put_deadline(
                        sleep_deadline_key(run_id, event.position, spec.id),
                        spec.due_at,
                        commands.CommandMessage(
                            kind="resume",
                            run_id=run_id,
                            task=event.task,
                            wait_id=event.wait_id,
                            wait_seq=seq,
                            condition_id=spec.id,
                            condition_key=spec.key,
                            single_clause=len(event.clauses) == 1,
                        ),
                        traceparent,
                    )

    async def _tell_parent(
        self,
        event: ev.RunCompleted | ev.RunFailed | ev.RunTimedOut | ev.RunCancelled,
        traceparent: str | None,
    ) -> None:
        """A child run ended: push an event its parent's durable wait matches."""
        status = ev.SUBJECT_TOKENS[event.type]
        body: dict[str, object] = {"runId": event.run_id, "status": status}
        if isinstance(event, ev.RunCompleted):
            body["output"] = event.output
        elif isinstance(event, ev.RunFailed):
            body["error"] = event.error.model_dump()
        else:
            body["error"] = {
                "type": "RunTimeoutError" if status == "timed_out" else "RunCancelledError",
                "message": event.reason,
            }
        names = self._conn.settings.names
        await self._conn.js.publish(
            names.event_subject(f"tether:run:{event.run_id}"),
            orjson.dumps(body),
            headers={
                **({TRACEPARENT: traceparent} if traceparent else {}),
                "Nats-Msg-Id": f"run-ended:{event.run_id}",
            },
        )
