"""Hardening against what broke under fault injection: a task's own TimeoutError, a write
that lands after the client gave up on it, payloads too deep or with integers beyond 64
bits, over-long keys and expressions, forged approvers, and a connection NATS closed."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import aiohttp
import nats.errors
import orjson
import pytest
from nats.aio.client import Client as NATS
from nats.js.errors import KeyNotFoundError

from tests.helpers import attempt_workers, wait_for_status, wait_until
from tests.integration.conftest import ALICE
from tests.integration.test_bad_input import (
    KEY,
    assert_resumes,
    define,
    start_waiting,
    wait_rejection,
)
from tether import DurableContext, RunFailedError, Tether, WaitTimeoutError
from tether.engine.config import Settings
from tether.engine.events import ConditionSpec, RunEvent, WaitStarted
from tether.engine.ids import wait_deadline_key
from tether.engine.state import WaitRecord
from tether.serve import TetherServer

DEEP = 300


def nested_json(depth: int) -> str:
    """JSON text nested ``depth`` objects deep (too deep for orjson to write)."""
    return '{"a":' * (depth - 1) + '{"leaf":true}' + "}" * (depth - 1)


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": True}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


async def satisfied_metadata(app: Tether, run_id: str) -> dict[str, Any]:
    info = await app.runs.get(run_id)
    [satisfied] = [e for e in info.events if e.type == "run.wait_satisfied.v1"]
    metadata: dict[str, Any] = satisfied.data["metadata"]
    return metadata


# -- a task's own TimeoutError, and a write the client gave up on ----------------------------


async def test_a_timeout_error_raised_by_the_task_is_an_ordinary_retried_failure(
    app: Tether, server: TetherServer
) -> None:
    @app.durable_task(
        name="slow-upstream",
        retries=2,
        backoff_initial=timedelta(milliseconds=50),
        execution_timeout=timedelta(minutes=10),
    )
    async def slow_upstream(input: dict[str, Any], ctx: DurableContext) -> None:
        await asyncio.wait_for(asyncio.sleep(5), 0.05)  # the upstream is too slow

    async with app.worker("w", tasks=[slow_upstream], slots=2):
        ref = await slow_upstream.run_no_wait({})
        with pytest.raises(RunFailedError) as failed:
            await ref.result(timeout=30)
    assert failed.value.error_type == "TimeoutError"
    info = await app.runs.get(ref.run_id)
    types = [e.type for e in info.events]
    assert types.count("run.attempt_failed.v1") == 2  # three attempts in all
    assert len(attempt_workers(info)) == 3
    assert "run.timed_out.v1" not in types


async def test_a_write_that_lands_after_the_client_timed_out_does_not_strand_the_run(
    app: Tether, server: TetherServer
) -> None:
    """The step's append reaches the stream but its ack is lost (a NATS outage): the attempt
    must hand the run back, not take the NATS timeout for its execution timeout."""

    @app.durable_task(name="two-steps", execution_timeout=timedelta(minutes=10))
    async def two_steps(input: dict[str, Any], ctx: DurableContext) -> dict[str, Any]:
        first = await ctx.step("first", lambda: 1)
        second = await ctx.step("second", lambda: 2)
        return {"sum": first + second}

    conn = await app.connection()
    real_append = conn.store.append
    lost_acks: list[int] = []

    async def append_losing_one_ack(event: RunEvent, **kwargs: Any) -> int:
        seq = await real_append(event, **kwargs)
        if event.type == "run.step.v1" and not lost_acks:
            lost_acks.append(seq)
            raise nats.errors.TimeoutError  # landed, but the client never heard
        return seq

    conn.store.append = append_losing_one_ack  # type: ignore[method-assign]
    async with app.worker("w", tasks=[two_steps], slots=2):
        ref = await two_steps.run_no_wait({})
        assert await ref.result(timeout=30) == {"sum": 3}
    info = await app.runs.get(ref.run_id)
    assert lost_acks, "the injected lost ack never happened"
    steps = [e.data["name"] for e in info.events if e.type == "run.step.v1"]
    assert steps == ["first", "second"]  # the landed step was replayed, not run again
    assert [e.type for e in info.events].count("run.completed.v1") == 1


# -- payloads, metadata and keys that cannot travel -------------------------------------------


@pytest.mark.parametrize(
    ("extra", "headers", "reason"),
    [
        ({"a": "DEEP"}, {}, "nested more than 64 levels"),
        ({"amount": "BIG"}, {}, "outside the 64-bit range"),
        ({}, {"Tether-Metadata": nested_json(DEEP)}, "Tether-Metadata"),
    ],
    ids=["deep-payload", "integer-beyond-64-bits", "deep-metadata-header"],
)
async def test_an_event_that_cannot_reach_the_run_is_rejected_and_the_wait_stays_open(
    app: Tether,
    server: TetherServer,
    plain_nc: NATS,
    settings: Settings,
    extra: dict[str, Any],
    headers: dict[str, str],
    reason: str,
) -> None:
    async with app.worker("w", tasks=[define(app)], slots=2):
        task = app.tasks["approval"]
        ref = await start_waiting(app, task)
        body = {"runId": ref.run_id, "decision": "approve", **extra}
        raw = (
            orjson.dumps(body)
            .replace(b'"BIG"', str(2**70).encode())
            .replace(b'"DEEP"', nested_json(DEEP).encode())
        )
        ack = await plain_nc.jetstream().publish(
            settings.names.event_subject(KEY), raw, headers=headers or None
        )
        rejection = await wait_rejection(plain_nc, settings, ack.seq)
        assert reason in rejection["reason"]
        assert (await app.runs.get(ref.run_id)).status == "waiting"
        await assert_resumes(app, ref)


async def test_an_event_with_an_overlong_key_from_another_client_is_rejected(
    app: Tether, server: TetherServer, plain_nc: NATS, settings: Settings
) -> None:
    ack = await plain_nc.jetstream().publish(
        settings.names.event_subject("approval:" + "k" * 1000), b'{"ok": true}'
    )
    rejection = await wait_rejection(plain_nc, settings, ack.seq)
    assert "over the limit of 256" in rejection["reason"]
    async with app.worker("w", tasks=[define(app)], slots=2):
        await assert_resumes(app, await start_waiting(app, app.tasks["approval"]))


async def test_the_sdk_refuses_what_the_matcher_would_reject(app: Tether) -> None:
    with pytest.raises(ValueError, match="nested more than 64 levels"):
        await app.events.push(KEY, {"a": nested(DEEP)})
    with pytest.raises(ValueError, match="outside the 64-bit range"):
        await app.events.push(KEY, {"amount": 2**70})
    with pytest.raises(ValueError, match="over the limit of 256"):
        await app.events.push("approval:" + "k" * 5000, {"ok": True})
    with pytest.raises(ValueError, match="nested more than 8 levels"):
        await app.events.push(KEY, {"ok": True}, metadata={"via": nested(20)})


# -- who decided ------------------------------------------------------------------------------


async def test_the_approver_comes_from_the_subject_never_from_a_claim_in_the_header(
    app: Tether, server: TetherServer, plain_nc: NATS, settings: Settings
) -> None:
    async with app.worker("w", tasks=[define(app)], slots=4):
        task = app.tasks["approval"]
        forged, signed, by_sdk = [await start_waiting(app, task) for _ in range(3)]
        js = plain_nc.jetstream()
        claim = orjson.dumps({"approver": "mallory", "via": "script"}).decode()
        await js.publish(
            settings.names.event_subject(KEY),
            orjson.dumps({"runId": forged.run_id, "decision": "approve"}),
            headers={"Tether-Metadata": claim},
        )
        await js.publish(
            settings.names.from_subject("carol", KEY),
            orjson.dumps({"runId": signed.run_id, "decision": "approve"}),
            headers={"Tether-Metadata": claim},
        )
        await app.events.push(
            KEY, {"runId": by_sdk.run_id, "decision": "approve"}, metadata={"approver": "dave"}
        )
        for ref in (forged, signed, by_sdk):
            await ref.result(timeout=15)
    assert await satisfied_metadata(app, forged.run_id) == {"via": "script"}
    assert await satisfied_metadata(app, signed.run_id) == {"via": "script", "approver": "carol"}
    assert await satisfied_metadata(app, by_sdk.run_id) == {"approver": "dave"}


# -- over-long expressions ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        (" || ".join(f"input.n == {i}" for i in range(5300)), "over the limit of 2048"),
        ("(" * 70 + "input.n == 1" + ")" * 70, "nested too deeply"),
    ],
    ids=["5300-term-chain", "70-nested-parentheses"],
)
async def test_an_expression_too_big_to_evaluate_fails_the_task_with_a_clear_error(
    app: Tether, server: TetherServer, expression: str, message: str
) -> None:
    async with app.worker("w", tasks=[define(app)], slots=2):
        ref = await app.tasks["approval"].run_no_wait({"expression": expression})
        with pytest.raises(RunFailedError) as failed:
            await ref.result(timeout=15)
    assert failed.value.error_type == "InvalidExpressionError"
    assert message in failed.value.error_message


# -- a connection NATS closed for good -------------------------------------------------------


async def test_the_api_refuses_bad_events_and_comes_back_after_nats_closes_its_connection(
    app: Tether, api_server: TetherServer
) -> None:
    api = api_server.api
    assert api is not None
    bearer = {"Authorization": f"Bearer {ALICE}"}
    async with (
        aiohttp.ClientSession(api.url, headers=bearer) as http,
        app.worker("w", tasks=[define(app)], slots=2),
    ):
        bad = [
            ("/api/events/approval:" + "k" * 5000, {"data": {"ok": True}}),
            (f"/api/events/{KEY}", {"data": nested(DEEP)}),
        ]
        for path, body in bad:
            async with http.post(path, json=body) as response:
                assert response.status == 422, await response.text()
        async with http.post(
            f"/api/events/{KEY}", data=b'{"data": {"n": ' + str(2**70).encode() + b"}}"
        ) as response:
            assert response.status == 422
            assert "64-bit" in (await response.json())["error"]["message"]

        # a HEAD of the live stream gets no endless body, and the connection stays usable
        async with http.head("/api/stream") as response:
            assert response.status == 405
        async with http.get("/api/me") as response:
            assert response.status == 200

        # NATS drops the API's connection for good (as it does after a protocol error)
        await (await api.tether.connection()).nc.close()

        async def healthy() -> bool:
            async with http.get("/healthz") as response:
                return response.status == 200 and (await response.json())["nats"] == "connected"

        await wait_until(healthy, message="the API to reconnect")
        ref = await start_waiting(app, app.tasks["approval"])
        await wait_until(lambda: _listed(http, ref.run_id), message="the wait in the inbox")
        async with http.post(f"/api/runs/{ref.run_id}/approve", json={}) as response:
            assert response.status == 202, await response.text()
        await ref.result(timeout=15)


async def _listed(http: aiohttp.ClientSession, run_id: str) -> bool:
    async with http.get("/api/waits") as response:
        return any(w["run_id"] == run_id for w in (await response.json())["waits"])


async def test_serve_comes_back_after_nats_closes_its_connection(
    app: Tether, server: TetherServer
) -> None:
    async with app.worker("w", tasks=[define(app)], slots=2):
        before = await start_waiting(app, app.tasks["approval"])
        assert server.conn is not None
        await server.conn.nc.close()
        await wait_until(lambda: _reopened(server), message="serve to work on a new connection")
        await assert_resumes(app, before)
        after = await start_waiting(app, app.tasks["approval"])
        await assert_resumes(app, after)
    await wait_for_status(app, after.run_id, "completed")


async def _reopened(server: TetherServer) -> bool:
    return server.conn is not None and server.conn.nc.is_connected


async def test_a_forged_wait_cannot_expire_a_pending_approval(
    app: Tether, server: TetherServer
) -> None:
    """wait_started events a worker credential appends to a waiting run, reusing its open
    wait's id with an early timeout, cannot time that wait out: the real wait's deadline
    stays its own, and a forged deadline that fires resolves a registration the run never
    took, which the run ignores. A real decision then resumes the run."""

    @app.durable_task(name="guarded", execution_timeout=timedelta(minutes=5))
    async def guarded(input: dict[str, Any], ctx: DurableContext) -> str:
        try:
            decision = await ctx.wait_for_event(
                KEY, expression=f"input.runId == '{ctx.run_id}'", timeout=timedelta(hours=1)
            )
        except WaitTimeoutError:
            return "expired"
        return str(decision["decision"])

    async with app.worker("w", tasks=[guarded], slots=2):
        ref = await guarded.run_no_wait({})
        await wait_for_status(app, ref.run_id, "waiting")
        state, _ = await app.runs.state(ref.run_id)
        [real] = [r for r in state.records if isinstance(r, WaitRecord)]
        conn = await app.connection()
        names = conn.settings.names
        real_key = wait_deadline_key(names.partition(ref.run_id), ref.run_id, real.position)

        async def real_deadline_booked() -> bool:
            try:
                return bool(await conn.deadlines.get(real_key))
            except KeyNotFoundError:
                return False

        await wait_until(real_deadline_booked, message="the real wait's deadline")
        last = state.last_seq
        # one at the real wait's position (its deadline key), one at another position
        for position in (real.position, real.position + 7):
            forged = WaitStarted(
                run_id=ref.run_id,
                at=time.time(),
                position=position,
                wait_id=real.wait_id,  # the open wait's own id
                task="guarded",
                event_key=KEY,
                expression=None,
                events_position=0,
                timeout_at=time.time() + 0.2,
                clauses=[[ConditionSpec(id="c0.0", key=KEY, kind="event", event_key=KEY)]],
            )
            last = await conn.store.append(forged, expected_last_seq=last)

        async def forged_deadline_fired() -> bool:
            info = await app.runs.get(ref.run_id)
            return any(e.type == "run.wait_timed_out.v1" for e in info.events)

        await wait_until(forged_deadline_fired, message="the forged deadline to fire")
        state, _ = await app.runs.state(ref.run_id)
        assert state.status == "waiting"
        ignored = [entry["type"] for entry in state.ignored]
        assert ignored == ["run.wait_started.v1"] * 2 + ["run.wait_timed_out.v1"]
        entry = await conn.deadlines.get(real_key)
        assert orjson.loads(entry.value or b"{}")["due_at"] == real.timeout_at
        await app.events.push(KEY, {"runId": ref.run_id, "decision": "approve"})
        assert await ref.result(timeout=15) == "approve"
