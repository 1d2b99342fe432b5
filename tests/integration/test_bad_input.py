"""Invariant 6: bad input gets a clear error or a recorded rejection and disturbs nothing else.

Every test keeps a healthy run waiting alongside the bad input and shows that it still
resumes normally afterwards.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import orjson
import pytest
from nats.aio.client import Client as NATS
from nats.js.errors import APIError

from tests.helpers import wait_for_status, wait_until
from tether import DurableContext, DurableTask, RunFailedError, RunNotFoundError, RunRef, Tether
from tether.engine.commands import CommandMessage
from tether.engine.config import Settings
from tether.serve import TetherServer

KEY = "approval:decision"


def define(app: Tether) -> DurableTask[Any, Any]:
    """Waits on ``input.key`` (default KEY) for ``input.expression``; ``$run`` is replaced
    by the run id. Returns the matched payload."""

    @app.durable_task(name="approval", execution_timeout=timedelta(minutes=2))
    async def approval(input: dict[str, Any], ctx: DurableContext) -> dict[str, Any]:
        expression = str(input.get("expression", "input.runId == '$run'"))
        decision = await ctx.wait_for_event(
            str(input.get("key", KEY)), expression=expression.replace("$run", ctx.run_id)
        )
        return {"decision": decision}

    return approval


async def start_waiting(app: Tether, task: DurableTask[Any, Any], **input: Any) -> RunRef:
    ref = await task.run_no_wait(input)
    await wait_for_status(app, ref.run_id, "waiting")
    return ref


async def assert_resumes(app: Tether, ref: RunRef) -> None:
    """Push a good decision for ``ref`` and check the run completes with exactly it."""
    payload = {"runId": ref.run_id, "decision": "approve"}
    pushed = await app.events.push(KEY, payload)
    assert await ref.result(timeout=15) == {"decision": payload}
    info = await app.runs.get(ref.run_id)
    assert info.status == "completed"
    satisfied = [e for e in info.events if e.type == "run.wait_satisfied.v1"]
    assert len(satisfied) == 1
    assert satisfied[0].data["event_seq"] == pushed.seq


async def events_last_seq(app: Tether) -> int:
    conn = await app.connection()
    return await conn.events_position()


async def matcher_passed(server: TetherServer, seq: int) -> None:
    """Wait until the matcher has handled every pushed event up to ``seq``."""
    matcher = server.matcher
    assert matcher is not None

    async def check() -> bool:
        return (matcher.events_cursor or 0) >= seq

    await wait_until(check, message=f"matcher to handle event {seq}")


async def rejections(nc: NATS, settings: Settings) -> list[dict[str, Any]]:
    """Everything recorded in the rejected stream, read with direct gets."""
    js = nc.jetstream()
    stream = settings.names.rejected_stream
    info = await js.stream_info(stream)
    out = []
    for seq in range(int(info.state.first_seq or 1), int(info.state.last_seq) + 1):
        msg = await js.get_msg(stream, seq, direct=True)
        body = orjson.loads(msg.data or b"{}")
        body["subject"] = msg.subject
        out.append(body)
    return out


async def wait_rejection(nc: NATS, settings: Settings, event_seq: int) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        for body in await rejections(nc, settings):
            if body["event_seq"] == event_seq:
                return body
        return None

    return await wait_until(check, message=f"rejection of event {event_seq}")


async def test_malformed_json_is_rejected_and_recorded(
    app: Tether, server: TetherServer, settings: Settings, plain_nc: NATS
) -> None:
    task = define(app)
    async with app.worker("w", slots=2):
        healthy = await start_waiting(app, task)
        subject = settings.names.event_subject(KEY)
        bad = b'{"runId": "' + healthy.run_id.encode() + b'", "decision": appro'
        ack = await plain_nc.jetstream().publish(subject, bad)

        recorded = await wait_rejection(plain_nc, settings, ack.seq)
        assert "JSON" in recorded["reason"]
        assert recorded["event_key"] == KEY
        assert recorded["subject"] == settings.names.rejected_subject(KEY)
        assert recorded["data"] == bad.decode()  # kept for inspection
        assert server.matcher is not None and server.matcher.rejected == 1
        # the bad event resolved nothing, even though it names the healthy run
        assert (await app.runs.get(healthy.run_id)).status == "waiting"
        await assert_resumes(app, healthy)
    assert server.matcher.rejected == 1


@pytest.mark.parametrize(
    ("raw", "value", "type_name"),
    [(b"[1,2]", [1, 2], "list"), (b'"yes"', "yes", "str"), (b"42", 42, "int")],
)
async def test_non_object_payload_is_rejected(
    app: Tether,
    server: TetherServer,
    settings: Settings,
    plain_nc: NATS,
    raw: bytes,
    value: Any,
    type_name: str,
) -> None:
    task = define(app)
    async with app.worker("w", slots=2):
        healthy = await start_waiting(app, task)
        ack = await plain_nc.jetstream().publish(settings.names.event_subject(KEY), raw)
        recorded = await wait_rejection(plain_nc, settings, ack.seq)
        assert "JSON object" in recorded["reason"]
        assert type_name in recorded["reason"]

        with pytest.raises(TypeError, match=f"must be a JSON object.*got {type_name}"):
            await app.events.push(KEY, value)
        assert await events_last_seq(app) == ack.seq  # the SDK published nothing
        await assert_resumes(app, healthy)


async def test_invalid_cel_fails_the_run_clearly(app: Tether, server: TetherServer) -> None:
    task = define(app)
    async with app.worker("w", slots=2):
        healthy = await start_waiting(app, task)
        bad = await task.run_no_wait({"expression": "input.runId =="})
        with pytest.raises(RunFailedError) as caught:
            await bad.result(timeout=15)
        assert caught.value.error_type == "InvalidExpressionError"
        assert "input.runId ==" in caught.value.error_message
        info = await app.runs.get(bad.run_id)
        assert info.status == "failed"
        assert "run.wait_started.v1" not in [e.type for e in info.events]  # never recorded
        await assert_resumes(app, healthy)


@pytest.mark.parametrize(
    "payload",
    [{"amount": "lots"}, {"currency": "EUR"}],
    ids=["string-amount", "missing-amount"],
)
async def test_cel_runtime_error_is_no_match(
    app: Tether, server: TetherServer, payload: dict[str, Any]
) -> None:
    task = define(app)
    matcher = server.matcher
    assert matcher is not None
    async with app.worker("w", slots=2):
        healthy = await start_waiting(app, task)
        ref = await start_waiting(
            app, task, expression="input.amount > 100 && input.runId == '$run'"
        )
        errors_before = matcher.evaluation_errors
        await app.events.push(KEY, {**payload, "runId": ref.run_id})

        async def errored() -> bool:
            return matcher.evaluation_errors > errors_before

        await wait_until(errored, message="the expression to fail on the payload")
        info = await app.runs.get(ref.run_id)
        assert info.status == "waiting"  # a non-match: the wait stays open
        assert "run.wait_satisfied.v1" not in [e.type for e in info.events]

        good = {"amount": 150, "runId": ref.run_id}
        pushed = await app.events.push(KEY, good)
        assert await ref.result(timeout=15) == {"decision": good}
        satisfied = [
            e for e in (await app.runs.get(ref.run_id)).events if e.type == "run.wait_satisfied.v1"
        ]
        assert [e.data["event_seq"] for e in satisfied] == [pushed.seq]
        await assert_resumes(app, healthy)


async def test_events_for_unknown_and_finished_runs_change_nothing(
    app: Tether, server: TetherServer
) -> None:
    task = define(app)
    assert server.engine is not None
    async with app.worker("w", slots=2):
        healthy = await start_waiting(app, task)
        finished = await start_waiting(app, task)
        await assert_resumes(app, finished)
        before = await app.runs.get(finished.run_id)

        late = await app.events.push(KEY, {"runId": finished.run_id, "decision": "reject"})
        stray = await app.events.push(KEY, {"runId": "no-such-run", "decision": "approve"})
        await matcher_passed(server, max(late.seq, stray.seq))

        # commands that reach the engine anyway (a replayed or foreign command) do nothing
        wait_id = next(e.data["wait_id"] for e in before.events if e.type == "run.wait_started.v1")
        for run_id, wid in ((finished.run_id, wait_id), ("no-such-run", "no-such-run:0")):
            command = CommandMessage(
                kind="resume",
                run_id=run_id,
                task="approval",
                wait_id=wid,
                event_key=KEY,
                event_seq=late.seq,
                payload={"runId": run_id},
            )
            assert await server.engine.apply(command) is None
            expire = CommandMessage(kind="expire_wait", run_id=run_id, wait_id=wid)
            assert await server.engine.apply(expire) is None

        await assert_resumes(app, healthy)  # matched in order: the stray events came first
        after = await app.runs.get(finished.run_id)
        assert after.status == "completed"
        assert after.output == before.output
        assert len(after.events) == len(before.events)
        with pytest.raises(RunNotFoundError):
            await app.runs.get("no-such-run")


async def test_duplicate_push_resolves_once(app: Tether, server: TetherServer) -> None:
    task = define(app)
    async with app.worker("w", slots=2):
        healthy = await start_waiting(app, task)
        ref = await start_waiting(app, task)
        payload = {"runId": ref.run_id, "decision": "approve"}
        first = await app.events.push(KEY, payload, id="decision-1")
        second = await app.events.push(KEY, payload, id="decision-1")
        assert first.duplicate is False
        assert second.duplicate is True
        assert second.seq == first.seq
        assert second.id == first.id == "decision-1"
        assert await events_last_seq(app) == first.seq  # stored once

        assert await ref.result(timeout=15) == {"decision": payload}
        await assert_resumes(app, healthy)  # handled after the duplicate, in order
        events = (await app.runs.get(ref.run_id)).events
        assert [e.type for e in events].count("run.wait_satisfied.v1") == 1


async def test_oversized_payload_is_refused(
    app: Tether, server: TetherServer, settings: Settings, plain_nc: NATS
) -> None:
    task = define(app)
    matcher = server.matcher
    assert matcher is not None
    limit = settings.max_event_bytes
    assert limit == 256 * 1024
    async with app.worker("w", slots=2):
        healthy = await start_waiting(app, task)
        position = await events_last_seq(app)
        cursor = matcher.events_cursor

        big = {"runId": healthy.run_id, "decision": "approve", "blob": "x" * limit}
        with pytest.raises(ValueError, match=f"over the {limit}-byte limit"):
            await app.events.push(KEY, big)

        # The limit is on the whole message, headers included, as the server counts it:
        # the SDK refuses exactly what the server would, with its own clear error.
        header_bytes = len(b"NATS/1.0\r\n\r\n") + len(b"Nats-Msg-Id: edge\r\n")
        envelope = len(orjson.dumps({"blob": ""}))
        at_limit = {"blob": "x" * (limit - header_bytes - envelope)}
        with pytest.raises(ValueError, match=f"over the {limit}-byte limit"):
            await app.events.push(KEY, {**at_limit, "blob": at_limit["blob"] + "x"}, id="edge")
        assert await events_last_seq(app) == position  # nothing was published

        # Another client bypassing the SDK: the server refuses the message.
        raw = json.dumps(big).encode()
        with pytest.raises(APIError) as refused:
            await plain_nc.jetstream().publish(settings.names.event_subject(KEY), raw)
        assert refused.value.err_code == 10054
        assert "maximum" in str(refused.value.description)
        assert await events_last_seq(app) == position
        assert matcher.events_cursor == cursor  # nothing reached the matcher
        assert matcher.rejected == 0
        assert (await app.runs.get(healthy.run_id)).status == "waiting"

        accepted = await app.events.push(KEY, at_limit, id="edge")  # exactly at the limit
        assert accepted.seq == position + 1
        await assert_resumes(app, healthy)


async def test_other_key_or_other_run_does_not_resume(app: Tether, server: TetherServer) -> None:
    task = define(app)
    async with app.worker("w", slots=2):
        healthy = await start_waiting(app, task)
        ref = await start_waiting(app, task)
        other = await start_waiting(app, task)

        wrong_key = await app.events.push(
            "approval:other", {"runId": ref.run_id, "decision": "approve"}
        )
        other_payload = {"runId": other.run_id, "decision": "reject"}
        await app.events.push(KEY, other_payload)
        assert await other.result(timeout=15) == {"decision": other_payload}
        await matcher_passed(server, wrong_key.seq)
        info = await app.runs.get(ref.run_id)
        assert info.status == "waiting"
        assert "run.wait_satisfied.v1" not in [e.type for e in info.events]

        await assert_resumes(app, ref)
        await assert_resumes(app, healthy)


async def test_a_second_run_with_a_taken_run_id_is_refused(
    app: Tether, server: TetherServer
) -> None:
    """A run id names one run: starting another under it is refused with a clear error,
    and the first run goes on as if nothing happened."""
    task = define(app)
    async with app.worker("w", slots=2):
        first = await task.run_no_wait({}, run_id="order-42")
        await wait_for_status(app, first.run_id, "waiting")
        with pytest.raises(ValueError, match="'order-42' already exists; pick another id"):
            await task.run_no_wait({"key": "other:key"}, run_id="order-42")
        info = await app.runs.get("order-42")
        assert info.input == {} and info.status == "waiting"
        await app.events.push(KEY, {"runId": "order-42", "decision": "approve"})
        assert await first.result(timeout=15) == {
            "decision": {"runId": "order-42", "decision": "approve"}
        }
