"""The approval walkthrough against a real nats-server: approve and reject branches, the
decision pushed by a plain nats-py client and by ``app.events.push``."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import nats
import pytest
from pydantic import BaseModel

from tests.helpers import attempt_workers, wait_for_status
from tether import DurableContext, RunFailedError, Tether, WaitTimeoutError
from tether.serve import TetherServer


class Proposal(BaseModel):
    amount: int


def define(app: Tether, calls: dict[str, int]) -> Any:
    def propose_payment(amount: int) -> dict[str, Any]:
        calls["propose"] = calls.get("propose", 0) + 1
        return {"pay": amount}

    @app.durable_task(name="payment-approval", execution_timeout=timedelta(minutes=5))
    async def payment_approval(input: Proposal, ctx: DurableContext) -> dict[str, Any]:
        action = await ctx.step("propose", propose_payment, input.amount)
        try:
            decision = await ctx.wait_for_event(
                "approval:decision",
                expression=f"input.runId == '{ctx.run_id}'",
                timeout=timedelta(hours=1),
            )
        except WaitTimeoutError:
            return {"status": "expired", "action": action}
        if decision["decision"] == "approve":
            return {"status": "approved", "action": action}
        return {"status": "rejected", "reason": decision.get("reason")}

    return payment_approval


@pytest.mark.parametrize("decision", ["approve", "reject"])
async def test_decision_from_app_events_push(
    app: Tether, server: TetherServer, decision: str
) -> None:
    calls: dict[str, int] = {}
    task = define(app, calls)
    async with app.worker("payments", slots=2):
        ref = await task.run_no_wait(Proposal(amount=120))
        await wait_for_status(app, ref.run_id, "waiting")
        await app.events.push(
            "approval:decision",
            {"runId": ref.run_id, "decision": decision, "reason": "over budget"},
        )
        result = await ref.result(timeout=15)
    if decision == "approve":
        assert result == {"status": "approved", "action": {"pay": 120}}
    else:
        assert result == {"status": "rejected", "reason": "over budget"}
    assert calls["propose"] == 1  # the step before the wait ran once across suspend/resume
    info = await app.runs.get(ref.run_id)
    assert info.status == "completed"
    assert [e.type for e in info.events] == [
        "run.requested.v1",
        "run.started.v1",
        "run.step.v1",
        "run.wait_started.v1",
        "run.wait_satisfied.v1",
        "run.completed.v1",
    ]
    # two attempts: the first recorded its start before its step ran; the resumed one ran
    # no step and wrote only its outcome, which names its worker
    assert [w.split("@")[0] for w in attempt_workers(info)] == ["payments", "payments"]
    satisfied = info.events[4].data
    assert satisfied["payload"]["decision"] == decision


@pytest.mark.parametrize("publish", ["jetstream", "core"])
async def test_decision_from_plain_nats_client(
    app: Tether, server: TetherServer, nats_url: str, namespace: str, publish: str
) -> None:
    """Another service, using nats-py alone, decides: JetStream publish or core publish."""
    calls: dict[str, int] = {}
    task = define(app, calls)
    async with app.worker("payments", slots=2):
        ref = await task.run_no_wait(Proposal(amount=7))
        await wait_for_status(app, ref.run_id, "waiting")
        nc = await nats.connect(nats_url)
        body = json.dumps({"runId": ref.run_id, "decision": "approve"}).encode()
        subject = f"{namespace}.events.approval:decision"
        if publish == "jetstream":
            ack = await nc.jetstream().publish(subject, body, headers={"Nats-Msg-Id": "d-1"})
            assert ack.seq >= 1
        else:
            await nc.publish(subject, body)
            await nc.flush()
        await nc.close()
        assert await ref.result(timeout=15) == {"status": "approved", "action": {"pay": 7}}


async def test_decision_from_separate_process_without_tether(
    app: Tether, server: TetherServer, nats_url: str
) -> None:
    """The shipped plain client script imports nats only; run it in its own interpreter."""
    plain_app = Tether(nats_url=nats_url)  # namespace "tether", as the script publishes
    task = define(plain_app, {})
    plain_server = TetherServer(plain_app.settings)
    await plain_server.start()
    try:
        async with plain_app.worker("payments", slots=2):
            ref = await task.run_no_wait(Proposal(amount=9))
            await wait_for_status(plain_app, ref.run_id, "waiting")
            script = Path(__file__).parents[2] / "sdk" / "cli" / "plain_nats_decision.py"
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-X",
                "importtime",
                str(script),
                nats_url,
                ref.run_id,
                "reject",
                "no budget",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await proc.communicate()
            assert proc.returncode == 0, err.decode()
            imported = [line.rsplit("|", 1)[-1].strip() for line in err.decode().splitlines()]
            assert not [m for m in imported if m.split(".")[0] == "tether"]  # nats only
            assert b"pushed reject" in out
            result = await ref.result(timeout=15)
            assert result == {"status": "rejected", "reason": "no budget"}
    finally:
        await plain_server.stop()
        await plain_app.close()


async def test_run_and_short_task(app: Tether, server: TetherServer) -> None:
    @app.durable_task(name="double")
    async def double(input: dict[str, int], ctx: DurableContext) -> int:
        return await ctx.step("double", lambda x: x * 2, input["x"])

    async with app.worker("w", slots=1):
        assert await double.run({"x": 21}, timeout=15) == 42


async def test_task_error_fails_run(app: Tether, server: TetherServer) -> None:
    @app.durable_task(name="boom")
    async def boom(input: dict[str, Any], ctx: DurableContext) -> None:
        raise RuntimeError("card declined")

    async with app.worker("w", slots=1):
        ref = await boom.run_no_wait({})
        with pytest.raises(RunFailedError) as caught:
            await ref.result(timeout=15)
    assert caught.value.error_type == "RuntimeError"
    assert "card declined" in str(caught.value)
    assert (await app.runs.get(ref.run_id)).status == "failed"
