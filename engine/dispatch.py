"""Publishing work: task dispatches to workers and commands to the engine."""

from __future__ import annotations

import orjson
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from tether.engine import commands, ids, wire
from tether.engine.run_log_reads import guarded_predecessor
from tether.engine.subjects import Names
from tether.engine.tracing import trace_headers


async def dispatch_task(
    js: JetStreamContext,
    names: Names,
    task: str,
    run_id: str,
    seq: int,
    headers: dict[str, str] | None = None,
    *,
    carried: Msg | None = None,
) -> None:
    """Tell workers of ``task`` that ``run_id`` is runnable. ``seq`` is the log sequence of
    the event that made it runnable, so each dispatch is named once and dedupes.

    ``carried``, the stored message of that event (the run's request, or the engine's
    resolution of a wait), travels along: a worker that has the rest of the log (none
    before a request; the log a run suspended with) needs no read of the run (see
    ``tether.runtime.suspended_logs``)."""
    body: dict[str, object] = {"run_id": run_id, "seq": seq}
    event = _carried(names, run_id, carried) if carried is not None else None
    if event is not None:
        body["carried"] = event
    await js.publish(
        names.task_subject(task),
        orjson.dumps(body),
        headers={**(headers or {}), wire.MSG_ID: ids.dispatch_msg_id(run_id, seq)},
    )


def _carried(names: Names, run_id: str, msg: Msg) -> dict[str, object] | None:
    """The event as a dispatch carries it, with the sequence its guarded append followed
    (checked by the server); None when it was written without the run's guard."""
    stored = msg.headers or {}
    previous = guarded_predecessor(stored, names.run_filter(run_id))
    if previous is None:
        return None
    return {
        "previous": previous,
        "subject": msg.subject,
        "event": orjson.Fragment(msg.data),
        "headers": trace_headers(stored),
    }


async def send_command(
    js: JetStreamContext,
    names: Names,
    command: commands.CommandMessage,
    headers: dict[str, str] | None = None,
) -> None:
    await js.publish(
        names.command_subject(command.kind, command.run_id),
        commands.encode(command),
        headers={**(headers or {}), wire.MSG_ID: command.msg_id()},
    )
