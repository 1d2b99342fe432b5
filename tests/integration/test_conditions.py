"""Conditions, sleeps, lookback and typed decisions against a real nats-server."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any, Literal

from pydantic import BaseModel

from tests.helpers import wait_for_status, wait_until
from tether import DurableContext, SleepCondition, Tether, UserEventCondition, or_
from tether.serve import TetherServer


def expr(ctx: DurableContext) -> str:
    return f"input.runId == '{ctx.run_id}'"


async def test_approve_within_deadline_or_escalate(app: Tether, server: TetherServer) -> None:
    @app.durable_task(name="escalating")
    async def escalating(input: dict[str, Any], ctx: DurableContext) -> dict[str, Any]:
        result = await ctx.wait_for(
            "review",
            or_(
                UserEventCondition("approval:decision", expr(ctx)),
                SleepCondition(timedelta(seconds=input["deadline_s"]), key="escalate"),
            ),
        )
        if "escalate" in result.fired:
            return {"branch": "escalated", "fired": result.fired}
        return {
            "branch": "decided",
            "fired": result.fired,
            "decision": result.payloads["approval:decision"]["decision"],
        }

    async with app.worker("w", slots=2):
        approved = await escalating.run_no_wait({"deadline_s": 60})
        escalated = await escalating.run_no_wait({"deadline_s": 0.4})
        await wait_for_status(app, approved.run_id, "waiting")
        await app.events.push(
            "approval:decision", {"runId": approved.run_id, "decision": "approve"}
        )
        assert await approved.result(timeout=15) == {
            "branch": "decided",
            "fired": ["approval:decision"],
            "decision": "approve",
        }
        assert await escalated.result(timeout=15) == {"branch": "escalated", "fired": ["escalate"]}
        # the escalated run ignores a late decision
        await app.events.push("approval:decision", {"runId": escalated.run_id})
        info = await app.runs.get(escalated.run_id)
        assert [e.type for e in info.events].count("run.wait_satisfied.v1") == 1


async def test_two_approvers_both_required(app: Tether, server: TetherServer) -> None:
    @app.durable_task(name="four-eyes")
    async def four_eyes(input: Any, ctx: DurableContext) -> dict[str, Any]:
        run = f"input.runId == '{ctx.run_id}'"
        result = await ctx.wait_for(
            "sign-off",
            UserEventCondition("approval:decision", f"{run} && input.by == 'alice'", key="alice"),
            UserEventCondition("approval:decision", f"{run} && input.by == 'bob'", key="bob"),
        )
        return {
            "fired": sorted(result.fired),
            "by": sorted(p["by"] for p in result.payloads.values()),
        }

    async with app.worker("w", slots=2):
        ref = await four_eyes.run_no_wait({})
        await wait_for_status(app, ref.run_id, "waiting")
        await app.events.push("approval:decision", {"runId": ref.run_id, "by": "alice"})
        await app.events.push("approval:decision", {"runId": ref.run_id, "by": "alice"})

        async def alice_recorded() -> Any:
            info = await app.runs.get(ref.run_id)
            return info if any(e.type == "run.wait_condition_met.v1" for e in info.events) else None

        info = await wait_until(alice_recorded, message="alice's approval to be recorded")
        assert info.status == "waiting"  # one approver is not enough, even twice
        await app.events.push("approval:decision", {"runId": ref.run_id, "by": "bob"})
        assert await ref.result(timeout=15) == {"fired": ["alice", "bob"], "by": ["alice", "bob"]}


async def test_lookback_matches_an_event_pushed_before_the_wait(
    app: Tether, server: TetherServer
) -> None:
    @app.durable_task(name="lookback")
    async def lookback(input: dict[str, Any], ctx: DurableContext) -> dict[str, Any]:
        window = timedelta(minutes=5) if input["lookback"] else None
        return await ctx.wait_for_event(  # type: ignore[no-any-return]
            "order:paid", f"input.order == '{input['order']}'", lookback=window
        )

    async with app.worker("w", slots=2):
        await app.events.push("order:paid", {"order": "A", "amount": 1})
        await app.events.push("order:paid", {"order": "A", "amount": 2})  # newest wins
        await app.events.push("order:paid", {"order": "B", "amount": 3})
        with_lookback = await lookback.run_no_wait({"order": "A", "lookback": True})
        assert await with_lookback.result(timeout=15) == {"order": "A", "amount": 2}
        info = await app.runs.get(with_lookback.run_id)
        assert info.attempt == 1  # resolved at registration, without suspending

        without = await lookback.run_no_wait({"order": "B", "lookback": False})
        await wait_for_status(app, without.run_id, "waiting")
        await app.events.push("order:paid", {"order": "B", "amount": 4})
        assert await without.result(timeout=15) == {"order": "B", "amount": 4}


class Decision(BaseModel):
    runId: str
    decision: Literal["approve", "reject"]


async def test_typed_decision_rejects_invalid_payload(app: Tether, server: TetherServer) -> None:
    @app.durable_task(name="typed")
    async def typed(input: Any, ctx: DurableContext) -> str:
        decision = await ctx.wait_for_event("approval:decision", expr(ctx), model=Decision)
        assert isinstance(decision, Decision)
        return decision.decision

    async with app.worker("w", slots=1):
        ref = await typed.run_no_wait({})
        await wait_for_status(app, ref.run_id, "waiting")
        bad = await app.events.push("approval:decision", {"runId": ref.run_id, "decision": "maybe"})

        async def rejection_visible() -> Any:
            info = await app.runs.get(ref.run_id)
            rejected = [e for e in info.events if e.type == "run.event_rejected.v1"]
            return (info, rejected) if rejected and info.status == "waiting" else None

        _, rejected = await wait_until(rejection_visible, message="the rejection")
        assert rejected[0].data["event_seq"] == bad.seq
        assert "decision" in rejected[0].data["error"]
        await app.events.push("approval:decision", {"runId": ref.run_id, "decision": "reject"})
        assert await ref.result(timeout=15) == "reject"


async def test_sleep_for_and_now_are_durable(app: Tether, server: TetherServer) -> None:
    seen_now: list[float] = []

    @app.durable_task(name="sleeper")
    async def sleeper(input: Any, ctx: DurableContext) -> dict[str, float]:
        before = await ctx.now()
        seen_now.append(before.timestamp())
        await ctx.sleep_for(timedelta(seconds=0.5))
        after = await ctx.now()
        return {"before": before.timestamp(), "after": after.timestamp()}

    async with app.worker("w", slots=1) as worker:
        started = time.time()
        ref = await sleeper.run_no_wait({})
        await wait_for_status(app, ref.run_id, "waiting")
        assert worker.active == 0  # sleeping holds no slot
        result = await ref.result(timeout=15)
    assert result["after"] - result["before"] >= 0.5
    assert time.time() - started >= 0.5
    assert len(seen_now) == 2 and seen_now[0] == seen_now[1]  # same value on replay
