"""Publishing work: task dispatches to workers and commands to the engine."""

from __future__ import annotations

import orjson
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from tether.engine import commands, ids, wire
from tether.engine.subjects import Names
from tether.engine.tracing import TRACE_HEADERS


async def dispatch_task(
    js: JetStreamContext,
    names: Names,
    task: str,
    run_id: str,
    seq: int,
    headers: dict[str, str] | None = None,
    *,
    resolution: Msg | None = None,
) -> None:
    """Tell workers of ``task`` that ``run_id`` is runnable. ``seq`` is the log sequence of
    the event that made it runnable, so each dispatch is named once and dedupes.

    ``resolution``, the stored message of the engine's resolution of a wait, travels
    along: a worker that still holds the log the run suspended with resumes it without
    reading the run (see ``tether.runtime.suspended_logs``)."""
    body: dict[str, object] = {"run_id": run_id, "seq": seq}
    carried = _carried(names, run_id, resolution) if resolution is not None else None
    if carried is not None:
        body["resolution"] = carried
    await js.publish(
        names.task_subject(task),
        orjson.dumps(body),
        headers={**(headers or {}), wire.MSG_ID: ids.dispatch_msg_id(run_id, seq)},
    )


def _carried(names: Names, run_id: str, msg: Msg) -> dict[str, object] | None:
    """The resolution as a dispatch carries it, with the sequence its guarded append
    followed (checked by the server); None when it was written without the run's guard."""
    stored = msg.headers or {}
    if stored.get(wire.EXPECTED_LAST_SUBJECT_SEQ_SUBJECT) != names.run_filter(run_id):
        return None
    try:
        previous = int(stored.get(wire.EXPECTED_LAST_SUBJECT_SEQ, ""))
    except ValueError:
        return None
    return {
        "previous": previous,
        "subject": msg.subject,
        "event": orjson.Fragment(msg.data),
        "headers": {k: v for k, v in stored.items() if k in TRACE_HEADERS},
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
