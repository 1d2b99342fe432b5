"""Bookkeeping from the run log: keeps dispatches, deadlines and parents in step with it.

The engine service feeds this every run-log event its bookkeeping consumer takes (a run
requested, a wait started, an attempt failed, a timeout refreshed, a run ended). Each one
the run's state machine took dispatches the run, writes or drops its deadlines in the
deadlines bucket, or tells a parent run that a child ended. One the fold ignores (a write
the run does not take) changes nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

import orjson
from nats.aio.msg import Msg

from tether.engine import commands, ids, wire
from tether.engine import events as ev
from tether.engine.connection import Connection
from tether.engine.deadlines import Deadlines, wait_deadline_keys
from tether.engine.decide import CancelRun, decide
from tether.engine.dispatch import ResolutionDispatches, dispatch_task
from tether.engine.run_log_reads import guarded_predecessor
from tether.engine.state import RunState, WaitRecord, fold
from tether.engine.store import decide_and_append
from tether.engine.subjects import is_token, run_subject_parts
from tether.engine.taken import RESOLUTION_TOKENS, RunnableChains, TakenByRun, marked_taken
from tether.engine.tracing import TRACEPARENT

log = logging.getLogger("tether.engine")

# The run-log events that change dispatches, deadlines or parents.
BOOKED_TOKENS = frozenset(
    {
        "requested",
        "wait_started",
        "attempt_failed",
        "timeout_refreshed",
        *RESOLUTION_TOKENS,
        *ev.TERMINAL_TOKENS,
        ev.TASK_CANCELLED_TOKEN,
    }
)

# Attempt writes whose booking needs no state of the run: taken without a read when the
# run is known queued or running right before them (tether.engine.taken).
BOOKED_UNREAD = (ev.WaitStarted, ev.RunCompleted, ev.RunFailed)


class Bookkeeper:
    """Keeps dispatches, deadlines and parents in step with a run log's events."""

    def __init__(
        self, conn: Connection, resolutions: ResolutionDispatches, deadlines: Deadlines
    ) -> None:
        self._conn = conn
        self._resolutions = resolutions
        self._deadlines = deadlines
        # The wait each run took, as booked: the engine marks its resolution of that wait
        # as taken (tether.engine.taken).
        self.waits_taken = TakenByRun()
        self._chains = RunnableChains(conn.settings.names)

    async def _state(self, run_id: str) -> RunState:
        return fold(run_id, await self._conn.store.read(run_id))

    async def _delete_open_wait_deadlines(self, run_id: str, state: RunState) -> None:
        """A run ended while waiting: its wait deadlines will never be needed."""
        partition = self._conn.settings.names.partition(run_id)
        for record in state.records:
            if isinstance(record, WaitRecord):
                for key in wait_deadline_keys(partition, run_id, record):
                    await self._deadlines.remove(key)
        await self._deadlines.remove(ids.retry_deadline_key(partition, run_id))

    async def _put_run_deadline(self, run_id: str, due_at: float, traceparent: str | None) -> None:
        """The execution deadline: it covers the whole run, waits included. (Its command
        carries no reason: the engine gives it when it applies it, and every pending
        deadline's bytes stay in the server's memory until it is removed.)"""
        command = commands.CommandMessage(kind="expire_run", run_id=run_id)
        key = ids.run_deadline_key(self._conn.settings.names.partition(run_id), run_id)
        await self._deadlines.put(key, due_at, command, traceparent)

    async def on_run_event(self, msg: Msg) -> None:
        run_id, token = run_subject_parts(msg.subject)
        seq = msg.metadata.sequence.stream
        runnable = self._follow_chain(run_id, token, seq, msg.headers or {})
        if token not in BOOKED_TOKENS:
            await msg.ack()  # a step, a start: nothing to book
            return
        if token in RESOLUTION_TOKENS and await self._dispatch_resolved(msg):
            await msg.ack()
            return
        # read as every reader of the log reads it: a body that does not decode, or does not
        # belong on its subject, is an unusable entry, which the state machine ignores
        event = ev.decode_stored(msg.subject, msg.data)
        if runnable and isinstance(event, BOOKED_UNREAD) and event.run_id == run_id:
            reason, state = None, None  # the run was queued or running: it takes this
        else:
            reason, state = await self._refused(event, seq, msg)
        if reason is not None:
            log.warning(
                "run event not booked: the run's state machine ignores it",
                extra={"run_id": event.run_id, "seq": seq, "type": event.type, "reason": reason},
            )
        else:
            await self._book(event, msg, state, runnable=runnable)
        await msg.ack()

    def _follow_chain(self, run_id: str, token: str, seq: int, headers: dict[str, str]) -> bool:
        """Follow the run's chain with its event stored at ``seq`` (messages come in the
        order they were stored): was the run known queued or running right before it?"""
        if token in RESOLUTION_TOKENS:  # (only the engine may write these)
            self.waits_taken.forget(run_id)
            if marked_taken(headers):
                self._chains.anchor(run_id, seq)
                return False
        if token == "requested" and self._first_in_log(run_id, headers):
            self._chains.anchor(run_id, seq)
            return False
        return self._chains.follow(run_id, token, seq, headers)

    def _first_in_log(self, run_id: str, headers: Mapping[str, str]) -> bool:
        """Was this stored only because the run's log was empty (guarded on sequence 0)?"""
        return guarded_predecessor(headers, self._conn.settings.names.run_filter(run_id)) == 0

    async def _dispatch_resolved(self, msg: Msg) -> bool:
        """Dispatch a run whose wait the engine resolved, to the task stored beside the
        resolution, without reading the log, unless the engine that wrote it has already
        (``ResolutionDispatches``). This message comes back until it is acknowledged, so a
        process dying between the resolution and its dispatch loses nothing. A resolution
        the run did not take dispatches a run that is not runnable at that sequence, which
        its worker skips. False without a usable task header (then the full read decides)."""
        task = (msg.headers or {}).get(wire.TASK)
        if not task or not is_token(task):
            return False
        if not await self._resolutions.engine_dispatched(msg.metadata.sequence.stream):
            await self._dispatch(task, msg)
        return True

    async def _dispatch(self, task: str, msg: Msg) -> None:
        """Dispatch the run whose event ``msg`` made it runnable (its request, or the
        engine's resolution of its wait), carrying the event to the worker."""
        traceparent = (msg.headers or {}).get(TRACEPARENT)
        await dispatch_task(
            self._conn.publisher,
            self._conn.settings.names,
            task,
            run_subject_parts(msg.subject)[0],
            msg.metadata.sequence.stream,
            {TRACEPARENT: traceparent} if traceparent else None,
            carried=msg,
        )

    async def _refused(
        self, event: ev.RunEvent, seq: int, msg: Msg
    ) -> tuple[str | None, RunState | None]:
        """Why the fold ignores this event (None when it applied), and the run's state when
        it had to be read: a write the run does not take (from a stolen worker credential,
        say) must not dispatch, move deadlines or tell a parent."""
        if isinstance(event, ev.UnusableEntry):
            return event.reason, None
        headers = msg.headers or {}
        if isinstance(event, ev.RunRequested) and self._first_in_log(event.run_id, headers):
            return None, None  # the server stored it only because the run's log was empty
        if isinstance(event, ev.AttemptFailed | ev.WaitStarted):
            # Booking these only sets deadlines whose commands name the event's sequence:
            # the engine applies a retry only while the run is queued since exactly this
            # event, and resolves only the wait registered at it (a forged wait_started
            # reusing an open wait's id gets its resolutions ignored). A deadline it would
            # overwrite is checked first (see _book: the chain, or else a read, tells).
            return None, None
        return await self._read_refusal(event, seq)

    async def _read_refusal(
        self, event: ev.RunEvent, seq: int
    ) -> tuple[str | None, RunState | None]:
        """``_refused`` by reading the run's log."""
        state = await self._state(event.run_id)
        if state.last_seq < seq:  # a replica behind: fail, so the message comes back
            raise RuntimeError(f"run {event.run_id} read up to seq {state.last_seq}, not {seq}")
        entry = next((e for e in state.ignored if e["seq"] == seq), None)
        return (None if entry is None else str(entry["reason"])), state

    async def _book(
        self, event: ev.RunEvent, msg: Msg, state: RunState | None, *, runnable: bool
    ) -> None:
        """Keep dispatches and deadlines in step with one run-log event (stored as ``msg``);
        ``state`` is the run as ``_refused`` read it (every event booked below but requests,
        failed attempts, waits and endings on a known chain was read there); ``runnable``:
        the run was known queued or running right before it."""
        names, run_id = self._conn.settings.names, event.run_id
        seq = msg.metadata.sequence.stream
        traceparent = (msg.headers or {}).get(TRACEPARENT)
        partition = names.partition(run_id)
        CM = commands.CommandMessage
        if isinstance(event, ev.RunRequested):
            await self._put_run_deadline(run_id, event.at + event.execution_timeout_s, traceparent)
            if event.schedule_timeout_s is not None:
                await self._deadlines.put(
                    ids.schedule_deadline_key(partition, run_id),
                    event.at + event.schedule_timeout_s,
                    CM(
                        kind="expire_schedule",
                        run_id=run_id,
                        reason=f"no worker started the run within {event.schedule_timeout_s:g}s",
                    ),
                    traceparent,
                )
            await self._dispatch(event.task, msg)
        elif isinstance(event, ev.TimeoutRefreshed):
            assert state is not None
            if not state.is_terminal:
                await self._put_run_deadline(
                    run_id, state.requested_at + event.execution_timeout_s, traceparent
                )
        elif isinstance(event, ev.AttemptFailed):
            await self._deadlines.put(
                ids.retry_deadline_key(partition, run_id),
                event.retry_at,
                CM(kind="retry", run_id=run_id, retry_seq=seq),
                traceparent,
            )
        elif isinstance(event, ev.WaitStarted):
            taken = runnable or (await self._read_refusal(event, seq))[0] is None
            if taken:
                self.waits_taken.remember(run_id, seq)
            await self._book_wait(event, seq, traceparent, taken=taken)
        elif isinstance(event, ev.TaskRecorded) and event.status == "cancelled":
            await self._cancel_for_task(event, seq)
        elif isinstance(event, ev.WaitSatisfied | ev.WaitTimedOut):
            # a resolution without the task header: the read in _refused found its task
            assert state is not None
            await self._dispatch(state.task, msg)
        elif isinstance(event, ev.RunCompleted | ev.RunFailed | ev.RunTimedOut | ev.RunCancelled):
            # (a schedule deadline, if any, is dropped when it fires and finds the run started)
            await self._deadlines.remove(ids.run_deadline_key(partition, run_id))
            if isinstance(event, ev.RunTimedOut | ev.RunCancelled):
                assert state is not None
                await self._delete_open_wait_deadlines(run_id, state)
            if event.parent_run_id:
                await self._tell_parent(event, traceparent)

    async def _cancel_for_task(self, event: ev.TaskRecorded, seq: int) -> None:
        """A workflow task's cancel_if held (its attempt recorded it and ended): the run ends
        cancelled, as the engine's decision."""
        run_id = event.run_id
        reason = f"task {event.task!r}: {event.reason or 'cancelled'}"

        def choose(state: RunState) -> ev.RunEvent | None:
            cancelled = state.tasks.get(event.task)
            if cancelled is None or cancelled.status != "cancelled" or state.is_terminal:
                return None
            return decide(state, CancelRun(reason=reason), time.time())[0]

        appended = await decide_and_append(
            self._conn.store,
            run_id,
            choose,
            headers=self._conn.tracing.inject({}),
        )
        if appended is not None:
            self._conn.tracing.record_run(
                appended.state, "cancelled", appended.log[0][2], appended.event.at
            )

    async def _book_wait(
        self, event: ev.WaitStarted, seq: int, traceparent: str | None, *, taken: bool
    ) -> None:
        """A wait's deadlines. Each is created only where its key is free: a wait_started
        that finds its deadline there already (the same one booked again, or one the run
        ignores at the position of an open wait) overwrites it only if the run ``taken``
        it, so a forged one cannot move a real wait's timeout."""
        run_id = event.run_id
        partition = self._conn.settings.names.partition(run_id)

        async def book(key: str, due_at: float, command: commands.CommandMessage) -> None:
            if await self._deadlines.create(key, due_at, command, traceparent):
                return
            if taken:
                await self._deadlines.put(key, due_at, command, traceparent)
            else:
                log.warning(
                    "wait deadline not booked: the run's state machine ignores the wait",
                    extra={"run_id": run_id, "seq": seq},
                )

        if event.timeout_at is not None:
            await book(
                ids.wait_deadline_key(partition, run_id, event.position),
                event.timeout_at,
                commands.CommandMessage(
                    kind="expire_wait",
                    run_id=run_id,
                    task=event.task,
                    wait_id=event.wait_id,
                    wait_seq=seq,
                ),
            )
        for clause in event.clauses:
            for spec in clause:
                if spec.kind == "sleep" and spec.due_at is not None:
                    await book(
                        ids.sleep_deadline_key(partition, run_id, event.position, spec.id),
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
        await self._conn.publisher.publish(
            names.event_subject(f"tether:run:{event.run_id}"),
            orjson.dumps(body),
            headers={
                **({TRACEPARENT: traceparent} if traceparent else {}),
                wire.MSG_ID: ids.run_ended_msg_id(event.run_id),
            },
        )
