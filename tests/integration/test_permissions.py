"""Tether under the per-role users of ``ops/nats/permissions.conf``, on a nats-server of its
own: every documented feature works under its role (engine, a task's worker, an approver
identity, the operator), and what a role may not do is refused.

A denied publish gets no reply, only an asynchronous error, so these tests watch for the
server's refusal (``PermissionWatch``) instead of waiting for client timeouts.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import orjson
import pytest
from nats.js.api import ConsumerConfig, StreamConfig

from tests.helpers import wait_for_status, wait_until
from tests.integration.secured import (
    OPS,
    PASSWORDS,
    Raw,
    SecuredNats,
    cli,
    secured_nats,
)
from tether import DurableContext, Tether
from tether.client import RunInfo
from tether.engine import events as ev
from tether.engine.codec import METADATA_HEADER
from tether.engine.config import Settings
from tether.engine.connection import Connection, NatsUnavailableError
from tether.engine.ids import run_deadline_key
from tether.engine.nats_server import find_binary
from tether.engine.permissions import NatsPermissionError
from tether.engine.provision import ProvisionError, ensure_pull_consumer
from tether.engine.subjects import Names
from tether.serve import TetherServer
from tether.task import DurableTask

KEY = "approval:decision"
TASK = "payment-approval"
NAMES = Names()  # the default namespace, with the default partition count


def payments_app(settings: Settings) -> tuple[Tether, DurableTask[Any, Any]]:
    app = Tether(settings=settings)

    @app.durable_task(name=TASK, execution_timeout=timedelta(minutes=5))
    async def payment_approval(input: dict[str, Any], ctx: DurableContext) -> dict[str, Any]:
        proposed = await ctx.step("propose", lambda: {"pay": input["amount"]})
        decision = await ctx.wait_for_event(
            KEY,
            f"input.runId == '{ctx.run_id}'",
            lookback=timedelta(minutes=5) if input.get("lookback") else None,
        )
        return {"decision": decision["decision"], "proposed": proposed}

    return app, payment_approval


@pytest.fixture(scope="module")
def server() -> Iterator[SecuredNats]:
    with secured_nats() as running:
        yield running


@pytest.fixture(scope="module")
async def engine(server: SecuredNats) -> AsyncIterator[TetherServer]:
    serve = TetherServer(server.settings("tether-engine"))
    await serve.start()
    yield serve
    await serve.stop()


@pytest.fixture(scope="module")
async def payments(
    server: SecuredNats, engine: TetherServer
) -> AsyncIterator[tuple[Tether, DurableTask[Any, Any]]]:
    """A worker of payment-approval as worker-payments (which also triggers the runs)."""
    app, task = payments_app(server.settings("worker-payments"))
    async with app.worker("payments", tasks=[task], slots=4):
        yield app, task
    await app.close()


@pytest.fixture(scope="module")
async def alice(server: SecuredNats, engine: TetherServer) -> AsyncIterator[Tether]:
    app = Tether(settings=server.settings("approver-alice"))
    yield app
    await app.close()


async def waiting_run(payments: tuple[Tether, DurableTask[Any, Any]]) -> str:
    app, task = payments
    ref = await task.run_no_wait({"amount": 120})
    await wait_for_status(app, ref.run_id, "waiting")
    return ref.run_id


def recorded_approver(info: RunInfo) -> Any:
    [satisfied] = [e for e in info.events if e.type == "run.wait_satisfied.v1"]
    return satisfied.data["metadata"].get("approver")


# -- every feature under its role -----------------------------------------------------------


async def test_full_cycle_under_least_privilege(
    server: SecuredNats,
    engine: TetherServer,
    payments: tuple[Tether, DurableTask[Any, Any]],
    alice: Tether,
) -> None:
    """serve as tether-engine, the worker as worker-payments, decisions as approver-alice
    through the SDK and through `tether runs show` and `tether approve`."""
    app, _ = payments
    before = len(server.violations())
    by_sdk = await waiting_run(payments)
    await alice.events.push(
        KEY, {"runId": by_sdk, "decision": "approve"}, metadata={"approver": "alice"}
    )
    assert await app.runs.result(by_sdk, timeout=20) == {
        "decision": "approve",
        "proposed": {"pay": 120},
    }

    by_cli = await waiting_run(payments)
    assert "waiting on approval:decision" in await cli(
        server, "approver-alice", "runs", "show", by_cli
    )
    out = await cli(server, "approver-alice", "approve", by_cli, "--as", "alice", "--reason", "ok")
    assert f"approved run {by_cli} as alice" in out
    assert (await app.runs.result(by_cli, timeout=20))["decision"] == "approve"
    assert server.violations()[before:] == []  # nothing the cycle needs was refused


async def test_recorded_approver_is_the_identity_of_the_credentials(
    server: SecuredNats, payments: tuple[Tether, DurableTask[Any, Any]], alice: Tether
) -> None:
    """alice cannot push as bob, anonymously, or claim bob in the metadata header: the run
    records the identity whose subject space the event came in on."""
    app, _ = payments
    run_id = await waiting_run(payments)
    raw = await Raw.open(server, "approver-alice")
    try:
        body = orjson.dumps({"runId": run_id, "decision": "approve"})
        assert await raw.publish_refused(f"tether.from.bob.{KEY}", body)
        assert await raw.publish_refused(f"tether.events.{KEY}", body)
        claim = {METADATA_HEADER: orjson.dumps({"approver": "bob"}).decode()}
        assert not await raw.publish_refused(f"tether.from.alice.{KEY}", body, claim)
    finally:
        await raw.close()
    await app.runs.result(run_id, timeout=20)
    assert recorded_approver(await app.runs.get(run_id)) == "alice"

    by_sdk = await waiting_run(payments)
    await alice.events.push(
        KEY, {"runId": by_sdk, "decision": "reject"}, metadata={"approver": "alice"}
    )
    assert (await app.runs.result(by_sdk, timeout=20))["decision"] == "reject"
    assert recorded_approver(await app.runs.get(by_sdk)) == "alice"


async def test_lookback_reads_pushed_events_as_a_worker(
    server: SecuredNats, engine: TetherServer, payments: tuple[Tether, DurableTask[Any, Any]]
) -> None:
    """The worker user reads the events stream (both subject spaces) for `lookback=`."""
    app, _ = payments
    raw = await Raw.open(server, "approver-alice")
    try:
        body = orjson.dumps({"runId": "lookback-read", "decision": "approve"})
        await raw.js.publish(f"tether.from.alice.{KEY}", body)
    finally:
        await raw.close()
    conn = await app.connection()
    found = await conn.read_events(KEY, time.time() - 60, await conn.events_position())
    assert any(payload.get("runId") == "lookback-read" for _, payload, _ in found)


async def test_lookback_resolves_a_wait_as_a_worker(
    server: SecuredNats, engine: TetherServer, payments: tuple[Tether, DurableTask[Any, Any]]
) -> None:
    app, task = payments
    run_id = f"lookback-{time.monotonic_ns()}"
    raw = await Raw.open(server, "approver-alice")
    try:
        body = orjson.dumps({"runId": run_id, "decision": "approve"})
        await raw.js.publish(f"tether.from.alice.{KEY}", body)
    finally:
        await raw.close()
    await app.runs.trigger(task, {"amount": 5, "lookback": True}, run_id=run_id)
    assert (await app.runs.result(run_id, timeout=8))["decision"] == "approve"


# -- refusals -------------------------------------------------------------------------------


async def test_an_approver_reads_only_its_own_inbox(
    server: SecuredNats, engine: TetherServer
) -> None:
    raw = await Raw.open(server, "approver-alice")
    try:
        for subject in ("_INBOX.>", "_INBOX_bob.>", "_INBOX_engine.>", "_INBOX_worker-payments.>"):
            assert await raw.subscribe_refused(subject), subject
        for subject in (">", "tether.>", "tether.runs.>"):
            assert await raw.subscribe_refused(subject), subject
        # nor create consumers: the same call would reconfigure the engine's on that stream
        config = ConsumerConfig(name="TETHER_BOOKKEEPER_P0", filter_subject="tether.runs.0.x.>")
        subject = "$JS.API.CONSUMER.CREATE.TETHER_RUNS"
        request = raw.nc.request(subject, orjson.dumps({"config": config.as_dict()}))
        with pytest.raises(NatsPermissionError):
            await raw.watch.guard(subject, request)
    finally:
        await raw.close()


async def forge_completion(server: SecuredNats, run_id: str) -> int:
    """As worker-payments, append run.completed to ``run_id``; its log sequence."""
    raw = await Raw.open(server, "worker-payments")
    try:
        forged = ev.RunCompleted(run_id=run_id, at=time.time(), output={"forged": True})
        ack = await raw.js.publish(NAMES.run_subject(run_id, "completed"), ev.encode(forged))
        return int(ack.seq)
    finally:
        await raw.close()


async def test_a_worker_cannot_decide_or_end_a_waiting_run(
    server: SecuredNats, engine: TetherServer, payments: tuple[Tether, DurableTask[Any, Any]]
) -> None:
    app, _ = payments
    run_id = await waiting_run(payments)
    raw = await Raw.open(server, "worker-payments")
    try:
        for token in ("wait_satisfied", "wait_timed_out", "condition_met", "cancelled"):
            assert await raw.publish_refused(NAMES.run_subject(run_id, token)), token
        for subject in (f"tether.events.{KEY}", f"tether.from.alice.{KEY}"):
            assert await raw.publish_refused(subject), subject
    finally:
        await raw.close()
    # Appending run.completed is allowed to a worker (its attempts end runs), but the run
    # is waiting and no attempt is running: the run does not take it, and the engine's
    # bookkeeper does not act on it (the run keeps its execution deadline).
    seq = await forge_completion(server, run_id)
    state, _ = await app.runs.state(run_id)
    assert state.status == "waiting" and state.was_ignored(seq)
    assert (await app.runs.get(run_id)).status == "waiting"
    assert engine.conn is not None
    conn, names = engine.conn, engine.conn.settings.names

    async def booked() -> bool:  # the bookkeeper has handled the forged event
        consumer = names.bookkeeper_consumer(names.partition(run_id))
        info = await conn.js.consumer_info(names.runs_stream, consumer)
        return info.ack_floor is not None and (info.ack_floor.stream_seq or 0) >= seq

    await wait_until(booked, message="the bookkeeper to handle the forged event")
    deadline_key = run_deadline_key(names.partition(run_id), run_id)
    assert (await engine.conn.deadlines.get(deadline_key)).value


async def test_a_forged_completion_does_not_block_the_decision(
    server: SecuredNats,
    engine: TetherServer,
    payments: tuple[Tether, DurableTask[Any, Any]],
    alice: Tether,
) -> None:
    app, _ = payments
    run_id = await waiting_run(payments)
    await forge_completion(server, run_id)
    await alice.events.push(
        KEY, {"runId": run_id, "decision": "approve"}, metadata={"approver": "alice"}
    )
    assert (await app.runs.result(run_id, timeout=6))["decision"] == "approve"


async def test_a_worker_cannot_disguise_a_decision_as_a_step(
    server: SecuredNats, payments: tuple[Tether, DurableTask[Any, Any]]
) -> None:
    app, _ = payments
    run_id = await waiting_run(payments)
    satisfied = ev.WaitSatisfied(
        run_id=run_id,
        at=time.time(),
        wait_id=f"{run_id}:1",
        event_key=KEY,
        event_seq=None,
        event_id=None,
        payload={"runId": run_id, "decision": "approve"},
        fired=[KEY],
        payloads={KEY: {"runId": run_id, "decision": "approve"}},
    )
    raw = await Raw.open(server, "worker-payments")
    try:
        await raw.js.publish(NAMES.run_subject(run_id, "step"), ev.encode(satisfied))
    finally:
        await raw.close()
    state, _ = await app.runs.state(run_id)
    assert state.status == "waiting"


async def test_only_the_server_writes_where_the_run_log_republishes(
    server: SecuredNats, engine: TetherServer
) -> None:
    """A notice on ``tether.stored.>`` is what the run log stored: clients take an ending
    from there without reading the run (``tether.engine.taken``)."""
    for user in ("tether-engine", "worker-payments", "approver-alice"):
        raw = await Raw.open(server, user)
        try:
            assert await raw.publish_refused("tether.stored.r1.completed.0"), user
        finally:
            await raw.close()


async def test_a_worker_uses_only_its_own_tasks_consumer(
    server: SecuredNats, engine: TetherServer
) -> None:
    raw = await Raw.open(server, "worker-payments")
    try:
        with pytest.raises(ProvisionError, match="TETHER_TASK_refund"):
            await ensure_pull_consumer(
                raw.js,
                "TETHER_TASKS",
                "TETHER_TASK_refund",
                filter_subjects=["tether.tasks.refund"],
                watch=raw.watch,
            )
        # nor take over or reconfigure another's, whatever the API subject
        config = ConsumerConfig(durable_name="TETHER_ENGINE_P0", filter_subject="tether.cmd.0.>")
        for subject in (
            "$JS.API.CONSUMER.DURABLE.CREATE.TETHER_CMDS.TETHER_ENGINE_P0",
            "$JS.API.CONSUMER.CREATE.TETHER_CMDS.TETHER_ENGINE_P0",
            "$JS.API.CONSUMER.MSG.NEXT.TETHER_CMDS.TETHER_ENGINE_P0",
            "$JS.API.CONSUMER.DELETE.TETHER_TASKS.TETHER_TASK_payment-approval",
            "$JS.API.STREAM.UPDATE.TETHER_TASKS",
        ):
            request = raw.nc.request(subject, orjson.dumps({"config": config.as_dict()}))
            with pytest.raises(NatsPermissionError):
                await raw.watch.guard(subject, request)
    finally:
        await raw.close()


async def test_only_the_operator_destroys_streams_and_the_errors_say_why() -> None:
    """On a server of its own: a process that finds no streams and may not create them, may
    not look them up, may not receive replies on its inbox prefix, or logs in with a wrong
    password, says so at once; the engine may neither delete nor purge nor reconfigure the
    run log; the operator may."""
    with secured_nats() as server:
        started = time.monotonic()
        with pytest.raises(ProvisionError, match=r"TETHER_RUNS does not exist.*tether serve"):
            await Connection.open(server.settings("worker-payments"))
        other = server.settings("approver-alice", namespace="other")
        with pytest.raises(ProvisionError, match="may not look up stream OTHER_RUNS"):
            await Connection.open(other)
        shared_inbox = server.settings("approver-alice", inbox_prefix="_INBOX")
        with pytest.raises(ProvisionError, match="TETHER_INBOX_PREFIX"):
            await Connection.open(shared_inbox)
        engine = server.settings("tether-engine")
        wrong = dataclasses.replace(engine, nats_url=engine.nats_url.replace("pw-", "no-"))
        with pytest.raises(NatsUnavailableError, match="refused the credentials"):
            await Connection.open(wrong)
        assert time.monotonic() - started < 3  # refused, not timed out

        admin = await Connection.open(server.settings("tether-operator"), manage_streams=True)
        try:
            wider = server.settings("tether-engine", max_event_bytes=1024 * 1024)
            with pytest.raises(ProvisionError, match=r"TETHER_RUNS differs.*operator"):
                await Connection.open(wider, manage_streams=True)
            serve = await Connection.open(server.settings("tether-engine"), manage_streams=True)
            await serve.close()  # same settings: nothing to update, so it starts
            assert serve.stores_notices

            # A run log made by an older version lacks the republishing of stored events: the
            # engine may not add it, and starts all the same (workers wait for dispatches).
            runs = (await admin.js.stream_info("TETHER_RUNS")).config
            runs.republish = None
            await admin.js.update_stream(runs)
            serve = await Connection.open(server.settings("tether-engine"), manage_streams=True)
            await serve.close()
            assert (await admin.js.stream_info("TETHER_RUNS")).config.republish is None
            assert not serve.stores_notices  # so clients hear the writes themselves

            raw = await Raw.open(server, "tether-engine")
            try:
                for subject, request in (
                    ("$JS.API.STREAM.DELETE.TETHER_RUNS", raw.js.delete_stream("TETHER_RUNS")),
                    ("$JS.API.STREAM.PURGE.TETHER_EVENTS", raw.js.purge_stream("TETHER_EVENTS")),
                    (
                        "$JS.API.STREAM.UPDATE.TETHER_RUNS",
                        raw.js.update_stream(
                            StreamConfig(name="TETHER_RUNS", subjects=["tether.runs.>"], max_msgs=1)
                        ),
                    ),
                ):
                    with pytest.raises(NatsPermissionError):
                        await raw.watch.guard(subject, request)
            finally:
                await raw.close()
            assert await admin.js.delete_stream("TETHER_RUNS")
        finally:
            await admin.close()


def test_the_cluster_example_loads_these_permissions() -> None:
    cluster = OPS / "cluster"
    binary = find_binary()
    for node in ("n1.conf", "n2.conf", "n3.conf"):
        checked = subprocess.run(
            [binary, "-t", "-c", node],
            cwd=cluster,
            env={**os.environ, **PASSWORDS},
            capture_output=True,
            timeout=20,
        )
        assert checked.returncode == 0, checked.stderr.decode()
    missing = {k: v for k, v in PASSWORDS.items() if k != "TETHER_ENGINE_PASSWORD"}
    checked = subprocess.run(
        [binary, "-t", "-c", "n1.conf"], cwd=cluster, env=missing, capture_output=True, timeout=20
    )
    assert checked.returncode != 0 and b"TETHER_ENGINE_PASSWORD" in checked.stdout + checked.stderr
