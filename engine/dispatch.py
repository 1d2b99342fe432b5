"""Publishing work: task dispatches to workers and commands to the engine."""

from __future__ import annotations

import orjson
from nats.js import JetStreamContext

from tether.engine import commands, ids, wire
from tether.engine.subjects import Names


async def dispatch_task(
    js: JetStreamContext,
    names: Names,
    task: str,
    run_id: str,
    seq: int,
    headers: dict[str, str] | None = None,
) -> None:
    """Tell workers of ``task`` that ``run_id`` is runnable. ``seq`` is the log sequence of
    the event that made it runnable, so each dispatch is named once and dedupes."""
    await js.publish(
        names.task_subject(task),
        orjson.dumps({"run_id": run_id, "seq": seq}),
        headers={**(headers or {}), wire.MSG_ID: ids.dispatch_msg_id(run_id, seq)},
    )


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
